"""click_mix federated: the server's Gram is the pooled one, and EASE's B reaches every evaluation
and changes the click ranking only."""

from __future__ import annotations

import json

import numpy as np

from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.engine.inprocess import InProcessGrid
from fedmtl.federation.client_app import make_client_app
from fedmtl.federation.server_app import item_item_round
from fedmtl.federation.strategies import build_strategy
from fedmtl.itemitem import ease, gram
from fedmtl.simulate import run

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=2", "device=cpu"]


def test_the_servers_gram_is_the_sum_of_every_clients_part():
    cfg = compose(TINY + ["click_mix.weight=0.5", "click_mix.lam=5"])
    grid = InProcessGrid(make_client_app(cfg), 6)
    record, up = item_item_round(grid, cfg, build_strategy(cfg))
    assert up > 0
    pooled = ease(gram(federation_for(cfg).all_data().train_mask()), 5.0)
    np.testing.assert_allclose(record["b"].numpy(), pooled, rtol=1e-5, atol=1e-7)
    assert item_item_round(grid, compose(TINY), build_strategy(cfg)) == (None, 0)  # weight 0: no round


def test_a_blended_run_changes_click_alone_and_counts_the_bytes_of_b(tmp_path):
    plain_run = run(compose(TINY), tmp_path / "plain")
    mixed_run = run(compose(TINY + ["click_mix.weight=0.6", "click_mix.lam=5"]), tmp_path / "mixed")
    plain, mixed = plain_run["metrics"], mixed_run["metrics"]
    for key in ("rating.rmse", "like.auc"):
        assert mixed[key] == plain[key]
    assert (mixed["click.ndcg@10"], mixed["click.hr@10"]) != (plain["click.ndcg@10"], plain["click.hr@10"])
    rows = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("plain", "mixed")}
    n_items = federation_for(compose(TINY)).meta["n_items"]
    extra = [m["bytes_down"] - p["bytes_down"] for p, m in zip(rows["plain"], rows["mixed"])]
    b_bytes = n_items * n_items * 4  # B (float32, plus a record header) to each of 6 clients, both evaluated rounds
    assert len(extra) == 2 and all(6 * b_bytes <= e <= 6 * (b_bytes + 1024) for e in extra), extra
    # the Gram parts went up once, before round 1, and count in the run's upload
    assert mixed_run["item_gram_bytes_up"] > 0 and plain_run["item_gram_bytes_up"] == 0
    rounds_up = sum(r["bytes_up"] for r in rows["mixed"])
    assert mixed_run["bytes_up_total"] == rounds_up + mixed_run["item_gram_bytes_up"]
