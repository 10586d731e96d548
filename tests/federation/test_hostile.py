"""fedmtl/federation/replies.py: a hostile client can neither crash nor corrupt a run.

Each case drives one tampering client (partition HOSTILE, node config `inject-reply=KIND`,
faults.inject_reply_mod) through a real two-round run on the in-process engine. The run
finishes, metrics.jsonl counts the client as `failed_by: invalid` in every round, a WARNING
names the node and the problem, and the final model is the one of the same run in which
that client fails every round (it raises instead of tampering): its reply left no trace.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedmtl.config import compose
from fedmtl.engine.nodes import NODE_ID_OFFSET
from fedmtl.errors import ConfigError
from fedmtl.federation import replies as rp
from fedmtl.federation.screening import validate_gram_part
from fedmtl.federation.failures import RoundFailure
from fedmtl.federation.faults import GRAM_FAULTS, INJECT_KEY, TRAIN_FAULTS
from fedmtl.runfiles import read_jsonl
from fedmtl.simulate import run

TINY = ["backend=inprocess", "dataset.n_users=40", "dataset.n_items=30", "num_clients=4", "num_rounds=2", "local_epochs=1",
        "device=cpu", "model.dim=8", "save_model=true", "checkpoint_every=0"]
HOSTILE = 2
NODE = NODE_ID_OFFSET + HOSTILE
SPARSE = ["exchange=sparse", "exchange.pad_rows=5"]
SETTINGS = {
    "dense": [],
    "sparse_f32": SPARSE + ["exchange.dtype=float32"],
    "sparse_int8": SPARSE + ["exchange.dtype=int8"],
    "gram": ["click_mix.weight=0.5", "click_mix.lam=5"],
    "norm": ["robust.max_update_norm=2"],  # honest updates here have norms near 0.37; "boost" x50 near 18
}
CASES = [  # (setting, inject-reply, what the log line must say)
    ("dense", "weight", "num-examples=1e+09 outside"),
    ("dense", "negative-weight", "num-examples=-5 outside"),
    ("dense", "nan", "NaN/inf"),
    ("dense", "shape", "sent as float32"),
    ("dense", "missing-key", "is missing"),
    ("dense", "extra-key", "encoder.backdoor was not sent"),
    ("sparse_f32", "nan", "::rows_delta holds 1 NaN/inf"),
    ("sparse_f32", "shape", "::rows_delta has shape"),
    ("sparse_f32", "row-negative", "row -1, outside"),
    ("sparse_f32", "row-past", "row 30, outside"),
    ("sparse_f32", "row-duplicate", "twice"),
    ("sparse_f32", "truncated", "::dense_delta has shape"),
    ("sparse_int8", "scale", "::rows_scale holds 1e+30"),
    ("sparse_int8", "nan", "NaN/inf"),
    ("sparse_int8", "weight", "num-examples=1e+09"),
    ("sparse_int8", "int8-min", "::rows_delta holds -128, outside the int8 code's -127..127"),
    ("norm", "boost", "> robust.max_update_norm=2"),
    ("gram", "gram-nan", "NaN/inf"),
    ("gram", "gram-negative", "negative count"),
    ("gram", "gram-asymmetric", "not symmetric"),
]


class Hostile:
    """The ClientApp, with partition HOSTILE tampering (`inject-reply=KIND`) or failing
    (`fail-train`, `fail-query`: it does its work, so its personal state moves on as a
    tampering client's does, then raises instead of replying to that message type)."""

    def __init__(self, app, kind: str):
        self.app, self.kind = app, kind

    def __call__(self, msg, ctx):
        if int(ctx.node_config["partition-id"]) != HOSTILE:
            return self.app(msg, ctx)
        if not self.kind.startswith("fail-"):
            ctx.node_config[INJECT_KEY] = self.kind
            return self.app(msg, ctx)
        reply = self.app(msg, ctx)
        if msg.metadata.message_type == self.kind[len("fail-"):]:
            raise RuntimeError("the hostile client fails instead")
        return reply


def hostile_run(monkeypatch, tmp_path, overrides: list[str], kind: str) -> tuple[dict, list[dict], dict]:
    """(summary, metrics.jsonl rows, final shared model) of a run with partition HOSTILE as `kind`."""
    import fedmtl.federation.client_app as ca

    real = ca.make_client_app
    with monkeypatch.context() as m:
        m.setattr(ca, "make_client_app", lambda cfg=None: Hostile(real(cfg), kind))
        out = tmp_path / kind
        summary = run(compose(TINY + overrides), out)
    model = {k: v.numpy() for k, v in torch.load(out / "model_shared.pt", weights_only=True).items()}
    return summary, read_jsonl(out / "metrics.jsonl"), model


@pytest.fixture(scope="module")
def baselines():
    return {}  # setting -> the run in which the hostile client fails every round


def test_every_injected_fault_has_a_case():
    assert {k for _, k, _ in CASES} == set(TRAIN_FAULTS) | set(GRAM_FAULTS)


@pytest.mark.parametrize("setting, kind, said", CASES, ids=[f"{s}-{k}" for s, k, _ in CASES])
def test_a_hostile_reply_is_a_failed_client_and_leaves_no_trace(setting, kind, said, monkeypatch, tmp_path,
                                                                baselines, caplog):
    gram = setting == "gram"
    if setting not in baselines:
        baselines[setting] = hostile_run(monkeypatch, tmp_path, SETTINGS[setting],
                                         "fail-query" if gram else "fail-train")
    base_summary, base_rows, base_model = baselines[setting]
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        summary, rows, model = hostile_run(monkeypatch, tmp_path, SETTINGS[setting], kind)
    assert summary["rounds"] == 2 and "stopped" not in summary["privacy"]
    bad = [r.getMessage() for r in caplog.records if f"node {NODE} sent an invalid" in r.getMessage()]
    assert bad and all(said in line for line in bad), (said, bad)
    if gram:  # once, before round 1; training is untouched
        assert len(bad) == 1 and "left out of the Gram" in bad[0]
        assert [r["failed_by"]["invalid"] for r in rows] == [0, 0]
    else:
        assert len(bad) == 2 and all(line.startswith(("round 1:", "round 2:")) for line in bad)
        assert [r["failed_by"]["invalid"] for r in rows] == [1, 1]
        assert [r["answered"] for r in rows] == [3, 3]
        assert [r["failed_by"]["error"] for r in base_rows] == [1, 1]  # the baseline really lost the client
    assert model.keys() == base_model.keys()
    for k in model:
        np.testing.assert_array_equal(model[k], base_model[k], err_msg=k)
    assert summary["metrics"] == base_summary["metrics"]


def test_the_server_s_own_checks_see_the_attack_a_run_without_them_would_take(monkeypatch, tmp_path):
    """The same boosted client under a bound that lets it through changes the model: the
    equality above is the checks' doing, not a client whose tampering had no effect."""
    _, _, base = hostile_run(monkeypatch, tmp_path, [], "fail-train")
    _, rows, boosted = hostile_run(monkeypatch, tmp_path, [], "boost")
    assert [r["failed_by"]["invalid"] for r in rows] == [0, 0]
    assert any(not np.array_equal(boosted[k], base[k]) for k in base)


def test_clip_scales_a_large_update_down_and_keeps_the_client(monkeypatch, tmp_path):
    _, _, base = hostile_run(monkeypatch, tmp_path, ["robust.max_update_norm=2"], "fail-train")
    _, rows, clipped = hostile_run(monkeypatch, tmp_path, ["robust.max_update_norm=2", "robust.on_large_update=clip"],
                                   "boost")
    assert [r["clipped"] for r in rows] == [1, 1]  # the hostile client alone: honest norms are near 0.37
    assert [r["failed_by"]["invalid"] for r in rows] == [0, 0] and [r["answered"] for r in rows] == [4, 4]
    assert any(not np.array_equal(clipped[k], base[k]) for k in base)


def _reply(arrays: dict, weight: float = 5.0) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                       "metrics": MetricRecord({"num-examples": weight, "loss.rating": 0.5})})


