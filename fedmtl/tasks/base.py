"""What a task is, and the registry of the tasks a run can name.

A task knows how its label comes from the interaction log (`column`, and a kind-specific
rule such as a threshold), its loss, its evaluation parts (additive sums and counts a client
sends) and how parts combine into metrics, its headline metric and whether larger is better.

Two families: a *pair* task scores each (user, item) test pair against its label
(regression, binary); a *ranking* task ranks every item for a user and is trained with the
softmax (or sampled) loss over items, its positives the user's interactions where its label
is 1 (every row for an event log). One module per kind: regression.py, binary.py, ranking.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError


def percentiles(values: list[float]) -> tuple[float, float]:
    """The 10th and 90th percentile of the finite values (nan, nan if none)."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    if len(vals) == 1:  # one client's part (every reply is screened by pooling it alone): no sort needed
        return float(vals[0]), float(vals[0])
    p10, p90 = np.percentile(vals, [10, 90])
    return float(p10), float(p90)


class Task:
    """One task: a name, the label column it reads and the kind-specific parts below."""

    kind = ""
    pairwise = True  # scored on its (user, item, label) test pairs; False: full ranking over items
    head_offset = 0.0  # the initial offset of the task's head (the label's typical level)

    def __init__(self, name: str, column: str | None = "rating"):
        self.name, self.column = name, column

    # --- the label ---------------------------------------------------------------------------
    def value(self, y) -> torch.Tensor:
        """This task's column of a batch's labels: `y` is the rating column (a rating log) or
        {column: values} (an interaction log, ClientData.labels)."""
        return y[self.column] if isinstance(y, dict) else y

    def target(self, y) -> torch.Tensor:
        """The training target of a batch's labels."""
        return self.value(y)

    def initial_offset(self, y) -> float | None:
        """The head's first offset from one client's own training labels `y` (None: `head_offset`,
        the same for every client)."""
        return None

    # --- evaluation --------------------------------------------------------------------------
    def segment_parts(self, s: torch.Tensor, y, bounds: np.ndarray) -> list[dict]:
        """`parts` (a pair task's) of each slice bounds[c]:bounds[c + 1] of the pairs: clients
        stacked one after another (cohort.evaluation). A kind may compute them at once."""
        cut = lambda a, b: {k: v[a:b] for k, v in y.items()} if isinstance(y, dict) else y[a:b]  # noqa: E731
        return [self.parts(s[a:b], cut(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def check_part(self, part: dict) -> str | None:
        """What makes one client's parts of this task impossible (a count that is no count, a sum
        its count cannot give, ...), or None; keys it lacks are not its concern (screening
        compares a reply's keys with the others')."""
        return None

    def _count(self, part: dict) -> tuple[float | None, str | None]:
        """(this task's `.n` in `part` or None, what is wrong with it or None)."""
        n = part.get(f"{self.name}.n")
        if n is not None and not (n >= 0 and float(n).is_integer()):
            return n, f"{self.name}.n={n!r} is not a count"
        return n, None

    def empty_parts(self) -> dict:
        """The parts of a client with no test rows (every client sends the same keys)."""
        raise NotImplementedError

    def combine(self, get, parts: list[dict]) -> dict[str, float]:
        """Final metrics from the parts of any number of clients; `get(key)` lists a key's values."""
        raise NotImplementedError

    def metric(self, key: str) -> str:
        return f"{self.name}.{key}"

    # What each kind reports, its metric keys without the task's name: the table's rows
    # (key, label), the progress line's keys, and the headline key with its direction
    # (True: higher is better).
    row_spec: tuple[tuple[str, str], ...] = ()
    log_spec: tuple[str, ...] = ()
    headline_spec: tuple[str, bool] = ("", True)

    def rows(self) -> list[tuple[str, str]]:
        return [(self.metric(key), label) for key, label in self.row_spec]

    def log_keys(self) -> list[str]:
        return [self.metric(key) for key in self.log_spec]

    def headline(self) -> tuple[str, bool]:
        key, higher = self.headline_spec
        return self.metric(key), higher

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, column={self.column!r})"


REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add (or replace) a task under its name."""
    REGISTRY[task.name] = task
    return task


def get(name: str) -> Task:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"tasks: unknown task {name!r}; expected one of {list(REGISTRY)}") from None


def pair_tasks(names) -> list[Task]:
    return [get(n) for n in names if get(n).pairwise]


def ranking_tasks(names) -> list[Task]:
    return [get(n) for n in names if not get(n).pairwise]


def selection_key(names) -> str | None:
    """split=leave_one_out's round selection: validation HR@K of the first ranking task
    (valid/click.hr@10 on a rating log), None without one."""
    ranked = ranking_tasks(names)
    return f"valid/{ranked[0].name}.hr@{ranked[0].k}" if ranked else None
