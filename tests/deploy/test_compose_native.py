"""docker/compose.yaml (and with compose.tls.yaml) run as plain processes: the exact
commands, scripts and process-isolation layout of the compose files, without Docker
(see compose_native.py). About two minutes each on two busy cores, so opt-in:

    FEDMTL_TEST_COMPOSE=1 python -m pytest -q tests/deploy/test_compose_native.py
"""

import json
import os

import pytest

from compose_native import NativeCompose
from fedmtl.runfiles import read_jsonl

pytestmark = pytest.mark.skipif(os.environ.get("FEDMTL_TEST_COMPOSE") != "1",
                                reason="opt-in (FEDMTL_TEST_COMPOSE=1): runs the whole compose layout, ~2 min")


@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls+auth"])
def test_compose_layout_runs_an_experiment(tmp_path, tls):
    dep = NativeCompose(tmp_path / "c", tls=tls)
    try:
        dep.start()
        rc = dep.experiment(timeout=600)
        assert rc == 0, dep.log("experiment")[-3000:]
    finally:
        dep.stop()
        assert not dep.ours()
    out = dep.results / "compose-run"
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["answered"] for r in rows] == [3, 3]
    assert json.loads((out / "summary.json").read_text())["rounds"] == 2
