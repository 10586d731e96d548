"""click_mix federated: the server's Gram is the pooled one, and EASE's B reaches every evaluation
and changes the click ranking only."""

from __future__ import annotations

import json

import pytest

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common import MessageType

from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.engine.inprocess import InProcessGrid
from fedmtl.federation.client_app import make_client_app
from fedmtl.federation.server_app import item_item_round
from fedmtl.federation.strategies import build_strategy
from fedmtl.itemitem import ease, gram, gram_part
from fedmtl.simulate import metrics_table, run

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=2", "device=cpu"]


def client_items(cfg) -> list[np.ndarray]:
    fed = federation_for(cfg)
    return [gram_part(fed.partition_data(pid).train_mask())[0] for pid in range(len(fed.clients))]


def test_the_servers_gram_is_the_sum_of_every_clients_part_and_each_client_gets_its_rows():
    cfg = compose(TINY + ["click_mix.weight=0.5", "click_mix.lam=5", "click_mix.grid_weight=[0.2]",
                          "click_mix.grid_lam=[5,50]"])
    grid = InProcessGrid(make_client_app(cfg), 6)
    ii, up = item_item_round(grid, cfg, build_strategy(cfg))
    assert up > 0
    g = gram(federation_for(cfg).all_data().train_mask())
    pooled = ease(g, 5.0)
    np.testing.assert_allclose(ii.own, pooled, rtol=1e-5, atol=1e-7)
    assert sorted(ii.grid) == [5.0, 50.0] and ii.grid[5.0] is ii.own
    np.testing.assert_allclose(ii.grid[50.0], ease(g, 50.0), rtol=1e-5, atol=1e-7)
    assert sorted(map(tuple, ii.node_items.values())) == sorted(map(tuple, client_items(cfg)))
    for final, keys in ((False, {"items", "b"}), (True, {"items", "b", "grid@5", "grid@50"})):
        msgs = [Message(RecordDict({}), dst_node_id=n, message_type=MessageType.EVALUATE) for n in ii.node_items]
        sent = ii.attach(msgs, final=final)
        assert sent == sum(m.content["item_item"].count_bytes() for m in msgs)
        for m in msgs:
            rec, items = m.content["item_item"], ii.node_items[m.metadata.dst_node_id]
            assert set(rec) == keys
            np.testing.assert_array_equal(rec["items"].numpy(), items)
            np.testing.assert_array_equal(rec["b"].numpy(), ii.own[items])  # the node's rows, no others
    assert item_item_round(grid, compose(TINY), build_strategy(cfg)) == (None, 0)  # weight 0, no grid: no round


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
    # each client: B's rows of its items (float32) and the item ids (int64), plus record headers
    need = sum(len(items) * (n_items * 4 + 8) for items in client_items(compose(TINY)))
    assert len(extra) == 2 and all(need <= e <= need + 6 * 1024 for e in extra), (extra, need)
    # the Gram parts went up once, before round 1, and count in the run's upload
    assert mixed_run["item_gram_bytes_up"] > 0 and plain_run["item_gram_bytes_up"] == 0
    rounds_up = sum(r["bytes_up"] for r in rows["mixed"])
    assert mixed_run["bytes_up_total"] == rounds_up + mixed_run["item_gram_bytes_up"]


def test_a_grid_run_scores_every_blend_once_in_the_final_evaluation(tmp_path):
    plain = run(compose(TINY), tmp_path / "plain")["metrics"]
    summary = run(compose(TINY + ["click_mix.weight=0.6", "click_mix.lam=5", "click_mix.grid_weight=[0,0.6]",
                                  "click_mix.grid_lam=[5,50]"]), tmp_path / "grid")
    mixed = summary["metrics"]
    for key in ("click.ndcg@10", "click.hr@10"):
        assert mixed[f"mix_w0.6_lam5/{key}"] == mixed[key]  # the run's own blend, scored twice
        assert mixed[f"mix_w0_lam50/{key}"] == plain[key]  # weight 0: the click head's ranking
    assert "mix_w0.6_lam50/click.ndcg@10" in mixed
    best = max((v, k) for k, v in mixed.items() if k.startswith("mix_") and k.endswith("ndcg@10"))
    name = best[1].split("/")[0][len("mix_"):]
    assert f"| click | NDCG@10, blend {name} (click_mix grid, best 1 of 4) | {best[0]:.4f} |" \
        in metrics_table(mixed, ["click"])  # the run's final table names the best blends
    rows = [json.loads(x) for x in (tmp_path / "grid" / "metrics.jsonl").read_text().splitlines()]
    assert [any(k.startswith("mix_") for k in r["test"]) for r in rows] == [False, True]  # final round only
    assert rows[1]["bytes_down"] > rows[0]["bytes_down"]  # the grid's rows went down with it


