"""Write each partition's own data files, to hand one folder to each SuperNode.

    python -m fedmtl.deploy.export OUT_DIR [hydra overrides]

composes the config like `python -m fedmtl.simulate`, builds the split and the
partition into `num_clients` clients, and writes OUT_DIR/partition-K/train.tsv and
test.tsv (user item rating ts, the data set's raw ids) holding only partition K's
users, and OUT_DIR/federation_meta.json: what the ServerApp needs instead of the data set
(the catalogue's size and item features, the user features' sizes, the most examples and
users one client holds); `flwr run ... --run-config 'federation-meta="OUT_DIR/federation_meta.json"'`
lets the SuperLink's machine run without the data. A SuperNode started with

    --node-config 'partition-id=K num-partitions=N split-path="OUT_DIR/partition-K"'

then reads only that folder for its interactions (the item and user feature tables
still come from the data set: generated from the seed for `dataset=synthetic`, or
the GroupLens files at `dataset.path` / the node's `dataset-path`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import FedMTLError, print_error


def export_partitions(cfg: dict, out_dir: str | Path) -> list[Path]:
    from ..data import META_FILE, federation_for, split as split_mod, write_federation_meta
    from ..data.split import Split

    fed = federation_for(cfg)
    out = Path(out_dir)
    folders = []
    for k, users in enumerate(fed.clients):
        part = Split(train=fed.split.train[fed.split.train["user"].isin(users)],
                     test=fed.split.test[fed.split.test["user"].isin(users)])
        folder = out / f"partition-{k}"
        split_mod.write(part, fed.dataset, folder)
        folders.append(folder)
    write_federation_meta(cfg, out / META_FILE)
    return folders


def main(argv=None) -> None:
    from ..config import compose

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    try:
        cfg = compose(argv[1:])
        folders = export_partitions(cfg, argv[0])
    except FedMTLError as e:
        sys.exit(print_error(e))
    print(f"{len(folders)} partitions of {cfg['dataset']['name']} -> {Path(argv[0]).resolve()}/partition-K")


if __name__ == "__main__":
    main()
