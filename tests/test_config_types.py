"""fedmtl/config_types.py against conf/: the types of a validated config are true to every
group option's composition (each key declared, each value of its declared type, every
Required key present), so a type checker reading `cfg["train"]["lr"]` sees what runs see."""

from __future__ import annotations

import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest
import yaml

from fedmtl.config import CONF_DIR, compose
from fedmtl.config_types import RunConfig
from fedmtl.errors import ConfigError


def mismatches(value, tp, path: str = "cfg") -> list[str]:
    """Where `value` is not of type `tp` (a TypedDict tree), as 'path: why' lines."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return []
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not a block"]
        hints = get_type_hints(tp)
        out = [f"{path}.{k}: not declared in {tp.__name__}" for k in value if k not in hints]
        out += [f"{path}.{k}: missing (Required in {tp.__name__})" for k in tp.__required_keys__ if k not in value]
        for k, v in value.items():
            if k in hints:
                out += mismatches(v, hints[k], f"{path}.{k}")
        return out
    if origin in (Union, types.UnionType):
        return [] if any(not mismatches(value, a, path) for a in args) else [f"{path}: {value!r} is not {tp}"]
    if origin is Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [m for i, v in enumerate(value) for m in mismatches(v, args[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not a mapping"]
        return [m for k, v in value.items() for m in mismatches(k, args[0], f"{path} key") + mismatches(v, args[1], f"{path}.{k}")]
    if tp is type(None) or tp is None:
        return [] if value is None else [f"{path}: {value!r} is not null"]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    return [] if ok else [f"{path}: {value!r} is not {getattr(tp, '__name__', tp)}"]


RECBOLE = Path(tempfile.mkdtemp(prefix="fedmtl-types-")) / "ml"  # a RecBole folder: its labels come from the header


def option_overrides() -> list[list[str]]:
    """One composition per option of every config group (a data set with what it needs)."""
    RECBOLE.mkdir(parents=True, exist_ok=True)
    (RECBOLE / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t4\t10\n")
    out = [[]]
    for group in sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()):
        for option in sorted((CONF_DIR / group).glob("*.yaml")):
            ov = [f"{group}={option.stem}"]
            if group == "dataset":
                spec = yaml.safe_load(option.read_text()) or {}
                if option.stem == "recbole":
                    ov += [f"dataset.path={RECBOLE}", "tasks=[rating]"]
                elif "path" in spec and option.stem not in ("synthetic", "synthetic_funnel"):
                    ov.append("dataset.path=/data")
                if option.stem == "log":  # the generic reader: a file and one label
                    ov += ["dataset.file=/data/log.csv", "dataset.offers=[like]",
                           "+dataset.labels.like={kind:binary,column:is_like}", "tasks=[like]"]
                elif spec.get("offers") and option.stem != "recbole":
                    ov.append(f"tasks=[{spec['offers'][0]}]")
            out.append(ov)
    return out


@pytest.mark.parametrize("overrides", option_overrides(), ids=lambda ov: " ".join(ov) or "default")
def test_every_option_s_config_has_the_declared_types(overrides):
    try:
        cfg = compose(overrides)
    except ConfigError as e:
        pytest.fail(f"{overrides}: {e}")
    found = mismatches(cfg, RunConfig)
    assert not found, "; ".join(found)


def test_the_check_finds_a_wrong_type_and_an_undeclared_key():
    cfg = compose([])
    cfg["train"]["lr"] = "fast"
    cfg["train"]["speed"] = 3
    del cfg["seed"]
    found = mismatches(cfg, RunConfig)
    assert "cfg.train.lr: 'fast' is not float" in found
    assert "cfg.train.speed: not declared in TrainSection" in found
    assert "cfg.seed: missing (Required in RunConfig)" in found


def test_validate_and_compose_say_they_return_a_run_config():
    import fedmtl.config as config

    assert typing.get_type_hints(config.validate)["return"] is RunConfig
    assert typing.get_type_hints(config.compose)["return"] is RunConfig


PRESETS = sorted(p.stem for p in (CONF_DIR.parent / "simulations" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_s_config_has_the_declared_types(preset, tmp_path):
    overrides = [f"experiment={preset}", "dataset.path=/data"]
    try:
        cfg = compose(overrides)
    except ConfigError as e:
        if "init.from" not in str(e):  # a transfer preset names a source run: its keys are checked without it
            raise
        cfg = compose(overrides + ["init.from=null"])
    found = mismatches(cfg, RunConfig)
    assert not found, "; ".join(found)
