"""Tasks: a registry of named tasks, each an instance of a kind (one module per kind).

| kind       | module        | label                                   | loss                         |
| regression | regression.py | a numeric column (rating, play time)    | squared error                |
| binary     | binary.py     | a 0/1 column, or a column >= threshold  | logistic                     |
| ranking    | ranking.py    | the items a user interacts with         | softmax over items (losses.py)|

The defaults, as fedmtl has always trained them on a rating log: rating (regression on the
rating, predictions clipped to 1..5), like (binary: rating >= 4), click (ranking over every
interaction). A data set's labels add more (`register_labels`); `tasks=[...]` picks among them.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import REGISTRY, Task, get, pair_tasks, ranking_tasks, register
from .binary import Binary
from .losses import choose_rows, click_candidates, losses
from .ranking import Ranking
from .regression import Regression

RATING_OFFSET = 3.5  # the rating head's initial offset (the middle of 1..5)
LIKE_THRESHOLD = 4.0

DEFAULTS = (Regression("rating", "rating", clip=(1.0, 5.0), offset=RATING_OFFSET),
            Ranking("click", None),
            Binary("like", "rating", threshold=LIKE_THRESHOLD))
for _t in DEFAULTS:
    register(_t)
TASKS = tuple(t.name for t in DEFAULTS)  # the tasks of a rating log: rating, click, like

__all__ = ["REGISTRY", "Task", "Regression", "Binary", "Ranking", "TASKS", "LIKE_THRESHOLD", "RATING_OFFSET",
           "get", "register", "pair_tasks", "ranking_tasks", "check_tasks", "choose_rows", "click_candidates",
           "losses"]


def check_tasks(names, offered=None) -> list[str]:
    """`tasks=[...]` validated: a non-empty list of distinct names drawn from `offered`
    (default: the registered tasks)."""
    offered = list(offered if offered is not None else REGISTRY)
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"tasks={names!r}: expected a list drawn from {offered}")
    names = list(names)
    if not names:
        raise ConfigError(f"tasks: must name at least one of {', '.join(offered)}")
    for n in names:
        if not isinstance(n, str) or n not in offered:
            raise ConfigError(f"tasks: unknown task {n!r}; expected a subset of {offered}")
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks: {names} names a task twice")
    return names
