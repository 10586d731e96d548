"""Without `verbose`, a Ray run shows fedmtl's progress, not Flower's and Ray's start-up chatter."""

from __future__ import annotations

import logging
import warnings


def test_ray_start_up_chatter_is_dropped_but_other_flower_warnings_are_not(caplog):
    from fedmtl.engine.ray import _quiet

    _quiet()
    flwr_log = logging.getLogger("flwr")
    with caplog.at_level(logging.WARNING, logger="flwr"):
        flwr_log.warning("DEPRECATED FEATURE: The `run_simulation` function is deprecated")
        flwr_log.warning("round 3: no clients answered")
        logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
    assert [r.getMessage() for r in caplog.records] == ["round 3: no clients answered"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        _quiet()
        warnings.warn("Tip: ... set RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0", FutureWarning)
        warnings.warn("something else", FutureWarning)
    assert [str(w.message) for w in seen] == ["something else"]
