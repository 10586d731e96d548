"""Every default has one source: conf/ (and, for configs written before a key existed,
checks.BEFORE_KEY). The code neither fills in other values nor restates conf's.

- `validate` fills a missing key only with BEFORE_KEY's value (a config written before the
  key) and every key BEFORE_KEY names is one conf/ has;
- no module reads a key that every composed config has with a fallback of its own
  (`cfg.get("key", default)`, `cfg.get("block") or {}`): the code's defaults used to
  drift from conf/ (min_train_clients 1 in faults.py against conf/'s 2; personal_decay 0.0
  in train.py against 0.05).
"""

from __future__ import annotations

import ast
import copy
from functools import lru_cache
from pathlib import Path

import pytest

from config_options import option_overrides
from fedmtl.checks import BEFORE_KEY
from fedmtl.config import compose, validate
from fedmtl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def leaves(node, prefix=()):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, (*prefix, k))
    else:
        yield prefix, node


def lookup(cfg, path):
    for k in path:
        if not isinstance(cfg, dict) or k not in cfg:
            return KeyError
        cfg = cfg[k]
    return cfg


@lru_cache(maxsize=1)
def compositions() -> tuple[dict, ...]:
    """The default config and one per option of every config group, each with what it needs
    (config_options.py): a key only some data sets have is not "always present"."""
    return tuple(compose(ov) for ov in option_overrides())


def always_present(path: tuple[str, ...]) -> bool:
    return all(lookup(cfg, path) is not KeyError for cfg in compositions())


def test_validate_fills_a_missing_key_only_from_before_key():
    default = compose([])
    before = {tuple(k.split(".")): v for k, v in BEFORE_KEY.items()}
    for key in before:
        assert lookup(default, key) is not KeyError, f"BEFORE_KEY names {'.'.join(key)}, which conf/ lacks"
    checked = 0
    for path, value in leaves(default):
        raw = copy.deepcopy(default)
        parent = lookup(raw, path[:-1]) if len(path) > 1 else raw
        del parent[path[-1]]
        try:
            filled = lookup(validate(raw), path)
        except (ConfigError, KeyError):
            continue  # conf/ is its only source
        if filled is KeyError:
            continue
        if path == ("split", "seed"):  # null (or missing) means the run's seed: resolved, not a default
            assert filled == default["seed"]
            continue
        checked += 1
        want = before.get(path, before.get(path[:-1], {}).get(path[-1], KeyError) if len(path) > 1 and
                          isinstance(before.get(path[:-1]), dict) else KeyError)
        assert want is not KeyError and filled == want, \
            f"validate filled {'.'.join(path)}={filled!r}; a default must come from conf/ or checks.BEFORE_KEY"
    assert checked >= len(BEFORE_KEY)  # the test saw the backfill at work


def cfg_path(node, alias):
    """The config path an expression reads (`cfg["a"].get("b")`, `(cfg.get("a") or {})`, an
    alias of one), or None."""
    if isinstance(node, ast.Name):
        return () if node.id == "cfg" else alias.get(node.id)
    if isinstance(node, ast.Attribute) and node.attr == "cfg" and isinstance(node.value, ast.Name) \
            and node.value.id == "self":
        return ()
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        p = cfg_path(node.value, alias)
        return None if p is None else (*p, node.slice.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        p = cfg_path(node.func.value, alias)
        return None if p is None else (*p, node.args[0].value)
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
        return cfg_path(node.values[0], alias)
    return None


def restated_defaults(source: str) -> list[tuple[int, str]]:
    out = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        alias = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                t, v = node.targets[0], node.value
                pairs = zip(t.elts, v.elts) if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) else [(t, v)]
                for target, value in pairs:
                    p = cfg_path(value, alias) if isinstance(target, ast.Name) and target.id != "cfg" else None
                    if p is not None:
                        alias[target.id] = p
        for node in ast.walk(fn):
            path = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("get", "setdefault") and len(node.args) == 2 \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                base = cfg_path(node.func.value, alias)
                path = None if base is None else (*base, node.args[0].value)
            elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) == 2 \
                    and isinstance(node.values[1], (ast.Constant, ast.Dict, ast.List)) \
                    and not (isinstance(node.values[1], ast.Constant) and node.values[1].value is None):
                path = cfg_path(node.values[0], alias)
            if path and always_present(path):
                out.append((node.lineno, ".".join(path)))
    return out


def test_the_scan_finds_a_restated_default():
    src = ("def f(cfg):\n    b, n = cfg['backend'], 3\n"
           "    return b.get('name', 'cohort'), (cfg.get('privacy') or {}), cfg['seed'], b.get('workers', 1)\n")
    # backend.workers: not every backend has it (Ray's has none), so a fallback is the code's own
    assert sorted(restated_defaults(src)) == [(3, "backend.name"), (3, "privacy")]


MODULES = sorted(p for p in (ROOT / "fedmtl").rglob("*.py") if p.relative_to(ROOT).as_posix() not in
                 ("fedmtl/config.py", "fedmtl/checks.py"))  # validation itself: it reads configs not yet backfilled


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_restates_a_default_of_conf(path):
    found = restated_defaults(path.read_text())
    assert not found, "; ".join(f"{path.relative_to(ROOT)}:{line} restates {key} (every composed config has it: "
                                f"read cfg[...] instead)" for line, key in found)
