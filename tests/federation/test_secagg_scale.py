"""SecAgg+ at several hundred clients (one user each, as MovieLens-100k's 943) gives plain
FedAvg's aggregate within the quantisation step (and FedAvg's own float32 rounding), with aggregate=all (the heads' 0-d offsets,
which Flower's unmask stage released as sum + (m - 1) * clipping_range: issue 24 item 8) and
aggregate=encoder. About 40 s on 2 cores."""

from __future__ import annotations

import json

import pytest
import torch

from fedmtl.config import compose
from fedmtl.simulate import run

N = 400
SHAPED = [f"dataset.n_users={N}", "dataset.n_items=200", f"num_clients={N}", "device=cpu", "num_rounds=1",
          "local_epochs=1", "fraction_evaluate=0.01"]


@pytest.mark.parametrize("aggregate", ["all", "encoder"])
def test_secagg_at_several_hundred_clients_is_fedavg_within_the_quantisation_step(tmp_path, aggregate,
                                                                                  quantisation_bound):
    plain_cfg = compose(SHAPED + [f"aggregate={aggregate}"])
    secure_cfg = compose(SHAPED + [f"aggregate={aggregate}", "privacy=secagg"])
    run(plain_cfg, tmp_path / "plain")
    run(secure_cfg, tmp_path / "secure")
    a, b = torch.load(tmp_path / "plain" / "model_shared.pt"), torch.load(tmp_path / "secure" / "model_shared.pt")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    bound = quantisation_bound(secure_cfg, list(range(N)))
    # Flower's plain FedAvg adds the N weighted float32 arrays one by one in float32: its own
    # error is up to N * 2**-24 * |x| (about 7e-6 measured on the rating offset, |x| = 3.5).
    tolerance = {k: bound + N * 2**-24 * float(a[k].abs().max()) for k in a}
    diffs = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a}
    worst = max(diffs, key=lambda k: diffs[k] / tolerance[k])
    assert diffs[worst] <= tolerance[worst], (worst, diffs[worst], tolerance[worst])
    assert max(diffs.values()) > 0  # it went through SecAgg+'s quantisation
    assert max(float(a[k].abs().max()) for k in a) > 100 * bound
    row = json.loads((tmp_path / "secure" / "metrics.jsonl").read_text())
    assert row["answered"] == row["sampled"] == N and row["secagg"]["aggregated"]
    assert row["secagg"]["saturated"] == 0.0
    if aggregate == "all":
        assert [k for k in a if a[k].dim() == 0]  # the 0-d head offsets were among them
