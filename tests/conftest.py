"""Every test starts from the default task registry: a run on an interaction log registers
that log's labels (fedmtl.tasks.configure), and a label may reuse a default task's name (the
synthetic funnel's `click` is a 0/1 column, not the ranking task), so a test after it would
otherwise see the log's tasks.

`nearest_rounding`: SecAgg+'s quantisation rounded to nearest instead of stochastically (its
draws come from NumPy's unseeded global RNG), for tests that compare a SecAgg+ run with
another within a bound: the quantisation error is then at most half a level a client and the
same in every run.

`seeded_numpy` (every test): NumPy's global RNG seeded the same at the start of each test, so
a test that compares a SecAgg+ run (its stochastic rounding draws from that RNG, as Flower's
quantize does) with another within a bound gets the same draws, and the same answer, in every
CI run; no guarantee rests on that RNG (DP noise and SecAgg+'s secrets come from the OS
CSPRNG, which a test of its own checks cannot be regenerated from any seed). Set
FEDMTL_TEST_NUMPY_SEED=N to run the suite on other draws (how much margin a bound has)."""

import os

import numpy as np
import pytest

from fedmtl.tasks import reset


@pytest.fixture(autouse=True)
def default_task_registry():
    reset()
    yield
    reset()


@pytest.fixture(autouse=True)
def seeded_numpy():
    state = np.random.get_state()
    np.random.seed(int(os.environ.get("FEDMTL_TEST_NUMPY_SEED", "20261207")))  # noqa: NPY002
    yield
    np.random.set_state(state)


@pytest.fixture
def nearest_rounding(monkeypatch):
    from fedmtl.federation import secagg_workflow

    monkeypatch.setattr(secagg_workflow, "stochastic_round", lambda a: np.asarray(np.rint(a)).astype(np.int32))
