"""split=leave_one_out (fedmtl/data/loo.py): the published protocol's split, its sampled
candidates, their metrics and the validation-selected round."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedmtl import metrics as M
from fedmtl.config import compose, validate
from fedmtl.data import loo
from fedmtl.data.dataset import Dataset
from fedmtl.errors import ConfigError, DataError


def log(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).astype(
        {"user": np.int64, "item": np.int64, "rating": np.float32, "ts": np.int64})


def pairs(df) -> list[tuple[int, int]]:
    return sorted(zip(df["user"].tolist(), df["item"].tolist()))


# user 0: items 5 (ts 30), 6 (ts 10), 7 (ts 30), 8 (ts 20): latest ts 30 twice -> the earlier line (5)
#   is test (as pandas' rank(method='first', ascending=False) in PFedRec's code), 7 validation, 6 and 8 train.
# user 1: 1 (ts 50), 2 (ts 40), 3 (ts 40), 4 (ts 60): test 4, then ts 50 -> validation 1.
# user 2: 9 and 10 only: fewer than 3 interactions, dropped.
RULE_LOG = [(0, 5, 4, 30), (1, 1, 3, 50), (0, 6, 2, 10), (1, 2, 5, 40), (0, 7, 1, 30), (2, 9, 4, 1),
            (1, 3, 4, 40), (0, 8, 5, 20), (1, 4, 2, 60), (2, 10, 3, 2)]


def test_latest_is_test_second_latest_is_validation_ties_by_file_order(caplog):
    sp = loo.leave_one_out(log(RULE_LOG))
    assert pairs(sp.test) == [(0, 5), (1, 4)]
    assert pairs(sp.valid) == [(0, 7), (1, 1)]
    assert pairs(sp.train) == [(0, 6), (0, 8), (1, 2), (1, 3)]
    assert "1 users with fewer than 3 interactions dropped" in caplog.text
    # ratings travel with their rows (every rating a positive; rating and like still scored on them)
    assert sp.test.set_index("item")["rating"].to_dict() == {5: 4.0, 4: 2.0}


def test_ties_follow_file_order_not_item_id():
    # the same log with user 0's two ts-30 lines swapped: now 7 comes first in the file, so test
    swapped = [RULE_LOG[4], *RULE_LOG[1:4], RULE_LOG[0], *RULE_LOG[5:]]
    sp = loo.leave_one_out(log(swapped))
    assert (0, 7) in pairs(sp.test) and (0, 5) in pairs(sp.valid)
    # the published code's own rule, pandas' rank(method='first', ascending=False), agrees
    df = log(swapped)
    rank = df.groupby("user")["ts"].rank(method="first", ascending=False)
    assert pairs(df[(rank == 1) & (df["user"] < 2)]) == pairs(sp.test)
    assert pairs(df[(rank == 2) & (df["user"] < 2)]) == pairs(sp.valid)


def tiny_split(n_items=300):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(6):
        items = rng.choice(n_items, size=20 + 10 * u, replace=False)
        rows += [(u, int(i), 4, t) for t, i in enumerate(items)]
    return loo.leave_one_out(log(rows)), log(rows)


def test_candidates_are_99_distinct_never_interacted_negatives_after_the_held_out_item():
    sp, full = tiny_split()
    cand = loo.draw_candidates(sp, 300, 6, 99, seed=4)
    seen = full.groupby("user")["item"].agg(set)
    for u in range(6):
        for part in ("test", "valid"):
            row = cand[part][u]
            assert row.shape == (100,)
            assert row[0] == getattr(sp, part).set_index("user").loc[u, "item"]
            neg = set(row[1:].tolist())
            assert len(neg) == 99 and not neg & seen[u]
        assert not set(cand["test"][u, 1:]) & set(cand["valid"][u, 1:])  # 99 other ones for validation


def test_candidates_are_the_same_for_the_same_seed_and_differ_for_another():
    sp, _ = tiny_split()
    a, b, c = (loo.draw_candidates(sp, 300, 6, 99, seed=s) for s in (4, 4, 5))
    assert all(np.array_equal(a[p], b[p]) for p in ("test", "valid"))
    assert not np.array_equal(a["test"], c["test"])


def test_too_few_unseen_items_for_the_negatives_is_one_clear_error():
    sp, _ = tiny_split(n_items=250)  # user u saw 20 + 10u items: user 3 leaves 200 unseen, user 4 190 < 198
    with pytest.raises(DataError, match=r"eval.negatives=99: user 4 has only 190 items it never interacted"):
        loo.draw_candidates(sp, 250, 6, 99, seed=0)


# --- HR@10 / NDCG@10 among the candidates --------------------------------------------------


def test_sampled_hr_and_ndcg_by_hand_with_negatives_ahead_on_a_tie():
    scores = torch.tensor([
        [0.0, 5.0, 1.0, 2.0, 5.0, 9.0],   # held-out 1 (5.0): negatives 4 (5.0, tie: ahead), 5 (9.0) -> rank 3
        [0.0, 9.0, 1.0, 2.0, 3.0, 4.0],   # held-out 1 beats every negative -> rank 1
        [7.0, 1.0, 2.0, 3.0, 4.0, 5.0],   # held-out 1 (1.0) below its 4 negatives 0, 2, 3, 4 -> rank 5
    ])
    cand = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 0, 2, 3, 4]])
    hr, nd = M.sampled_rank_metrics(scores, cand, k=10)
    assert hr.tolist() == [1.0, 1.0, 1.0]
    assert nd == pytest.approx([1 / math.log2(4), 1.0, 1 / math.log2(6)])
    hr, nd = M.sampled_rank_metrics(scores, cand, k=2)  # ranks 3 and 5 fall outside the top 2
    assert hr.tolist() == [0.0, 1.0, 0.0] and nd.tolist() == [0.0, 1.0, 0.0]
    # all tied: the 4 negatives rank ahead -> rank 5, in the top 10, NDCG 1/log2(6)
    hr, nd = M.sampled_rank_metrics(torch.zeros(1, 6), torch.tensor([[1, 2, 3, 4, 5]]), k=10)
    assert hr.tolist() == [1.0] and nd == pytest.approx([1 / math.log2(6)])
    # a row of -1 (no held-out item) scores 0
    hr, nd = M.sampled_rank_metrics(torch.zeros(1, 6), torch.full((1, 5), -1), k=10)
    assert hr.tolist() == [0.0] and nd.tolist() == [0.0]


# --- the reported round ----------------------------------------------------------------------


def test_the_reported_round_is_the_best_validation_hr_not_the_last():
    rows = [{"round": 1, "train": {}},
            {"round": 2, "test": {"click.hr@10": 0.50, "valid/click.hr@10": 0.60}},
            {"round": 4, "test": {"click.hr@10": 0.55, "valid/click.hr@10": 0.70}},
            {"round": 6, "test": {"click.hr@10": 0.90, "valid/click.hr@10": 0.65}},
            {"round": 8, "test": {"click.hr@10": 0.52, "valid/click.hr@10": 0.70}},  # a tie: the later wins
            {"round": 10, "test": {"click.hr@10": 0.99, "valid/click.hr@10": 0.66}}]
    rep = loo.reported(rows, rows[-1]["test"], "valid/click.hr@10")
    assert rep["selected_round"] == 8 and rep["metrics"]["click.hr@10"] == 0.52
    assert rep["metrics_last"]["click.hr@10"] == 0.99 and rep["selected_by"] == "valid/click.hr@10"


def test_a_leave_one_out_run_writes_split_candidates_and_the_selected_round(tmp_path):
    from fedmtl.data import build_federation
    from fedmtl.simulate import run

    cfg = validate(compose(["split=leave_one_out", "mode=centralized", "num_clients=4", "dataset.n_users=12",
                            "dataset.n_items=260", "dataset.mean_interactions=12", "baseline_epochs=3",
                            "eval_every=1", "tasks=[click,rating]", "model.dim=8", "save_model=false",
                            "click_mix.grid_weight=[0,0.5]", "click_mix.grid_lam=[100]"]))
    summary = run(cfg, tmp_path)
    fed = build_federation(cfg)
    split = tmp_path / "split"
    for p in ("test", "valid"):
        lines = [list(map(int, ln.split("\t"))) for ln in (split / f"{p}_candidates.tsv").read_text().splitlines()]
        assert len(lines) == 12 and all(len(x) == 101 for x in lines)
        users = [x[0] for x in lines]
        assert np.array_equal(np.array([x[1:] for x in lines]), fed.split.candidates[p][users])
    valid = pd.read_csv(split / "valid.tsv", sep="\t", header=None)
    assert len(valid) == 12 and set(valid[0]) == set(range(12))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all({"click.hr@10", "valid/click.hr@10"} <= set(r["test"]) for r in rows)
    # the final evaluation scores the click_mix grid on validation too (a blend is chosen there, not on test)
    for w in (0, 0.5):
        assert {f"mix_w{w:g}_lam100/click.hr@10", f"valid_mix_w{w:g}_lam100/click.hr@10"} <= set(rows[-1]["test"])
    best = max(rows, key=lambda r: (r["test"]["valid/click.hr@10"], r["round"]))
    assert summary["selected_round"] == best["round"]
    assert summary["metrics"] == pytest.approx(best["test"])
    assert json.loads((tmp_path / "summary.json").read_text())["selected_round"] == best["round"]
    # the run reads its own split folder back: the same split and candidates
    again = build_federation(validate(compose(["split=leave_one_out", f"split.path={split}", "num_clients=4",
                                               "dataset.n_users=12", "dataset.n_items=260",
                                               "dataset.mean_interactions=12", "tasks=[click,rating]"])))
    for p in ("test", "valid"):
        assert np.array_equal(again.split.candidates[p], fed.split.candidates[p])
    assert pairs(again.split.valid) == pairs(fed.split.valid)


@pytest.mark.parametrize("overrides, message", [
    (["tasks=[rating,like]"], r"split=leave_one_out with tasks=.*add one \(click\)"),
    (["split.validation=true"], "it holds its own validation item"),
    (["eval.negatives=0"], "eval.negatives"),
])
def test_leave_one_out_refusals_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(["split=leave_one_out", *overrides]))


def test_a_candidate_file_with_a_wrong_held_out_item_names_its_line(tmp_path):
    sp, full = tiny_split()
    ds = Dataset(name="tiny", interactions=full, n_users=6, n_items=300, user_cat=np.zeros((6, 1), np.int64),
                 user_cards=[1], item_cat=np.zeros((300, 1), np.int64), item_cards=[1],
                 item_multi=np.zeros((300, 1), np.float32))
    sp.candidates = loo.draw_candidates(sp, 300, 6, 99, seed=0)
    from fedmtl.data import split as split_mod
    split_mod.write(sp, ds, tmp_path)
    back = split_mod.read_candidates(tmp_path, ds, sp)
    assert all(np.array_equal(back[p], sp.candidates[p]) for p in ("test", "valid"))
    lines = (tmp_path / "test_candidates.tsv").read_text().splitlines()
    f = lines[2].split("\t")
    f[1] = f[2]  # a negative named as the held-out item
    lines[2] = "\t".join(f)
    (tmp_path / "test_candidates.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test_candidates.tsv:3: held-out item .* is not user 2's test item"):
        split_mod.read_candidates(tmp_path, ds, sp)


def test_the_published_protocol_presets_are_the_readme_recipes_on_the_leave_one_out_split():
    path = "dataset.path=/nowhere/ml-100k"  # composing never reads the data
    fed, cent = compose(["experiment=ml100k_federated", path]), compose(["experiment=ml100k_centralized", path])
    for preset, base, tasks in (("ml100k_loo_click", fed, ["click"]),
                                ("ml100k_loo_multitask", fed, ["rating", "click", "like"]),
                                ("ml100k_loo_centralized", cent, ["rating", "click", "like"])):
        cfg = compose([f"experiment={preset}", path])
        assert cfg["split"]["name"] == "leave_one_out" and cfg["eval"]["negatives"] == 99
        assert cfg["tasks"] == tasks
        assert {k for k in base if cfg.get(k) != base[k]} <= {"split", "tasks", "eval", "click_mix"}, preset
        # the recipe's blend, plus the sequence score (the protocol's held-out items are the latest)
        assert cfg["click_mix"] == {**base["click_mix"], "seq_weight": 0.5}, preset


def test_a_federated_leave_one_out_run_saves_the_model_of_the_round_it_reports(tmp_path):
    """The model file is the selected round's (best validation HR@10), not the last round's:
    it equals the saved model of the same run stopped at that round."""
    from fedmtl.simulate import run

    base = ["split=leave_one_out", "num_clients=6", "dataset.n_users=12", "dataset.n_items=260",
            "dataset.mean_interactions=14", "eval_every=1", "tasks=[click,rating]", "model.dim=8",
            "train.lr=0.2"]
    summary = run(validate(compose(base + ["num_rounds=6"])), tmp_path / "six")
    k = summary["selected_round"]
    saved = json.loads((tmp_path / "six" / "model_config.json").read_text())
    assert saved["rounds"] == k
    shorter = run(validate(compose(base + [f"num_rounds={k}"])), tmp_path / "k")
    assert shorter["selected_round"] == k
    a, b = (torch.load(tmp_path / d / "model_shared.pt", weights_only=True) for d in ("six", "k"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert k < 6, "this config's validation peaks before the last round (else the test shows less)"


def test_leave_one_out_selects_on_the_first_ranking_task_of_a_log(tmp_path):
    """A log's ranking task (synthetic_funnel's view) takes click's place: the round is chosen
    on valid/view.hr@10, and a run without a ranking task is refused in one line."""
    from fedmtl.simulate import run

    ov = ["dataset=synthetic_funnel", "dataset.n_users=60", "num_clients=4", "num_rounds=3", "eval_every=1",
          "split=leave_one_out", "eval.negatives=20", "save_model=false"]
    summary = run(validate(compose([*ov, "tasks=[view,click]"])), tmp_path)
    assert summary["selected_by"] == "valid/view.hr@10" and summary["selected_round"] in (1, 2, 3)
    with pytest.raises(ConfigError, match=r"split=leave_one_out with tasks=\['click'\]: its figures are a ranking "
                                          r"task's HR@10"):
        compose([*ov, "tasks=[click]"])