def test_a_grid_without_a_blend_runs_the_gram_round_and_leaves_click_as_it_was(tmp_path):
    plain = run(compose(TINY), tmp_path / "plain")["metrics"]
    summary = run(compose(TINY + ["click_mix.grid_weight=[0.3]", "click_mix.grid_lam=[5]"]), tmp_path / "grid")
    assert summary["item_gram_bytes_up"] > 0
    assert summary["metrics"]["click.ndcg@10"] == plain["click.ndcg@10"]
    assert summary["metrics"]["mix_w0.3_lam5/click.ndcg@10"] != plain["click.ndcg@10"]


@pytest.mark.parametrize("backend", ["inprocess", "cohort"])
def test_rows_of_b_sent_a_chunk_of_clients_at_a_time_give_the_same_run(tmp_path, monkeypatch, backend):
    """The server attaches B's rows to a few evaluation messages at a time and drops them once
    answered (memory: one chunk's rows, not every client's, where the rows leave the process):
    the same metrics and bytes, and each send holds no more rows than the chunk allows. An
    in-process grid, whose messages keep the rows as rows of the matrix, takes each evaluation in
    one send."""
    from fedmtl.engine.inprocess import InProcessGrid
    from fedmtl.federation import server_app

    over = TINY + ["click_mix.weight=0.6", "click_mix.lam=5", f"backend={backend}"]
    sends = []
    real = server_app.ItemItem.attach
    monkeypatch.setattr(server_app.ItemItem, "attach", lambda self, msgs, final: sends.append(len(msgs))
                        or real(self, msgs, final))
    whole = run(compose(over), tmp_path / "whole")
    assert sends == [6, 6]  # 6 clients, 2 evaluations: one send each
    sends.clear()
    n_items = federation_for(compose(TINY)).meta["n_items"]
    biggest = max(len(items) for items in client_items(compose(TINY)))
    monkeypatch.setattr(server_app.ItemItem, "CHUNK_BYTES", 2 * biggest * n_items * 4)
    monkeypatch.setattr(InProcessGrid, "eval_rows_bytes", None)  # the bound a grid that sends the rows has
    chunked = run(compose(over), tmp_path / "chunked")
    assert chunked["metrics"] == whole["metrics"]
    assert chunked["bytes_down_total"] == whole["bytes_down_total"]
    assert len(sends) > 2 and max(sends) <= 2 and sum(sends) == 6 * 2  # 6 clients, 2 evaluations


def test_the_servers_gram_in_the_clear_is_the_exact_sum_of_the_parts(monkeypatch):
    """Parts in the clear are whole counts: the server adds them in float32 (exact below 2^24) and
    solves EASE on the float64 Gram, the very matrix the pooled data gives, bit for bit."""
    from fedmtl.federation import click_mix

    cfg = compose(TINY + ["click_mix.weight=0.5", "click_mix.lam=5"])
    seen = []
    real = click_mix.ItemItem.__init__
    monkeypatch.setattr(click_mix.ItemItem, "__init__", lambda self, c, g, *a, **k: seen.append(g) or real(self, c, g, *a, **k))
    item_item_round(InProcessGrid(make_client_app(cfg), 6), cfg, build_strategy(cfg))
    want = gram(federation_for(cfg).all_data().train_mask())
    assert seen[0].dtype == np.float64 and np.array_equal(seen[0], want)
