"""Every test starts from the default task registry: a run on an interaction log registers
that log's labels (fedmtl.tasks.configure), and a label may reuse a default task's name (the
synthetic funnel's `click` is a 0/1 column, not the ranking task), so a test after it would
otherwise see the log's tasks."""

import pytest

from fedmtl.tasks import reset


@pytest.fixture(autouse=True)
def default_task_registry():
    reset()
    yield
    reset()
