"""One composed config per option of every config group, each given what that option needs
(a data path, a RecBole header, a label and its task): the set tests/test_config_types.py
checks types over and tests/test_defaults.py reads "every composed config has it" from."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from fedmtl.config import CONF_DIR

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
