"""`python -m fedmtl.transfer curves NAME=RUN_DIR ... --target X | table RUN_DIR |
evaluate RUN_DIR [--name NAME] [transfer.KEY=VALUE ...]`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from ..errors import FedMTLError
from .curves import curves_main
from .evaluation import reevaluate
from .tables import tables


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] not in ("curves", "table", "evaluate"):
            raise FedMTLError("usage: python -m fedmtl.transfer curves NAME=RUN_DIR ... --target X "
                              "| table RUN_DIR | evaluate RUN_DIR [--name NAME] [transfer.KEY=VALUE ...]")
        if argv[0] == "curves":
            curves_main(argv[1:])
        elif argv[0] == "evaluate":
            if len(argv) < 2:
                raise FedMTLError("evaluate: give the run folder")
            rest = argv[2:]
            name = "transfer"
            if "--name" in rest:
                at = rest.index("--name")
                name, rest = rest[at + 1], rest[:at] + rest[at + 2:]
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            torch.set_num_threads(1)  # one user's tiny steps: threads only contend
            print(tables(reevaluate(argv[1], rest, name), json.loads((Path(argv[1]) / "config.json").read_text())["tasks"]))
        else:
            path = Path(argv[1]) / "transfer.json" if len(argv) > 1 else None
            if path is None or not path.is_file():
                raise FedMTLError(f"table: no transfer.json in {argv[1] if len(argv) > 1 else '(no folder given)'}")
            rep = json.loads(path.read_text())
            print(tables(rep, json.loads((path.parent / "config.json").read_text())["tasks"]))
    except FedMTLError as e:
        print(f"fedmtl: error: {e}", file=sys.stderr)
        sys.exit(2)
