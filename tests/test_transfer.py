"""Transfer from the federated encoder: new users cold-started per k, new items scored from
their features, learning curves compared by rounds to a target."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.errors import ConfigError
from fedmtl.metrics import combine
from fedmtl.model import build_model, saved as saved_model
from fedmtl.simulate import run
from fedmtl.train import evaluate
from fedmtl.transfer import cli, curves, new_items, new_users

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=4", "device=cpu"]
TASKS = ["rating", "click", "like"]


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    cfg = compose(TINY + ["transfer.new_users=0.2", "transfer.new_items=0.2", "transfer.k=[0,1,5]",
                          "transfer.epochs=5"])
    out = tmp_path_factory.mktemp("cold")
    summary = run(cfg, out)
    return cfg, out, summary


def test_every_new_user_is_scored_at_every_k_including_zero(cold):
    cfg, out, summary = cold
    rep = json.loads((out / "transfer.json").read_text())["new_users"]
    assert rep["users"] == 12 and rep["k"] == [0, 1, 5]
    for start in ("transfer", "scratch"):
        for k in ("0", "1", "5"):
            for key in ("rating.rmse", "like.auc", "click.hr@10", "click.ndcg@10"):
                assert math.isfinite(rep[start][k][key]), (start, k, key)
    assert summary["transfer"]["new_users"]["transfer"][0] == pytest.approx(rep["transfer"]["0"])
    assert "| 0 | transfer |" in (out / "transfer.md").read_text()


def test_with_k_0_a_new_user_gets_scores_from_its_features(cold):
    cfg, out, _ = cold
    fed = federation_for(cfg)
    u = int(fed.holdout.users[0])
    final = saved_model.load(out).arrays
    model = build_model(cfg["model"], TASKS, 1, fed.dataset.user_cat[[u]], fed.meta, cfg["seed"])
    from fedmtl.model import set_arrays
    set_arrays(model, final)
    with torch.no_grad():
        model.personal.user_emb.weight.zero_()  # what a new user starts from
        scores = model.all_item_scores(torch.tensor([0]), "click")[0]
        other = build_model(cfg["model"], TASKS, 1, (fed.dataset.user_cat[[u]] + 1) % np.array(fed.dataset.user_cards), fed.meta, cfg["seed"])
        set_arrays(other, final)
        other.personal.user_emb.weight.zero_()
        other_scores = other.all_item_scores(torch.tensor([0]), "click")[0]
    assert torch.isfinite(scores).all() and scores.std() > 0
    assert not torch.allclose(scores, other_scores)  # its features, not one list for everyone


def test_the_trained_encoder_beats_the_untrained_one_for_new_users_without_their_data(cold):
    _, out, _ = cold
    rep = json.loads((out / "transfer.json").read_text())["new_users"]
    assert rep["transfer"]["0"]["rating.rmse"] < rep["scratch"]["0"]["rating.rmse"]
    assert rep["transfer"]["0"]["like.auc"] > rep["scratch"]["0"]["like.auc"]


def test_fine_tuning_a_new_user_leaves_the_encoder_unchanged(cold):
    cfg, _, _ = cold
    fed = federation_for(cfg)
    u = int(fed.holdout.users[0])
    rows = fed.holdout.user_log[fed.holdout.user_log["user"] == u]
    model = build_model(cfg["model"], TASKS, 1, fed.dataset.user_cat[[u]], fed.meta, cfg["seed"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    new_users.fine_tune(model, new_users._one_user_data(rows, fed.dataset.user_cat[[u]], 40, 5, 5), cfg, 5, seed=0)
    after = dict(model.named_parameters())
    for n, p in before.items():
        if n.startswith("encoder."):
            assert torch.equal(p, after[n]), n
    assert not torch.equal(before["personal.user_emb.weight"], after["personal.user_emb.weight"])
    assert torch.equal(before["personal.heads.rating.proj"], after["personal.heads.rating.proj"])  # tune=user
    new_users.fine_tune(model, new_users._one_user_data(rows, fed.dataset.user_cat[[u]], 40, 5, 5),
                       dict(cfg, transfer=dict(cfg["transfer"], tune="personal")), 5, seed=0)
    assert not torch.equal(before["personal.heads.rating.proj"], after["personal.heads.rating.proj"])
    for n, p in before.items():
        if n.startswith("encoder."):
            assert torch.equal(p, after[n]), n


def test_new_items_are_reported_apart_and_scored_from_features(cold):
    cfg, out, summary = cold
    m = summary["metrics"]
    for rows in ("new_items", "known_items"):
        for key in ("rating.rmse", "like.auc", "click.ndcg@10"):
            assert math.isfinite(m[f"{rows}/{key}"])
    rep = json.loads((out / "transfer.json").read_text())["new_items"]
    # Popularity has never seen a new item: it cannot place one in anybody's top 10.
    assert rep["popularity"]["new_items/click.hr@10"] == 0.0
    assert m["new_items/click.hr@10"] > 0.0


def test_grouped_metric_parts_combine_like_their_subset():
    cfg = compose(TINY)
    fed = federation_for(cfg)
    data = fed.partition_data(0)
    model = build_model(cfg["model"], TASKS, len(data.users), data.user_cat, fed.meta, 0)
    items = np.arange(0, 40, 3)
    parts = new_items.item_parts(model, data, TASKS, items)
    sel = torch.as_tensor(np.isin(data.test_i.numpy(), items))
    from dataclasses import replace
    direct = combine([evaluate(model, replace(data, test_u=data.test_u[sel], test_i=data.test_i[sel],
                                              test_r=data.test_r[sel]), TASKS)])
    grouped = combine([parts])
    for k, v in direct.items():
        assert grouped[f"new_items/{k}"] == pytest.approx(v, nan_ok=True)


def test_every_client_sends_the_same_metric_keys_with_or_without_new_items():
    cfg = compose(TINY)
    fed = federation_for(cfg)
    data = fed.partition_data(0)
    model = build_model(cfg["model"], TASKS, len(data.users), data.user_cat, fed.meta, 0)
    some = new_items.item_parts(model, data, TASKS, data.test_i[:1].numpy())
    none = new_items.item_parts(model, data, TASKS, np.array([10_000]))
    assert some.keys() == none.keys() and none["new_items/click.n"] == 0
    assert combine([none, some])["new_items/rating.rmse"] == pytest.approx(combine([some])["new_items/rating.rmse"])


def test_rounds_to_target_and_the_curves_table(tmp_path, capsys):
    for name, vals in (("a", [0.1, 0.25, 0.3]), ("b", [0.05, 0.1, 0.15])):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.jsonl").write_text("".join(json.dumps({"round": r + 1, "test": {"click.ndcg@10": v}}) + "\n"
                                                 for r, v in enumerate(vals)))
    assert curves.rounds_to_target(curves.read_curve(tmp_path / "a", "click.ndcg@10"), 0.2) == 2
    assert curves.rounds_to_target([(1, 1.2), (2, 0.95)], 1.0, larger_is_better=False) == 2
    cli.main(["curves", f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--target", "0.2",
                   "--plot", str(tmp_path / "c.png")])
    text = capsys.readouterr().out
    assert "| a | 2 | 0.3000 | 0.3000 |" in text and "| b | not reached | 0.1500 |" in text
    assert (tmp_path / "c.png").stat().st_size > 0


@pytest.mark.parametrize("override, message", [
    ("transfer.new_users=1.5", "transfer.new_users"),
    ("transfer.new_items=-0.1", "transfer.new_items"),
    ("transfer.k=[0,-1]", "transfer.k"),
    ("transfer.epochs=0", "transfer.epochs"),
])
def test_bad_transfer_values_are_one_clear_line(override, message):
    with pytest.raises(ConfigError, match=message):
        compose(TINY + [override])


def test_a_frozen_encoder_with_a_gradient_weighting_is_refused():
    with pytest.raises(ConfigError, match="freeze_encoder"):
        compose(TINY + ["init.freeze_encoder=true", "weighting=pcgrad"])


def test_a_finished_run_can_be_re_evaluated_with_other_k(cold, capsys):
    _, out, _ = cold
    cli.main(["evaluate", str(out), "--name", "again", "transfer.k=[0,5]", "transfer.tune=personal"])
    again = json.loads((out / "again.json").read_text())["new_users"]
    first = json.loads((out / "transfer.json").read_text())["new_users"]
    assert again["k"] == [0, 5] and again["tune"] == "personal" and first["tune"] == "user"
    # Same users, same encoder, same rows scored (after the first max k): k=0 is unchanged...
    assert again["transfer"]["0"] == pytest.approx(first["transfer"]["0"])
    # ... and tuning the heads as well changes what k=5 gives.
    assert again["transfer"]["5"]["rating.rmse"] != pytest.approx(first["transfer"]["5"]["rating.rmse"])
    assert "| 5 | transfer |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["evaluate", str(out), "num_rounds=3"])


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_the_baselines_hide_new_items_and_report_them_apart(tmp_path, mode):
    cfg = compose(TINY + [f"mode={mode}", "baseline_epochs=2", "transfer.new_items=0.2"])
    summary = run(cfg, tmp_path)
    assert math.isfinite(summary["metrics"]["new_items/click.ndcg@10"])
    assert math.isfinite(summary["metrics"]["known_items/rating.rmse"])


def test_new_users_start_from_the_aggregated_heads_where_the_checkpoint_has_them(cold):
    cfg, out, _ = cold
    fed = federation_for(cfg)
    final = saved_model.load(out).arrays  # aggregate=encoder: no heads, fresh ones
    assert not any(k.startswith("personal.") for k in final)
    prior = dict(final, **{"personal.heads.rating.offset": np.array(1.0, np.float32)})
    plain = new_users.cold_start(cfg, fed, final, [0], 1, seed=0)[0]
    with_prior = new_users.cold_start(cfg, fed, prior, [0], 1, seed=0)[0]
    assert with_prior["rating.rmse"] > plain["rating.rmse"] + 0.5  # an offset of 1 instead of 3.5 shows


def test_the_transfer_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # init.from of step 2 is relative: no earlier run here
    path = "dataset.path=/nowhere/ml-100k"  # composing never reads the data
    cold = compose(["experiment=transfer_cold_ml100k", path])
    assert (cold["transfer"]["new_users"], cold["transfer"]["new_items"], cold["aggregate"]) == (0.1, 0.1, "all")
    assert cold["transfer"]["k"] == [0, 1, 5, 10, 20] and cold["num_clients"] == 943 - 94
    source = compose(["experiment=newtask_source_ml100k", path])
    assert source["tasks"] == ["rating", "like"]
    # Step 2 names step 1's run folder; before step 1 has run, that is one clear line.
    with pytest.raises(ConfigError, match="init.from=outputs/transfer/newtask_source: no model_shared.pt"):
        compose(["experiment=newtask_click_ml100k", path])
    assert compose(["experiment=newtask_click_ml100k", path, "init.from=null"])["tasks"] == ["click"]
