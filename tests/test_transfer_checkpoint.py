"""Checkpoints: a run's final shared encoder reloads into the same predictions, `init.from`
starts a run from it (tasks may differ), and `init.freeze_encoder` keeps it as loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.errors import ConfigError
from fedmtl.federation.server_app import initial_arrays
from fedmtl.model import build_model, get_arrays, saved as saved_model, set_arrays, shared_names
from fedmtl.simulate import run

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=2", "device=cpu"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny federated run on rating and like with aggregate=all (heads in the checkpoint)."""
    cfg = compose(TINY + ["tasks=[rating,like]", "aggregate=all", "model=mmoe"])
    out = tmp_path_factory.mktemp("source")
    run(cfg, out)
    return cfg, out


def test_a_run_folder_holds_the_encoder_and_how_to_rebuild_it(source):
    cfg, out = source
    info = json.loads((out / saved_model.CONFIG_FILE).read_text())
    assert info["model"] == cfg["model"] and info["tasks"] == ["rating", "like"] and info["aggregate"] == "all"
    assert info["n_items"] == 40 and info["rounds"] == 2
    state = torch.load(out / saved_model.SHARED_FILE)
    assert "personal.heads.like.proj" in state  # aggregate=all: the heads are shared, a prior for newcomers
    assert not any(k.startswith("personal.user_") for k in state)  # never a user's own parameters


def test_a_checkpoint_round_trips_to_the_same_predictions(source):
    cfg, out = source
    fed = federation_for(cfg)
    data = fed.partition_data(0)
    ckpt = saved_model.load(out)
    # The model a client holds at the end: the server's arrays and its own user parameters.
    original = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, 123)
    set_arrays(original, {k: v.copy() for k, v in ckpt.arrays.items()})
    rebuilt = saved_model.rebuild(saved_model.load(out / saved_model.SHARED_FILE), fed.meta, len(data.users),
                                 data.user_cat)
    users = ["personal.user_emb.weight", "personal.user_bias.weight"]
    set_arrays(rebuilt, get_arrays(original, users))
    u, i = data.test_u, data.test_i
    for task, s in original.pair_scores(u, i).items():
        assert torch.equal(s, rebuilt.pair_scores(u, i)[task]), task
    users_t = torch.arange(len(data.users))
    assert torch.equal(original.all_item_scores(users_t, "like"), rebuilt.all_item_scores(users_t, "like"))
    # ... and the checkpoint is not the untrained model (a test that could not fail would prove nothing).
    fresh = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, cfg["seed"])
    assert not torch.equal(fresh.encoder.item_emb.weight, rebuilt.encoder.item_emb.weight)


def test_init_from_starts_the_run_from_the_checkpoint(source):
    _, out = source
    cfg = compose(TINY + ["tasks=[rating,like]", "aggregate=all", "model=mmoe", f"init.from={out}"])
    start = {k: v.numpy() for k, v in initial_arrays(cfg).items()}
    saved = saved_model.load(out).arrays
    assert start.keys() == saved.keys()
    for k in saved:
        np.testing.assert_array_equal(start[k], saved[k], err_msg=k)


def test_a_new_task_takes_what_the_checkpoint_has_for_it_and_keeps_the_rest_fresh(source):
    _, out = source
    cfg = compose(TINY + ["tasks=[like,click]", "aggregate=all", "model=mmoe", f"init.from={out}"])
    start = {k: v.numpy() for k, v in initial_arrays(cfg).items()}
    saved = saved_model.load(out).arrays  # tasks [rating, like]
    fed = federation_for(cfg)
    fresh = get_arrays(build_model(cfg["model"], cfg["tasks"], 1, np.zeros((1, 2), np.int64), fed.meta,
                                   cfg["seed"]), list(start))
    np.testing.assert_array_equal(start["encoder.item_emb.weight"], saved["encoder.item_emb.weight"])
    # like is task 1 in the checkpoint and task 0 here; click is new.
    np.testing.assert_array_equal(start["encoder.user_tower.gates.0.weight"], saved["encoder.user_tower.gates.1.weight"])
    np.testing.assert_array_equal(start["encoder.user_tower.gates.1.weight"], fresh["encoder.user_tower.gates.1.weight"])
    np.testing.assert_array_equal(start["encoder.item_bias.weight"][:, 0], saved["encoder.item_bias.weight"][:, 1])
    np.testing.assert_array_equal(start["encoder.item_bias.weight"][:, 1], fresh["encoder.item_bias.weight"][:, 1])
    np.testing.assert_array_equal(start["personal.heads.like.proj"], saved["personal.heads.like.proj"])
    np.testing.assert_array_equal(start["personal.heads.click.proj"], fresh["personal.heads.click.proj"])


def test_a_frozen_encoder_leaves_the_federation_as_it_came(source, tmp_path):
    _, out = source
    cfg = compose(TINY + ["tasks=[like]", "model=mmoe", f"init.from={out}", "init.freeze_encoder=true"])
    run(cfg, tmp_path)
    before, after = saved_model.load(out).arrays, saved_model.load(tmp_path).arrays
    model = build_model(cfg["model"], cfg["tasks"], 1, np.zeros((1, 2), np.int64), federation_for(cfg).meta, 0)
    names = shared_names(model, "encoder")
    assert set(after) == set(names)
    for k in names:
        if k == "encoder.item_bias.weight":
            np.testing.assert_allclose(after[k][:, 0], before[k][:, 1], rtol=0, atol=1e-7)
        else:  # like is task 1 of the source: its gates are gates.1 there
            src = saved_model.source_name(k, ["like"], ["rating", "like"])
            np.testing.assert_allclose(after[k], before[src], rtol=0, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("override, message", [
    ("init.from=/nonexistent/run", "no model_shared.pt"),
    ("init.freeze_encoder=maybe", "init.freeze_encoder"),
])
def test_bad_init_values_are_one_clear_line(override, message):
    with pytest.raises(ConfigError, match=message):
        compose(TINY + [override])


def test_a_checkpoint_of_another_model_is_refused(source):
    _, out = source
    with pytest.raises(ConfigError, match="model.dim"):
        initial_arrays(compose(TINY + ["model=mmoe", "model.dim=8", f"init.from={out}"]))


def test_a_frozen_encoder_run_is_batched_as_the_client_app_runs_it(source, tmp_path):
    """backend=cohort (the default) trains only what is outside the encoder under
    init.freeze_encoder, as local_rounds does: the same figures as backend=inprocess."""
    from fedmtl.cohort import unbatched

    _, out = source
    over = TINY + ["tasks=[like,rating]", "model=mmoe", f"init.from={out}", "init.freeze_encoder=true", "save_model=false"]
    assert unbatched(compose(over)) == []
    got = {b: run(compose([*over, f"backend={b}"]), tmp_path / b)["metrics"] for b in ("cohort", "inprocess")}
    assert got["cohort"].keys() == got["inprocess"].keys()
    for k, v in got["inprocess"].items():
        assert got["cohort"][k] == pytest.approx(v, rel=1e-4, abs=1e-4), k
