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

from ..checks import get as config_value
from ..errors import ConfigError
from .base import REGISTRY, Task, get, pair_tasks, ranking_tasks, register, selection_key
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
           "get", "register", "first_offsets", "pair_tasks", "ranking_tasks", "selection_key", "check_tasks", "choose_rows", "click_candidates",
           "losses"]


def check_tasks(names, offered=None, source: str | None = None) -> list[str]:
    """`tasks=[...]` validated: a non-empty list of distinct names drawn from `offered`
    (default: the registered tasks); `source` (e.g. "dataset=instacart_sample") names where
    the offered tasks come from, for the error."""
    offered = list(offered if offered is not None else REGISTRY)
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"tasks={names!r}: expected a list drawn from {offered}")
    names = list(names)
    if not names:
        raise ConfigError(f"tasks: must name at least one of {', '.join(offered)}")
    for n in names:
        if not isinstance(n, str) or n not in offered:
            where = f" (the labels {source} offers: set tasks=[{','.join(offered)}] or a part of it)" if source else ""
            raise ConfigError(f"tasks: unknown task {n!r}; expected a subset of {offered}{where}")
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks: {names} names a task twice")
    return names


def first_offsets(tasks, data) -> dict[int, float]:
    """{task index: value} of the tasks whose first offset comes from a client's own training
    labels (`data.labels("train")`; a log's numeric label: Task.initial_offset; local data,
    never sent). Where the task's head offset is personal it starts there; where the heads are
    shared (aggregate=all) the client's user biases of that task start there instead."""
    y = data.labels("train")
    out = {k: get(t).initial_offset(y) for k, t in enumerate(tasks)}
    return {k: v for k, v in out.items() if v is not None}


def label_task(name: str, spec: dict, ranking: dict | None = None) -> Task:
    """The task of an interaction log's label (log_reader's `labels` spec): numeric ->
    regression on it; binary -> binary on it (a 0/1 column; >= threshold is already applied
    by the reader); event with a column (an event type among other rows) -> binary; event
    without one (every row is the event: a purchase log) -> ranking over the items."""
    kind = spec.get("kind")
    if kind == "numeric":
        clip = spec.get("clip")
        return Regression(name, name, clip=tuple(clip) if clip else None, offset=None)
    if kind == "binary" or (kind == "event" and spec.get("column")):
        return Binary(name, name, threshold=0.5)
    if kind == "event":
        return Ranking(name, None, **(ranking or {}))
    raise ConfigError(f"labels.{name}.kind={kind!r}: expected numeric, binary or event")


def reset() -> None:
    """The registry of the default tasks only."""
    REGISTRY.clear()
    for t in DEFAULTS:
        register(t)


def configure(cfg: dict) -> list[str]:
    """Reset the registry to the defaults plus the labels of `cfg`'s dataset (an interaction
    log); returns the task names the data set offers (for `tasks=[...]`)."""
    reset()
    labels = dataset_labels(config_value(cfg, "dataset"))
    if labels is None:
        if ranking_options(cfg):
            register(Ranking("click", None, **ranking_options(cfg)))
        return list(TASKS)
    ranking = ranking_options(cfg)
    for name, spec in labels.items():
        register(label_task(name, spec, ranking))
    return list(labels)


def dataset_labels(dcfg: dict) -> dict | None:
    """{label: spec} a log dataset offers (None: a rating log: synthetic, MovieLens)."""
    from ..data import LOG_DATASETS
    from ..data.log_reader import _label_specs
    from ..data.log_layouts import PRESETS, recbole_labels

    name = dcfg.get("name")
    if name not in LOG_DATASETS:
        return None
    if name == "synthetic_funnel":
        from ..data.synthetic import FUNNEL_LABELS
        return dict(FUNNEL_LABELS)
    layout = dcfg.get("layout") or name
    if layout == "log":
        return _label_specs(dcfg.get("labels") or {})
    if layout == "recbole":  # its labels come from NAME.inter's typed header
        if not dcfg.get("path"):
            raise ConfigError("dataset.path: dataset=recbole needs its folder NAME (holding NAME.inter) or the "
                              ".inter file")
        return recbole_labels(dcfg["path"])
    return dict(PRESETS[layout]["labels"])


def ranking_options(cfg: dict) -> dict:
    """The `ranking` block (k, exclude_seen, recall) checked: options of every ranking task."""
    r = cfg["ranking"]
    if not isinstance(r, dict):
        raise ConfigError(f"ranking={r!r}: expected a block with k, exclude_seen, recall")
    unknown = set(r) - {"k", "exclude_seen", "recall", "repeat_weight", "repeat_decay"}
    if unknown:
        raise ConfigError(f"ranking.{sorted(unknown)[0]}: unknown key; expected k, exclude_seen, recall, "
                          "repeat_weight or repeat_decay")
    d = r.get("repeat_decay")
    if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1):
        raise ConfigError(f"ranking.repeat_decay={d!r}: expected a number in (0, 1] (1: plain counts)")
    w = r.get("repeat_weight")
    if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0):
        raise ConfigError(f"ranking.repeat_weight={w!r}: expected a number >= 0")
    if w and r["exclude_seen"]:
        raise ConfigError("ranking.repeat_weight > 0 with ranking.exclude_seen=true: the repeat prior scores the "
                          "user's earlier items, which exclude_seen removes; set ranking.exclude_seen=false")
    if "k" in r and (not isinstance(r["k"], int) or isinstance(r["k"], bool) or r["k"] < 1):
        raise ConfigError(f"ranking.k={r['k']!r}: expected a positive integer")
    for key in ("exclude_seen", "recall"):
        if r.get(key) is not None and not isinstance(r[key], bool):
            raise ConfigError(f"ranking.{key}={r[key]!r}: expected true or false")
    return {k: v for k, v in r.items() if v is not None}
