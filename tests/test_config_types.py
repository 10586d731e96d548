"""fedmtl/config_types.py against conf/: the types of a validated config are true to every
group option's composition (each key declared, each value of its declared type, every
Required key present), so a type checker reading `cfg["train"]["lr"]` sees what runs see."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from config_options import option_overrides
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