def test_clip_update_keeps_the_direction_and_sets_the_norm_to_the_bound():
    rng = np.random.default_rng(0)
    sent = {"a": rng.normal(size=(6, 4)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    delta = {k: rng.normal(size=v.shape) for k, v in sent.items()}
    scale = 10.0 / np.sqrt(sum(np.square(d).sum() for d in delta.values()))
    reply = _reply({k: (sent[k] + scale * delta[k]).astype(np.float32) for k in sent})
    rules = rp.Rules(max_weight=10, max_update_norm=2.0, on_large_update="clip",
                     metrics=frozenset({"num-examples", "loss.rating"}))
    assert rp.validate_train_reply(reply, sent, rules) is None  # clip: a large norm is not a problem
    out, norm = rp.clip_update(reply, sent, rules)
    assert norm == pytest.approx(10.0, rel=1e-5)
    upd = {k: out["arrays"][k].numpy().astype(np.float64) - sent[k] for k in sent}
    assert np.sqrt(sum(np.square(u).sum() for u in upd.values())) == pytest.approx(2.0, rel=1e-5)
    for k in sent:  # same direction: update = 0.2 x the client's
        np.testing.assert_allclose(upd[k], 0.2 * scale * delta[k], atol=1e-5)
    small = _reply({k: (sent[k] + 0.01 * delta[k]).astype(np.float32) for k in sent})
    assert rp.clip_update(small, sent, rules) == (small, None)
    rejecting = rp.Rules(max_weight=10, max_update_norm=2.0, metrics=rules.metrics)
    assert "update norm 10 > robust.max_update_norm=2" in rp.validate_train_reply(reply, sent, rejecting)


@pytest.mark.parametrize("edit, said", [
    (lambda c: c.__setitem__("extra", MetricRecord({"x": 1.0})),
     "got arrays (ArrayRecord), metrics (MetricRecord), extra"),
    (lambda c: c.__setitem__("metrics", MetricRecord({"loss.rating": 0.5})), "metric num-examples is missing"),
    (lambda c: c.__setitem__("metrics", MetricRecord({"num-examples": 5.0, "spy": 1.0})), "metric spy is not one"),
    (lambda c: c.__setitem__("metrics", MetricRecord({"num-examples": 5.0, "loss.rating": float("inf")})),
     "metric loss.rating=inf is not a finite number"),
    (lambda c: c.__setitem__("metrics", MetricRecord({"num-examples": 11.0})), "num-examples=11 outside [1, 10]"),
    (lambda c: c["arrays"].__setitem__("a", Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=b"junk")),
     "a is unreadable"),
    (lambda c: c["arrays"].__setitem__("a", Array(np.zeros((2, 2), np.float64))),
     "a is float64[2, 2], sent as float32"),
    (lambda c: c["arrays"].__setitem__("a", Array(np.full((2, 2), 101, np.float32))), "a holds an update of 101"),
])
def test_a_malformed_dense_reply_is_named_in_a_few_words(edit, said):
    sent = {"a": np.zeros((2, 2), np.float32)}
    content = _reply({"a": np.ones((2, 2), np.float32)})
    rules = rp.Rules(max_weight=10, metrics=frozenset({"num-examples", "loss.rating"}))
    assert rp.validate_train_reply(content, sent, rules) is None
    edit(content)
    assert said in rp.validate_train_reply(content, sent, rules)


def test_the_dp_modes_accept_weight_1_only():
    sent = {"a": np.zeros(3, np.float32)}
    rules = rp.Rules(max_weight=10, fixed_weight=1.0, metrics=frozenset({"num-examples", "loss.rating"}))
    assert rp.validate_train_reply(_reply({"a": np.ones(3, np.float32)}, 1.0), sent, rules) is None
    assert "this privacy mode's clients report 1" in rp.validate_train_reply(_reply({"a": np.ones(3, np.float32)}, 2.0),
                                                                             sent, rules)
    for mode in ("central_dp", "client_clip_dp", "local_dp"):
        assert rp.rules_for(compose(TINY + [f"privacy={mode}"])).fixed_weight == 1.0
    assert rp.rules_for(compose(TINY)).fixed_weight is None


def test_max_weight_is_the_largest_client_s_training_examples():
    from fedmtl.data import federation_for

    cfg = compose(TINY)
    fed = federation_for(cfg)
    assert rp.rules_for(cfg).max_weight == max(fed.partition_data(p).n_train for p in range(4))
    assert rp.rules_for(compose(TINY + ["robust.max_weight=7"])).max_weight == 7.0


@pytest.mark.parametrize("items, block, said", [
    ([0, 1], [[2, 1], [1, 2]], None),
    ([0, 1], [[2, 1], [1, np.nan]], "NaN/inf"),
    ([0, 1], [[2, -1], [-1, 2]], "negative count"),
    ([0, 1], [[2, 1], [0, 2]], "not symmetric"),
    ([0, 1], [[2, 1.5], [1.5, 2]], "not whole numbers"),
    ([0, 1], [[1, 2], [2, 3]], "more often than one of its items"),
    ([0, 0], [[2, 1], [1, 2]], "twice"),
    ([0, 30], [[2, 1], [1, 2]], "item 30, outside the catalogue's 0..29"),
    ([0, 1], [[2, 1, 0], [1, 2, 0]], "block has shape [2, 3]"),
    ([[0, 1]], [[2, 1], [1, 2]], "not a list of item indices"),
])
def test_a_gram_part_must_be_what_gram_part_makes(items, block, said):
    content = RecordDict({"gram": ArrayRecord({"items": Array(np.asarray(items, np.int64)),
                                               "block": Array(np.asarray(block, np.float32))})})
    problem = validate_gram_part(content, 30)
    assert problem is None if said is None else said in problem


def test_every_client_refusing_stops_the_run_with_one_line(monkeypatch, tmp_path):
    import fedmtl.federation.client_app as ca

    def refusing(cfg=None):
        def app(msg, ctx):
            raise RuntimeError("fedmtl refused: privacy=none is below this client's floor (secagg)")
        return app

    monkeypatch.setattr(ca, "make_client_app", refusing)
    with pytest.raises(RoundFailure, match=r"^round 1 train: all 4 clients refused \(fedmtl refused: privacy=none is "
                                           r"below this client's floor \(secagg\)\); the clients' privacy floors do "
                                           r"not accept this run's privacy=none$"):
        run(compose(TINY), tmp_path / "train")
    with pytest.raises(RoundFailure, match=r"^item Gram: all 4 clients refused \(fedmtl refused: .*\); the clients' "
                                           r"privacy floors do not answer item Gram queries"):
        run(compose(TINY + SETTINGS["gram"]), tmp_path / "gram")


def test_some_clients_refusing_are_counted_and_the_round_goes_on(monkeypatch, tmp_path):
    import fedmtl.federation.client_app as ca

    real = ca.make_client_app

    def some_refuse(cfg=None):
        app = real(cfg)

        def wrapped(msg, ctx):
            if int(ctx.node_config["partition-id"]) == HOSTILE and msg.metadata.message_type == "train":
                raise RuntimeError("fedmtl refused: privacy=none is below this client's floor (secagg)")
            return app(msg, ctx)
        return wrapped

    monkeypatch.setattr(ca, "make_client_app", some_refuse)
    run(compose(TINY), tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["failed_by"] for r in rows] == [{"dropped": 0, "refused": 1, "error": 0, "invalid": 0, "late": 0}] * 2


def test_an_invalid_reply_under_on_client_failure_stop_ends_the_run(monkeypatch, tmp_path):
    import fedmtl.federation.client_app as ca

    real = ca.make_client_app
    monkeypatch.setattr(ca, "make_client_app", lambda cfg=None: Hostile(real(cfg), "nan"))
    with pytest.raises(RoundFailure, match=rf"^round 1 train: node {NODE} sent an invalid reply \(.*NaN/inf.*\); "
                                           r"stopping \(on_client_failure=stop\)$"):
        run(compose(TINY + ["on_client_failure=stop"]), tmp_path)


@pytest.mark.parametrize("override, said", [
    ("robust.max_abs_update=0", "robust.max_abs_update=0: must be > 0"),
    ("robust.max_update_norm=-1", "robust.max_update_norm=-1: must be > 0"),
    ("robust.on_large_update=drop", "robust.on_large_update=drop: expected one of ['reject', 'clip']"),
    ("robust.max_weight=0.5", "robust.max_weight=0.5: must be >= 1"),
    ("+robust.typo=1", "robust.typo: unknown key"),
])
def test_bad_robust_settings_are_one_line_config_errors(override, said):
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert said in str(e.value) and "\n" not in str(e.value)


class HostileEvaluation:
    """The ClientApp, with partition HOSTILE sending a malformed evaluation reply (`kind`), or
    failing its evaluations (`fail`)."""

    def __init__(self, app, kind: str):
        self.app, self.kind = app, kind

    def __call__(self, msg, ctx):
        reply = self.app(msg, ctx)
        if int(ctx.node_config["partition-id"]) != HOSTILE or msg.metadata.message_type != "evaluate":
            return reply
        if self.kind == "fail":
            raise RuntimeError("the hostile client fails its evaluation instead")
        metrics = dict(reply.content["metrics"])
        if self.kind == "no-metrics":
            reply.content = RecordDict({"arrays": ArrayRecord({"x": Array(np.zeros(2, np.float32))})})
        elif self.kind == "extra-metric":
            reply.content["metrics"] = MetricRecord({**metrics, "rating.se_sum_backdoor": 1.0})
        elif self.kind == "missing-metric":
            reply.content["metrics"] = MetricRecord({k: v for k, v in metrics.items() if not k.startswith("like.")})
        elif self.kind == "nan":
            reply.content["metrics"] = MetricRecord({k: float("nan") if k.startswith("rating.") else v
                                                     for k, v in metrics.items()})
        elif self.kind == "bad-bins":
            reply.content["metrics"] = MetricRecord({k: [-5] if k == "like.pos_bins" else v
                                                     for k, v in metrics.items()})
        elif self.kind == "uncounted-bins":  # alone it pools (a count of 0 skips its bins); with the others it broke
            reply.content["metrics"] = MetricRecord({**metrics, "like.n": 0, "like.ll": 0.0, "like.pos_bins": [-5]})
        elif self.kind == "negative-error":  # a sum no count of squared errors gives: the pooled RMSE's sqrt broke
            reply.content["metrics"] = MetricRecord({**metrics, "rating.se": -1e6})
        return reply


@pytest.mark.parametrize("kind", ["no-metrics", "extra-metric", "missing-metric", "nan", "bad-bins", "uncounted-bins",
                                  "negative-error"])
def test_a_malformed_evaluation_is_left_out_and_the_server_goes_on(kind, monkeypatch, tmp_path, caplog):
    import fedmtl.federation.client_app as ca

    real = ca.make_client_app

    def evaluated(k):
        with monkeypatch.context() as m:
            m.setattr(ca, "make_client_app", lambda cfg=None: HostileEvaluation(real(cfg), k))
            summary = run(compose(TINY), tmp_path / k)
        return summary, read_jsonl(tmp_path / k / "metrics.jsonl")

    base, _ = evaluated("fail")
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        summary, rows = evaluated(kind)
    assert summary["rounds"] == 2
    assert [r["invalid_evaluate"] for r in rows] == [1, 1] and [r["failed_evaluate"] for r in rows] == [1, 1]
    assert any(f"node {NODE} sent an invalid evaluation" in r.getMessage() for r in caplog.records)
    assert summary["metrics"] == pytest.approx(base["metrics"])  # the other three clients' figures, as if it failed


@pytest.mark.parametrize("exchange", [[], SPARSE + ["exchange.dtype=float32"]], ids=["dense", "dp_rows"])
def test_under_client_clip_dp_an_update_above_the_clipping_norm_is_refused(exchange, monkeypatch, tmp_path, caplog):
    """client_clip_dp's noise covers clients that clipped to C: a reply whose update is above C
    (here the boosted one, x50 after its own clipping) is a failed client, and the run is the one
    in which that client failed (the noise switched off, it comes from the OS CSPRNG)."""
    from fedmtl import secure_random

    monkeypatch.setattr(secure_random, "add_gaussian_inplace", lambda arrays, std: None)
    dp = ["privacy=client_clip_dp", "privacy.clipping_norm=0.1", *exchange]
    base_summary, _, base_model = hostile_run(monkeypatch, tmp_path / "base", dp, "fail-train")
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        summary, rows, model = hostile_run(monkeypatch, tmp_path / "boost", dp, "boost")
    bad = [r.getMessage() for r in caplog.records if f"node {NODE} sent an invalid" in r.getMessage()]
    assert len(bad) == 2 and all("> privacy.clipping_norm=0.1001" in line for line in bad), bad
    assert [r["failed_by"]["invalid"] for r in rows] == [1, 1]
    for k in model:
        np.testing.assert_allclose(model[k], base_model[k], rtol=0, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("mode", ["client_clip_dp", "central_dp"])
def test_a_failed_client_does_not_stall_a_dp_run(mode, monkeypatch, tmp_path, caplog):
    """Flower's DP wrappers skip every round in which a client failed; here the failed client is
    left out, the round aggregates the others, and the noise is scaled to the clients averaged
    (std z*C/3 for 3 of 4), so every release is one at multiplier z, as the ledger says. The log
    says so, without Flower's warning that the missing answer could weaken the guarantee."""
    import logging

    from fedmtl import secure_random

    caplog.set_level(logging.INFO)
    stds = []
    monkeypatch.setattr(secure_random, "add_gaussian_inplace", lambda arrays, std: stds.append(std))
    summary, rows, _ = hostile_run(monkeypatch, tmp_path, [f"privacy={mode}", "privacy.clipping_norm=0.1",
                                                           "privacy.noise_multiplier=0.5"], "fail-train")
    assert [("skipped" in r, r["failed_by"]["error"], r["answered"]) for r in rows] == [(False, 1, 3)] * 2
    assert stds == [pytest.approx(0.5 * 0.1 / 3)] * 2
    assert summary["privacy"]["releases"] == 2 and [r["privacy"]["noise_multiplier"] for r in rows] == [0.5, 0.5]
    said = [r.getMessage() for r in caplog.records]
    assert sum("3 of 4 sampled clients answered; the DP noise is scaled to the 3 averaged" in m for m in said) == 2
    assert not any("differs from the number of sampled clients" in m for m in said)


def _evaluations_fail(monkeypatch, rounds):
    """Every client's evaluation raises in the given rounds (training goes on)."""
    import fedmtl.federation.client_app as ca

    real = ca.make_client_app

    def failing(cfg=None):
        app = real(cfg)

        def wrapped(msg, ctx):
            if msg.metadata.message_type == "evaluate" and int(msg.content["config"].get("server-round", 0)) in rounds:
                raise RuntimeError("evaluation broke")
            return app(msg, ctx)
        return wrapped

    monkeypatch.setattr(ca, "make_client_app", failing)


def test_a_run_whose_every_evaluation_failed_is_an_error_not_an_empty_table(monkeypatch, tmp_path):
    from fedmtl.errors import FedMTLError
    _evaluations_fail(monkeypatch, {1, 2})
    with pytest.raises(FedMTLError, match=r"^round 2: no client's evaluation succeeded \(4 failed; the first: "
                                          r"RuntimeError: evaluation broke\), so the run has no metrics"):
        run(compose(TINY), tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")  # the finished rounds are kept, and the summary
    assert [r["round"] for r in rows] == [1, 2] and all("evaluation broke" in r["evaluate_error"] for r in rows)
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "model_shared.pt").is_file()


def test_a_failed_last_evaluation_reports_the_earlier_round_and_says_so(monkeypatch, tmp_path, caplog):
    _evaluations_fail(monkeypatch, {2})
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        summary = run(compose(TINY + ["eval_every=1"]), tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert summary["metrics"] == rows[0]["test"] and "test" not in rows[1]
    assert "round 2: no client's evaluation succeeded (RuntimeError: evaluation broke); the metrics reported are " \
           "round 1's" in caplog.text


@pytest.mark.parametrize("setting, kind", [("sparse_int8", "scale"), ("dense", "nan")])
def test_replies_checked_as_they_come_are_screened_as_replies_checked_at_the_end(setting, kind, monkeypatch,
                                                                                   tmp_path, caplog):
    """An in-process grid with worker processes hands each part of the answer to the round's TrainChecks
    while the rest still train (screening.send_train): screen_train then keeps, refuses and logs what
    it does checking every reply itself, the hostile one refused either way."""
    from fedmtl.federation import server_app
    from fedmtl.federation.screening import TrainChecks, screen_train

    captured = []
    real = server_app.screen_train
    monkeypatch.setattr(server_app, "screen_train", lambda *a: captured.append(a) or real(*a))
    hostile_run(monkeypatch, tmp_path, SETTINGS[setting], kind)
    cfg, rnd, msgs, replies, _ = captured[0]
    checks = TrainChecks(cfg, msgs)
    checks(replies[:HOSTILE + 1])  # the first part (the hostile reply in it), as it came
    assert len(checks.problems) == HOSTILE + 1 and any(p is not None for _, p in checks.problems.values())
    said = []
    for each in (checks, None):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fedmtl"):
            kept, invalid, clipped = screen_train(cfg, rnd, msgs, replies, each)
        said.append([r.getMessage() for r in caplog.records])
        assert invalid == 1 and clipped == 0 and len(kept) == len(replies) - 1
        assert all(r.metadata.src_node_id != NODE for r in kept)
    assert said[0] == said[1] and len(said[0]) == 1 and f"node {NODE} sent an invalid reply" in said[0][0]


def test_replies_checked_together_get_the_answers_each_gets_alone(monkeypatch):
    """reply_groups.validate_train_replies (a group of sparse int8 replies' values checked at once) answers as
    validate_train_reply does for each: a group of honest replies passes, and with one reply
    tampered as each training fault, an unsorted row set, a negative scale or empty row sets in
    it, each reply still gets its own answer (the tampered one refused in the same words)."""
    from fedmtl.federation import reply_groups
    from fedmtl.federation.faults import tamper_train
    from fedmtl.sparse_codec import sparse_payload

    rng = np.random.default_rng(0)
    shapes = {"encoder.item_emb.weight": (30, 4), "encoder.item_bias.weight": (30, 3), "a.w": (5, 4), "a.b": (5,)}
    sent = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    rules = rp.Rules(exchange="sparse", dtype="int8", max_weight=100.0, metrics=frozenset({"num-examples"}))

    def honest(c: int) -> tuple[dict, dict]:
        trained = {k: (v + rng.normal(size=v.shape) * 0.01).astype(np.float32) for k, v in sent.items()}
        rows = np.sort(rng.choice(30, size=3 + c % 5, replace=False))
        return sparse_payload(trained, sent, rows, 30, "int8", np.random.default_rng([c, 2])), {"num-examples": 5.0}

    def content(arrays: dict, metrics: dict) -> RecordDict:
        return RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
                           "metrics": MetricRecord(metrics)})

    def unsorted(a, m):
        a["::rows"] = a["::rows"][::-1].copy()  # unique, not sorted: valid

    def negative_scale(a, m):
        a["::dense_scale"] = a["::dense_scale"].copy()
        a["::dense_scale"][0] = -1.0

    edits = {kind: (lambda a, m, kind=kind: tamper_train(kind, a, m, sent)) for kind in TRAIN_FAULTS}
    edits.update({"unsorted": unsorted, "negative-scale": negative_scale, "none": lambda a, m: None})
    for name, edit in edits.items():
        group = [honest(c) for c in range(8)]
        for a, _ in group[6:]:  # and two that sent no rows
            for k in ("::rows", "::rows_delta", "::rows_scale"):
                a[k] = a[k][:0]
        edit(*group[3])
        contents = [content(a, m) for a, m in group]
        alone = [rp.validate_train_reply(c, sent, rules) for c in contents]
        one_by_one = []
        with monkeypatch.context() as m:
            m.setattr(reply_groups, "validate_train_reply", lambda c, *a: one_by_one.append(c)
                      or alone[contents.index(c)])
            assert reply_groups.validate_train_replies(contents, sent, rules) == alone, name
        if name in ("none", "unsorted"):  # a valid group: checked together (unsorted rows: each on its own)
            assert len(one_by_one) == (0 if name == "none" else len(group)), name
        if name in ("none", "unsorted"):
            assert alone == [None] * len(group), name
        elif name != "boost":  # (x50 stays within the per-value bound: robust.max_update_norm's case)
            assert alone[3] is not None and alone[:3] + alone[4:] == [None] * (len(group) - 1), name
