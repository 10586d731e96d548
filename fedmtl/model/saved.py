"""The saved final model of a run (its shared encoder), and what rebuilds a model around it.

A run folder holds
- `model_shared.pt`: {parameter name: tensor} of what the server aggregated at the end
  (the encoder; with `aggregate=all` the task heads too, which then serve as a head prior);
- `model_config.json`: the model config, tasks, aggregate mode, the data set's config and
  feature sizes, and the rounds trained: enough to rebuild the model and to check that a
  later run (`init.from=RUN_DIR`) is compatible.

`init.from` maps a checkpoint onto a model whose task list may differ (the new-task
experiment): parameters are matched by name and shape, task-indexed ones (the item bias
columns, MMoE gates, PLE task experts and gates) by task name; what the checkpoint does
not have for a task keeps its seeded initial value.

The per-round checkpoints a run resumes from are another thing: fedmtl/federation/resume.py.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config_types import RunConfig
from ..errors import ConfigError
from ..runfiles import write_json
from .parts import set_arrays
from .recommender import build_model

log = logging.getLogger("fedmtl")

SHARED_FILE = "model_shared.pt"
CONFIG_FILE = "model_config.json"
# Parameters with one slot per task (the task's position in the run's task list).
_TASK_SLOTS = [re.compile(r"^(encoder\.(?:user|item)_tower\.gates\.)(\d+)(\..+)$"),
               re.compile(r"^(encoder\.(?:user|item)_tower\.(?:specific|task_gates)\.\d+\.)(\d+)(\..+)$")]
_TASK_COLUMNS = ("encoder.item_bias.weight",)


@dataclass
class Checkpoint:
    arrays: dict[str, np.ndarray]
    info: dict

    @property
    def tasks(self) -> list[str]:
        return list(self.info["tasks"])


def save(out_dir: str | Path, cfg: RunConfig, arrays: dict[str, np.ndarray], meta: dict, rounds: int | None = None) -> None:
    """Write both files atomically (a reader never sees half a checkpoint)."""
    out_dir = Path(out_dir)
    tmp = out_dir / f".{SHARED_FILE}.tmp"
    torch.save({k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}, tmp)
    tmp.replace(out_dir / SHARED_FILE)
    write_json(out_dir / CONFIG_FILE, {
        "model": cfg["model"], "tasks": list(cfg["tasks"]), "aggregate": cfg["aggregate"],
        "dataset": cfg["dataset"], "seed": cfg["seed"], "rounds": rounds,
        "n_items": int(meta["n_items"]), "user_cards": [int(c) for c in meta["user_cards"]],
        "item_cards": [int(c) for c in meta["item_cards"]], "n_item_multi": int(np.shape(meta["item_multi"])[1]),
    })


def load(path: str | Path, what: str = "init.from") -> Checkpoint:
    """A checkpoint from a run folder (or its model_shared.pt)."""
    path = Path(path)
    folder = path.parent if path.name == SHARED_FILE else path
    if not (folder / SHARED_FILE).is_file():
        raise ConfigError(f"{what}={path}: no {SHARED_FILE} there (a run folder with save_model=true)")
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"{what}={path}: no {CONFIG_FILE} beside {SHARED_FILE} (written by runs of this version)")
    try:
        state = torch.load(folder / SHARED_FILE, map_location="cpu", weights_only=True)
        info = json.loads((folder / CONFIG_FILE).read_text())
    except Exception as e:  # a truncated or foreign file: one line, not a traceback
        raise ConfigError(f"{what}={path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    return Checkpoint({k: v.numpy() for k, v in state.items()}, info)


def check_compatible(ckpt: Checkpoint, cfg: RunConfig, meta: dict, what: str = "init.from") -> None:
    info = ckpt.info
    for key in ("name", "dim"):
        if info["model"].get(key) != cfg["model"].get(key):
            raise ConfigError(f"{what}: checkpoint model.{key}={info['model'].get(key)} but this run has "
                              f"model.{key}={cfg['model'].get(key)}")
    ours = {"n_items": int(meta["n_items"]), "user_cards": [int(c) for c in meta["user_cards"]],
            "item_cards": [int(c) for c in meta["item_cards"]], "n_item_multi": int(np.shape(meta["item_multi"])[1])}
    for key, value in ours.items():
        if info[key] != value:
            raise ConfigError(f"{what}: checkpoint was trained with {key}={info[key]} but this run's data has "
                              f"{key}={value} (another data set?)")


def source_name(name: str, tasks: list[str], src_tasks: list[str]) -> str | None:
    """The checkpoint's name for the parameter `name` of a model with `tasks`; None where the
    checkpoint has no such task."""
    for pat in _TASK_SLOTS:
        m = pat.match(name)
        if m:
            task = tasks[int(m[2])]
            return f"{m[1]}{src_tasks.index(task)}{m[3]}" if task in src_tasks else None
    return name


def map_arrays(ckpt: Checkpoint, current: dict[str, np.ndarray], tasks: list[str]) -> tuple[dict, list[str]]:
    """`current` (name -> the model's own value) with every value the checkpoint has for it.
    Returns the arrays and the names (or name[task]) left at their own values."""
    out, fresh = {}, []
    src_tasks = ckpt.tasks
    for name, cur in current.items():
        if name in _TASK_COLUMNS and name in ckpt.arrays:
            col = cur.copy()
            for t, task in enumerate(tasks):
                if task in src_tasks and ckpt.arrays[name].shape[0] == cur.shape[0]:
                    col[:, t] = ckpt.arrays[name][:, src_tasks.index(task)]
                else:
                    fresh.append(f"{name}[{task}]")
            out[name] = col
            continue
        src = source_name(name, tasks, src_tasks)
        if src is not None and src in ckpt.arrays and ckpt.arrays[src].shape == cur.shape:
            out[name] = ckpt.arrays[src].astype(cur.dtype, copy=False)
        else:
            out[name] = cur
            fresh.append(name)
    return out, fresh


def init_shared(cfg: RunConfig, current: dict[str, np.ndarray], meta: dict) -> dict[str, np.ndarray]:
    """The run's round-0 shared arrays: from `init.from` where set, else `current` unchanged."""
    path = cfg["init"]["from"]
    if not path:
        return current
    ckpt = load(path)
    check_compatible(ckpt, cfg, meta)
    arrays, fresh = map_arrays(ckpt, current, cfg["tasks"])
    log.info("init.from=%s: %d of %d shared arrays from the checkpoint (tasks %s -> %s)%s", path,
             len(current) - len({f.split('[')[0] for f in fresh if '[' not in f}), len(current),
             ",".join(ckpt.tasks), ",".join(cfg["tasks"]), f"; fresh: {', '.join(fresh)}" if fresh else "")
    return arrays


def rebuild(ckpt: Checkpoint, meta: dict, n_users: int = 1, user_cat: np.ndarray | None = None):
    """A model of the checkpoint's config with its shared arrays loaded (personal parts at
    their seeded initial values)."""
    cfg = {"model": ckpt.info["model"], "dataset": ckpt.info["dataset"]}
    check_compatible(ckpt, cfg, meta, what="checkpoint")
    if user_cat is None:
        user_cat = np.zeros((n_users, len(meta["user_cards"])), np.int64)
    model = build_model(ckpt.info["model"], ckpt.tasks, n_users, user_cat, meta, ckpt.info["seed"])
    set_arrays(model, ckpt.arrays)
    return model
