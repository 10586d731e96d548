"""A behaviour column of an interaction log becomes a trained and evaluated task by config
alone: a log written here with a new 0/1 column (`share`, a name fedmtl has never heard of)
and an event label (every row a purchase) trains and scores both; `tasks` names only what
the data set offers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fedmtl.config import compose
from fedmtl.errors import ConfigError
from fedmtl.simulate import run
from fedmtl.tasks import REGISTRY, Binary, Ranking


def write_log(path, n_users=30, n_items=25, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, size=rng.integers(6, 12), replace=False)):
            # share depends on the item (items 0..9 get shared), so it can be learnt
            rows.append({"uid": f"u{u}", "iid": f"i{i}", "when": t, "share": int(i < 10 and rng.random() < 0.8),
                         "genre": f"g{i % 3}"})
    pd.DataFrame(rows).to_csv(path, index=False)


def log_overrides(path, tasks):
    return ["dataset=log", f"dataset.file={path}", "dataset.columns.user=uid", "dataset.columns.item=iid",
            "dataset.columns.timestamp=when",
            "++dataset.labels={share:{kind:binary,column:share},purchase:{kind:event}}",
            "++dataset.item_features={categorical:[genre]}",
            f"tasks=[{','.join(tasks)}]", "num_clients=3", "num_rounds=2", "local_epochs=1", "save_model=false"]


@pytest.mark.parametrize("backend", ["cohort", "inprocess"])
def test_new_binary_column_trains_and_evaluates(tmp_path, backend):
    write_log(tmp_path / "log.csv")
    cfg = compose([*log_overrides(tmp_path / "log.csv", ["share", "purchase"]), f"backend={backend}"])
    assert isinstance(REGISTRY["share"], Binary) and REGISTRY["share"].column == "share"
    assert isinstance(REGISTRY["purchase"], Ranking)
    summary = run(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    m = summary["metrics"]
    assert 0.0 <= m["share.auc"] <= 1.0 and m["share.logloss"] > 0
    assert 0.0 <= m["purchase.ndcg@10"] <= m["purchase.hr@10"] <= 1.0
    assert not any(k.startswith(("rating.", "like.", "click.")) for k in m)
    assert all(np.isfinite(r["train"]["loss.share"]) and np.isfinite(r["train"]["loss.purchase"]) for r in rows)
    # the binary task's test pairs are the log's test rows, its labels their share column
    split = pd.read_csv(tmp_path / "run" / "split" / "test.tsv", sep="\t", header=None)
    assert len(split) > 0


def test_share_label_is_the_column(tmp_path):
    """The labels the binary task trains on are the column's values (not the rating's)."""
    from fedmtl.data import federation_for

    write_log(tmp_path / "log.csv")
    cfg = compose(log_overrides(tmp_path / "log.csv", ["share"]))
    fed = federation_for(cfg)
    data = fed.all_data()
    assert fed.dataset.item_cards == [4] and fed.dataset.item_cat.max() == 3  # genre: 3 values + unknown
    raw = pd.read_csv(tmp_path / "log.csv")
    assert float(data.train_y["share"].sum() + data.test_y["share"].sum()) == float(raw["share"].sum())
    y = REGISTRY["share"].target(data.labels("train"))
    assert set(np.unique(y.numpy())) <= {0.0, 1.0} and float(y.sum()) == float(data.train_y["share"].sum())


def test_tasks_must_be_offered(tmp_path):
    write_log(tmp_path / "log.csv")
    with pytest.raises(ConfigError, match=r"tasks: unknown task 'rating'; expected a subset of \['share', 'purchase'\]"):
        compose(log_overrides(tmp_path / "log.csv", ["rating", "share"]))


def test_default_tasks_are_what_the_data_set_offers(tmp_path):
    """tasks=null (the default): a log's labels, in their order; a rating log's rating, click, like;
    a sparse-exchange check that reads the tasks sees the resolved ones."""
    write_log(tmp_path / "log.csv")
    over = [o for o in log_overrides(tmp_path / "log.csv", []) if not o.startswith("tasks=")]
    assert compose(over)["tasks"] == ["share", "purchase"]
    assert compose(["dataset=instacart_sample", "dataset.path=/nonexistent"])["tasks"] == ["purchase", "reordered"]
    assert compose([])["tasks"] == ["rating", "click", "like"]
    with pytest.raises(ConfigError, match="exchange.pad_rows=0 and train.click_loss=sampled"):
        compose([*over, "exchange=sparse", "exchange.pad_rows=0", "train.click_loss=sampled"])


def test_preset_offers_its_labels():
    with pytest.raises(ConfigError, match=r"unknown task 'click'; expected a subset of \['purchase', 'reordered'\] "
                                          r"\(the labels dataset=instacart_sample offers: set tasks=\[purchase,reordered\]"):
        compose(["dataset=instacart_sample", "dataset.path=/nonexistent", "tasks=[click]"])
    compose([])  # back on the rating log, the defaults are registered again
    assert set(REGISTRY) == {"rating", "click", "like"}


@pytest.mark.parametrize("labels", [
    ["purchase"],  # an every-row event: reads no label column
    ["share", "purchase"],  # a 0/1 column beside it
    ["minutes", "share"],  # a numeric column (each client's head starts at its own mean) and a 0/1 one
    ["minutes", "purchase", "aggregate=all"],  # shared heads: the numeric label's user biases start there
])
def test_cohort_batches_a_logs_tasks_as_inprocess_does(tmp_path, labels):
    """backend=cohort batches every task of an interaction log (its label columns travel with
    each client's pairs, permuted and padded like them); its figures are the per-client path's."""
    from fedmtl.cohort import unbatched

    rng = np.random.default_rng(2)
    write_log(tmp_path / "log.csv")
    raw = pd.read_csv(tmp_path / "log.csv")
    raw["minutes"] = 40 + 20 * rng.random(len(raw)) + raw["iid"].str[1:].astype(int) % 5
    raw.to_csv(tmp_path / "log.csv", index=False)
    specs = "share:{kind:binary,column:share},purchase:{kind:event},minutes:{kind:numeric,column:minutes}"
    knobs = [x for x in labels if "=" in x]
    labels = [x for x in labels if "=" not in x]
    over = [o if not o.startswith("++dataset.labels=") else "++dataset.labels={" + specs + "}"
            for o in log_overrides(tmp_path / "log.csv", labels)] + knobs
    got = {}
    for backend in ("cohort", "inprocess"):
        cfg = compose([*over, f"backend={backend}"])
        got[backend] = run(cfg, tmp_path / backend)["metrics"]
    assert unbatched(cfg) == []
    assert got["cohort"].keys() == got["inprocess"].keys()
    for k, v in got["inprocess"].items():
        assert got["cohort"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    if "minutes" in labels:
        assert got["cohort"]["minutes.rmse"] < 1.5 * float(raw["minutes"].std())


def write_recbole(folder, n_users=30, n_items=25, seed=0):
    """RecBole atomic files: NAME.inter with a rating and a clock, NAME.item with a genre."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, size=rng.integers(6, 12), replace=False)):
            lines.append(f"u{u}\ti{i}\t{1 + (i % 5)}\t{1000 + t}")
    (folder / f"{folder.name}.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\tgenre:token"] + [f"i{i}\tg{i % 3}" for i in range(n_items)]
    (folder / f"{folder.name}.item").write_text("\n".join(items) + "\n")


def test_recbole_files_become_tasks_from_their_header(tmp_path):
    """dataset=recbole: each :float column of NAME.inter is a regression task (rating), and
    `interaction` (every row) a ranking task; both train and are evaluated with no code."""
    write_recbole(tmp_path / "toy")
    base = ["dataset=recbole", f"dataset.path={tmp_path / 'toy'}", "num_clients=3", "num_rounds=2",
            "local_epochs=1", "save_model=false"]
    summary = run(compose([*base, "tasks=[rating,interaction]"]), tmp_path / "run")
    m = summary["metrics"]
    assert m["rating.rmse"] > 0 and 0.0 < m["interaction.ndcg@10"] <= m["interaction.hr@10"] <= 1.0
    assert isinstance(REGISTRY["interaction"], Ranking)
    with pytest.raises(ConfigError, match="like"):
        compose([*base, "tasks=[like]"])
    with pytest.raises(ConfigError, match="dataset.path: dataset=recbole needs its folder"):
        compose(["dataset=recbole", "tasks=[rating]"])


def test_the_synthetic_funnel_has_a_shops_sparsity_and_steps_that_follow_interest():
    from fedmtl.data import synthetic

    ds = synthetic.funnel(n_users=200, seed=0)
    i = ds.interactions
    rating = synthetic.generate(n_users=200, seed=0).interactions["rating"].to_numpy()  # the hidden interest
    click, cart, buy = (i[k].to_numpy() > 0 for k in ("click", "cart", "purchase"))
    assert (buy <= cart).all() and (cart <= click).all()  # a funnel: each step only after the one before
    assert abs(click.mean() - 0.3) < 0.01 and abs(cart.sum() / click.sum() - 0.3) < 0.02
    assert abs(buy.sum() / cart.sum() - 0.5) < 0.05
    assert rating[buy].mean() > rating[cart & ~buy].mean() > rating[click & ~cart].mean() > rating[~click].mean()
    with pytest.raises(ConfigError, match=r"dataset.cart_rate=0: expected a share in \(0, 1\]"):
        synthetic.funnel(n_users=50, cart_rate=0)


def test_the_synthetic_funnel_trains_every_step(tmp_path):
    """dataset=synthetic_funnel needs no files: view ranks, click and purchase (0/1 columns of
    4.5% positives) are learnt: each AUC ends above round 1's and above chance."""
    ov = ["dataset=synthetic_funnel", "dataset.n_users=200", "num_clients=10", "num_rounds=8", "eval_every=1",
          "save_model=false", "tasks=[view,click,purchase]"]
    run(compose(ov), tmp_path)
    rows = [json.loads(line)["test"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("click.auc", "purchase.auc", "view.ndcg@10"):
        assert rows[-1][key] > rows[0][key], key
    assert rows[-1]["click.auc"] > 0.6 and rows[-1]["purchase.auc"] > 0.6


@pytest.mark.parametrize("key", ["new_users", "new_items"])
def test_transfer_on_a_log_dataset_is_one_line(key):
    with pytest.raises(ConfigError, match=rf"^transfer.{key} with dataset=synthetic_funnel: cold-start evaluation "
                                          r".* not supported on interaction logs yet$"):
        compose(["dataset=synthetic_funnel", "tasks=[view,click]", f"transfer.{key}=0.1"])


def test_numeric_label_head_starts_at_each_clients_own_mean(tmp_path):
    """A log's numeric label (here minutes, about 50) has no public level like a rating's 3.5:
    each client's head starts at its own training labels' mean (local, never sent), so the first
    rounds' error is the label's spread, not its level."""
    from fedmtl.client_step import run_setup, set_first_offsets
    from fedmtl.data import federation_for
    from fedmtl.model import build_model

    rng = np.random.default_rng(1)
    rows = [{"uid": f"u{u}", "iid": f"i{i}", "when": t, "minutes": float(40 + 20 * rng.random() + i % 5)}
            for u in range(30) for t, i in enumerate(rng.choice(25, size=8, replace=False))]
    pd.DataFrame(rows).to_csv(tmp_path / "log.csv", index=False)
    over = ["dataset=log", f"dataset.file={tmp_path / 'log.csv'}", "dataset.columns.user=uid",
            "dataset.columns.item=iid", "dataset.columns.timestamp=when",
            "++dataset.labels={minutes:{kind:numeric,column:minutes}}", "num_clients=3", "num_rounds=2",
            "local_epochs=1", "save_model=false"]
    cfg = compose(over)
    fed = federation_for(cfg)
    data = fed.partition_data(1)
    model = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, cfg["seed"])
    set_first_offsets(model, cfg["tasks"], data)
    assert model.personal.heads["minutes"].offset.item() == pytest.approx(float(data.train_y["minutes"].mean()), rel=1e-5)
    assert run_setup(cfg).template(1)[0].personal.heads["minutes"].offset.item() == 0.0  # the shared template: no data
    spread = float(pd.DataFrame(rows)["minutes"].std())
    for mode in ("mode=federated", "mode=centralized", "mode=local", "aggregate=all", "backend=inprocess"):
        m = run(compose([*over, mode]), tmp_path / mode)["metrics"]
        assert m["minutes.rmse"] < 1.5 * spread, (mode, m["minutes.rmse"], spread)  # from 0 it is about 50


def test_a_numeric_labels_clip_bounds_its_scored_predictions(tmp_path):
    """labels.NAME.clip=[lo, hi]: the label's known range (as a rating's 1..5), applied to the
    predictions when they are scored; a bad range is one line."""
    from fedmtl.tasks import REGISTRY as TASKS

    write_log(tmp_path / "log.csv")
    base = [o for o in log_overrides(tmp_path / "log.csv", ["share"]) if not o.startswith(("++dataset.labels=", "tasks="))]
    compose([*base, "++dataset.labels={share:{kind:numeric,column:share,clip:[0,1]}}"])
    task = TASKS["share"]
    assert task.clip == (0.0, 1.0)
    s, y = torch.tensor([-3.0, 0.4, 7.0]), {"share": torch.tensor([0.0, 1.0, 1.0])}
    assert task.parts(s, y)["share.se"] == pytest.approx(0.6 ** 2)  # -3 -> 0 and 7 -> 1: no error; 0.4 off by 0.6
    for bad in ("[1,0]", "[0]", "[a,b]"):
        with pytest.raises(ConfigError, match=r"labels.share.clip=.*expected \[low, high\]"):
            compose([*base, f"++dataset.labels={{share:{{kind:numeric,column:share,clip:{bad}}}}}"])
    with pytest.raises(ConfigError, match=r"labels.share.clip=.*on a numeric label"):
        compose([*base, "++dataset.labels={share:{kind:binary,column:share,clip:[0,1]}}"])
