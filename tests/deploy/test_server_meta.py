"""A deployed ServerApp with `federation-meta` reads no data set: the metadata file that
`python -m fedmtl.deploy.export` writes beside the partitions stands for it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmtl.config import compose
from fedmtl.data import META_FILE, federation_for, federation_meta, use_federation_meta
from fedmtl.deploy.export import export_partitions
from fedmtl.errors import ConfigError, DataError

TINY = ["dataset.n_users=40", "dataset.n_items=30", "num_clients=4", "device=cpu"]


def test_export_writes_the_metadata_the_server_side_reads(tmp_path):
    cfg = compose(TINY)
    export_partitions(cfg, tmp_path)
    raw = json.loads((tmp_path / META_FILE).read_text())
    fed = federation_for(cfg)
    assert raw["n_items"] == 30 and raw["max_users"] == max(len(c) for c in fed.clients)
    assert raw["max_examples"] == max(len(fed.split.train[fed.split.train["user"].isin(c)]) for c in fed.clients)
    assert np.array_equal(np.asarray(raw["item_multi"], np.float32), fed.meta["item_multi"])


def test_given_metadata_the_server_side_never_touches_the_data(tmp_path):
    """A MovieLens run whose data path does not exist on this machine: every server-side
    step that needs the federation's sizes runs from the file; building the federation
    itself would fail."""
    from fedmtl.federation import replies, server_app

    written = compose(TINY)
    export_partitions(written, tmp_path)
    raw = json.loads((tmp_path / META_FILE).read_text())
    cfg = compose(["dataset=movielens100k", f"dataset.path={tmp_path / 'nowhere'}", "num_clients=4", "device=cpu",
                   "num_rounds=1"])
    with pytest.raises(DataError):
        federation_for(cfg)  # the data are not here
    use_federation_meta(cfg, tmp_path / META_FILE)
    meta = federation_meta(cfg)
    assert meta["n_items"] == raw["n_items"] and meta["max_examples"] == raw["max_examples"]
    arrays = server_app.initial_arrays(cfg)  # the round-0 model from the metadata alone
    assert arrays["encoder.item_emb.weight"].numpy().shape[0] == raw["n_items"]
    assert replies.largest_client(cfg) == raw["max_examples"]


def test_a_bad_metadata_file_is_one_config_error(tmp_path):
    cfg = compose(TINY)
    bad = tmp_path / "meta.json"
    bad.write_text('{"n_items": 3}')
    with pytest.raises(ConfigError, match=r"^federation-meta=.*meta\.json: not a metadata file"):
        use_federation_meta(cfg, bad)
    with pytest.raises(ConfigError, match="not a metadata file"):
        use_federation_meta(cfg, tmp_path / "missing.json")
