"""backend=cohort trains a round's clients as one batch and gives backend=inprocess's results.

Tolerance: the batch sums in another order than one client at a time (batched matmuls, masked
means, one softmax normaliser per user), so its parameters differ from the per-client path by
float32 rounding, which Adam's normalised steps can grow to about 1e-5 in a round; the test of
one round allows 1e-4 on every uploaded and personal array (an int8 update may round one value
to the neighbouring level: one step of its row's scale), and every final metric and every
round's mean training loss must agree to 1e-4 (absolute and relative) after 3 rounds.
"""

import gc
import logging

import numpy as np
import pytest

from fedmtl.config import compose
from fedmtl.runfiles import read_jsonl
from fedmtl.simulate import run

# 8 users a client, 4 examples a batch: uneven clients take different numbers of steps per epoch
SMALL = ["dataset.n_users=40", "dataset.n_items=30", "dataset.mean_interactions=12", "num_clients=5",
         "num_rounds=3", "local_epochs=2", "train.batch_size=16", "save_model=false"]
TOL = 1e-4

RECIPE = ["aggregate=all", "exchange=sparse", "exchange.pad_rows=8", "strategy=fedadam", "strategy.eta=0.05",
          "train.optimizer=sgd", "train.shared_lr=0.05", "train.lr=0.02", "train.l2=0.25", "server_decay=0.01",
          "average_last=2", "weighting.weights={click: 2.0}", "click_mix.weight=0.1", "click_mix.lam=300",
          "click_mix.grid_weight=[0.2]", "click_mix.grid_lam=[100]"]

FAMILIES = {  # one per knob family the batch implements
    "default": [],  # aggregate=encoder, exchange=dense, FedAvg, Adam, softmax click over every item
    "ml100k_recipe": RECIPE,  # the default MovieLens recipe's knobs (int8 sparse updates, client SGD, FedAdam)
    "one_user_per_client": RECIPE + ["num_clients=40", "fraction_train=0.5"],
    "sparse_float32_fedprox": ["exchange=sparse", "exchange.dtype=float32", "strategy=fedprox",
                               "strategy.proximal_mu=0.1"],
    "sampled_softmax_adam_shared": ["train.click_loss=sampled_softmax", "train.num_negatives=5",
                                    "train.optimizer=adam", "train.shared_lr=0.02"],
    "no_click_two_layers": ["tasks=[rating,like]", "model.layers=2", "aggregate=all", "strategy=fedavgm"],
    "personal_decay": ["train.personal_decay=0.05"],
    # learned task weighting, each client's own state carried across rounds (cohort/weighting.py)
    "uncertainty_weighting": ["weighting=uncertainty", "weighting.init_log_var=0.3", "train.personal_decay=0.05"],
    "dwa_weighting": ["weighting=dwa", "weighting.temperature=0.5", "exchange=sparse"],
    # gradient surgery per client: each client's k-th step takes the k-th draws of its own generator
    "pcgrad_weighting": ["weighting=pcgrad", "weighting.seed=3", "exchange=sparse", "exchange.pad_rows=8"],
    "gradnorm_weighting": ["weighting=gradnorm", "weighting.alpha=1.0", "train.personal_decay=0.05"],
    # FedRep: the head epochs (personal parameters), then the encoder's, each a fresh optimiser
    "fedrep": ["aggregate=fedrep", "fedrep.head_epochs=2", "exchange=sparse", "exchange.pad_rows=8"],
    "fedrep_uncertainty_sampled": ["aggregate=fedrep", "weighting=uncertainty", "train.click_loss=sampled_softmax",
                                   "train.num_negatives=5", "exchange=sparse"],
    "fedrep_gradnorm": ["aggregate=fedrep", "weighting=gradnorm"],
    "fedrep_pcgrad": ["aggregate=fedrep", "weighting=pcgrad", "fedrep.head_epochs=1"],
    "pcgrad_aggregate_all": ["weighting=pcgrad", "aggregate=all", "strategy=fedadam", "train.optimizer=sgd",
                             "local_epochs=3"],
    # the architectures: the model's own tower modules over the client axis (torch.func.vmap)
    "mmoe": ["model=mmoe", "exchange=sparse", "exchange.pad_rows=8"],
    "ple_no_click": ["model=ple", "tasks=[rating,like]", "aggregate=all"],
}


def _run(tmp_path, name, overrides):
    """A run in tmp_path/name; name "inprocess" runs on backend=inprocess (the default is cohort)."""
    out = tmp_path / name
    summary = run(compose(SMALL + overrides + (["backend=inprocess"] if name == "inprocess" else [])), out)
    return summary["metrics"], read_jsonl(out / "metrics.jsonl")


def assert_close(a: dict, b: dict, tol=TOL, tol_of: dict | None = None):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], (int, float)) and a[k] is not None:
            t = (tol_of or {}).get(k, tol)
            assert b[k] == pytest.approx(a[k], abs=t, rel=t), k
        else:
            assert a[k] == b[k], k


def _train_losses(rows):
    """Each round's mean training losses and task weights (metrics.jsonl's "train")."""
    return [r["train"] for r in rows]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cohort_matches_inprocess(tmp_path, family, caplog):
    caplog.set_level(logging.INFO, logger="fedmtl")
    ov = FAMILIES[family]
    ref, ref_rows = _run(tmp_path, "inprocess", ov)
    got, got_rows = _run(tmp_path, "cohort", ov + ["backend=cohort"])
    assert "each round's clients train as one batch" in caplog.text
    assert "go through the ClientApp" not in caplog.text  # nothing fell back
    # the AUC bins the scores (metrics.AUC_BINS): a score 1e-7 from a bin edge moves it by a step of
    # 1/(positives x negatives), 1.8e-4 to 3.6e-4 on these 109 test pairs (MMoE's gates and PCGrad's
    # per-task gradients round differently batched; every other figure within 2e-5)
    assert_close(ref, got, tol_of={"like.auc": 1e-3} if family in ("mmoe", "pcgrad_weighting") else None)
    assert len(ref_rows) == len(got_rows)
    for a, b in zip(_train_losses(ref_rows), _train_losses(got_rows)):
        assert a, "metrics.jsonl holds no training loss"
        assert_close(a, b)


def test_batched_round_matches_train_client():
    """One round of 12 clients: every upload array, metric and personal state as train_client's."""
    from fedmtl.client_step import run_setup, train_client
    from fedmtl.cohort import Job, train_cohort
    from fedmtl.data import federation_for
    from fedmtl.model import get_arrays, shared_names

    cfg = dict(compose(SMALL + ["num_clients=12", "exchange=sparse", "exchange.dtype=float32"]), output_dir="x")
    setup = run_setup(cfg)
    fed = federation_for(cfg)
    model, _ = setup.template(1)
    shared = get_arrays(model, shared_names(model, cfg["aggregate"]))
    ref = [train_client(setup, p, fed.partition_data(p), shared, {}, 1) for p in range(12)]
    got = train_cohort(setup, shared, [Job(p, fed.partition_data(p), {}, 1) for p in range(12)], budget_mb=0.05)
    for (ua, ma, sa), (ub, mb, sb) in zip(ref, got):
        assert ua.keys() == ub.keys() and sa["personal"].keys() == sb["personal"].keys()
        for k in ua:
            assert ua[k].dtype == ub[k].dtype, k
            np.testing.assert_allclose(ub[k], ua[k], atol=1e-4, rtol=0, err_msg=k)
        for k in sa["personal"]:
            np.testing.assert_allclose(sb["personal"][k], sa["personal"][k], atol=1e-4, rtol=0, err_msg=k)
        assert ma["num-examples"] == mb["num-examples"]
        assert_close(ma, mb, 1e-5)


@pytest.mark.parametrize("aggregate", ["encoder", "all"])
def test_batched_evaluation_matches_evaluate_client(aggregate):
    """Every client's metric parts (fresh clients and trained ones) as evaluate_client's."""
    from fedmtl.client_step import evaluate_client, run_setup, train_client
    from fedmtl.cohort import EvalJob, evaluate_cohort
    from fedmtl.data import federation_for
    from fedmtl.model import get_arrays, shared_names

    cfg = dict(compose(SMALL + ["num_clients=8", f"aggregate={aggregate}"]), output_dir="x")
    setup = run_setup(cfg)
    fed = federation_for(cfg)
    model, _ = setup.template(1)
    shared = get_arrays(model, shared_names(model, aggregate))
    states = [{}] * 4 + [train_client(setup, p, fed.partition_data(p), shared, {}, 1)[2] for p in range(4, 8)]
    ref = [evaluate_client(setup, p, fed.partition_data(p), shared, states[p]) for p in range(8)]
    got = evaluate_cohort(setup, shared, [EvalJob(p, fed.partition_data(p), states[p]) for p in range(8)])
    for a, b in zip(ref, got):
        assert_close(a, b, 1e-5)


def test_batched_sparse_encoding_is_sparse_payloads_bit_for_bit():
    """sparse_payloads (many clients at once) sends exactly what sparse_payload sends for each."""
    from fedmtl.sparse_codec import sparse_payload, sparse_payloads

    rng = np.random.default_rng(0)
    # rows of 32 and 40 columns too (the absmax of rows of 16 or more columns is taken in torch)
    shapes = {"encoder.item_emb.weight": (50, 32), "encoder.item_bias.weight": (50, 3), "a.w": (5, 4), "a.b": (5,),
              "h.off": (), "t.w": (3, 40), "u.w": (2, 32)}
    sent = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    trained = [{k: (v + rng.normal(size=v.shape) * 0.01).astype(np.float32) for k, v in sent.items()} for _ in range(4)]
    for c in range(4):  # rows that did not move: a scale of +0.0 (never -0.0) and codes of 0
        trained[c]["u.w"][1] = sent["u.w"][1]
        trained[c]["encoder.item_emb.weight"][:5] = sent["encoder.item_emb.weight"][:5]
    rows = [np.sort(rng.choice(50, size=n, replace=False)) for n in (10, 3, 20, 7)]
    rows[0][:2] = [0, 1]
    for dtype, overwrite in (("int8", False), ("int8", True), ("float16", False), ("float32", True)):
        ref = [sparse_payload(trained[c], sent, rows[c], 50, dtype, np.random.default_rng([c, 2])) for c in range(4)]
        rd = {}
        for n in ("encoder.item_emb.weight", "encoder.item_bias.weight"):
            rd[n] = np.zeros((4, 20, *shapes[n][1:]))
            for c in range(4):
                rd[n][c, :len(rows[c])] = trained[c][n][rows[c]].astype(np.float64) - sent[n][rows[c]]
        dd = {n: np.stack([trained[c][n].astype(np.float64) - sent[n] for c in range(4)])
              for n in ("a.w", "a.b", "h.off", "t.w", "u.w")}
        got = sparse_payloads(rd, dd, rows, 50, dtype, [np.random.default_rng([c, 2]) for c in range(4)],
                              overwrite=overwrite)
        for a, b in zip(ref, got):
            assert a.keys() == b.keys()
            for k in a:  # the same bytes (a -0.0 scale would equal +0.0 but not be the same upload)
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), \
                    (dtype, k)
        if dtype == "int8":
            assert any(np.any(p["::rows_scale"] == 0) for p in got) and any(np.any(p["::dense_scale"] == 0) for p in got)


@pytest.mark.parametrize("knob", [["train.click_loss=sampled"], ["model.history=true"]], ids=["sampled_click", "history"])
def test_unbatched_knob_falls_back_to_the_client_app(tmp_path, knob, caplog, monkeypatch):
    """A knob the batch does not implement: one start-up line names it, every training message
    goes through the ClientApp, and the run is inprocess's."""
    import fedmtl.engine.cohort as cohort

    calls = []
    real = cohort.handle
    monkeypatch.setattr(cohort, "handle", lambda app, states, m, t=None: calls.append(m) or real(app, states, m, t))
    monkeypatch.setattr(cohort, "train_cohort",
                        lambda *a, **k: pytest.fail("a knob the batch does not implement reached the batch"))
    caplog.set_level(logging.INFO, logger="fedmtl")
    got, _ = _run(tmp_path, "cohort", knob + ["backend=cohort"])
    lines = [r.getMessage() for r in caplog.records if "backend=cohort" in r.getMessage()]
    assert len(lines) == 1 and "not batched" in lines[0] and knob[0].split("=")[0] in lines[0]
    from flwr.app.message_type import MessageType
    assert sum(m.metadata.message_type == MessageType.TRAIN for m in calls) == 5 * 3
    ref, _ = _run(tmp_path, "inprocess", knob)
    assert ref == got  # the same code path: identical


@pytest.mark.parametrize("mode", [["privacy=central_dp"], ["privacy=client_clip_dp"], ["privacy=local_dp"],
                                  ["privacy=client_clip_dp", "privacy.clipping=adaptive",
                                   "privacy.clipped_count_stddev=2.0"]],
                         ids=["central_dp", "client_clip_dp", "local_dp", "adaptive_clipping"])
def test_dp_modes_are_batched_with_the_client_apps_mods(tmp_path, mode, caplog, monkeypatch):
    """central_dp, client_clip_dp and local_dp are batched: each batched reply goes through the
    train handler's privacy mods (Flower's clipping, the weight and metric rewrites, the noise).
    With the noise switched off (it comes from the OS CSPRNG, different every run) the run is
    inprocess's to the batch's float tolerance."""
    from fedmtl import secure_random

    monkeypatch.setattr(secure_random, "add_gaussian_inplace", lambda arrays, std: None)
    monkeypatch.setattr(secure_random, "normal", lambda mean, std: float(mean))
    clip = ["privacy.clipping_norm=0.05"]  # below the update norms: clipping acts on every client
    caplog.set_level(logging.INFO, logger="fedmtl")
    ref, ref_rows = _run(tmp_path, "inprocess", mode + clip)
    got, got_rows = _run(tmp_path, "cohort", mode + clip + ["backend=cohort"])
    assert "each round's clients train as one batch" in caplog.text
    assert_close(ref, got)
    for a, b in zip(ref_rows, got_rows):
        assert a["privacy"]["epsilon"] == pytest.approx(b["privacy"]["epsilon"])
        if "clipping_norm" in a["privacy"]:  # adaptive clipping: the clients' clipped bits moved it alike
            assert a["privacy"]["clipping_norm"] == pytest.approx(b["privacy"]["clipping_norm"], rel=1e-6)


@pytest.mark.parametrize("mode", [["privacy=secagg"], ["privacy=secagg_dp"],
                                  ["privacy=secagg_dp", "exchange=sparse", "privacy.max_rows=20"]],
                         ids=["secagg", "secagg_dp", "secagg_dp_rows"])
def test_secagg_training_is_batched_inside_the_protocol(tmp_path, mode, caplog, monkeypatch, nearest_rounding):
    """SecAgg+: the collect stage's training is one batch per round, each batched reply then goes
    through the train handler's mods (secaggplus_mod's masking, LegacyFitMod, under secagg_dp the
    clipping and the noise share), the protocol's other stages through the ClientApp. With
    SecAgg+'s stochastic rounding made deterministic and the DP noise off (both random every
    run), the run is inprocess's to the batch's float tolerance."""
    import fedmtl.engine.cohort as cohort

    from fedmtl import secure_random

    monkeypatch.setattr(secure_random, "add_gaussian_inplace", lambda arrays, std: None)
    monkeypatch.setattr(secure_random, "normal", lambda mean, std: float(mean))
    real, batches = cohort.train_cohort, []
    monkeypatch.setattr(cohort, "train_cohort",
                        lambda setup, shared, jobs, *a: batches.append(len(jobs)) or real(setup, shared, jobs, *a))
    clip = ["privacy.clipping_norm=0.05"] if "privacy=secagg_dp" in mode else []
    caplog.set_level(logging.INFO, logger="fedmtl")
    ref, ref_rows = _run(tmp_path, "inprocess", mode + clip)
    assert batches == []  # client by client
    got, got_rows = _run(tmp_path, "cohort", mode + clip + ["backend=cohort"])
    assert "each round's clients train as one batch" in caplog.text
    assert batches == [5, 5, 5]  # one batch a round, every client in it
    assert [r["secagg"]["aggregated"] for r in got_rows] == [True] * 3
    # SecAgg+ quantises every update to a grid (rint here): a float-rounding difference between the
    # batch and the per-client path (the matmul kernels differ by CPU) now and then lands a value one
    # grid step away, and this small test set's AUC moves in steps of one pair in ~5,600 (1.8e-4, seen
    # on an AVX-512 machine, where every other metric stayed within 1.5e-5): AUC may differ by 3 pairs
    assert_close(ref, got, tol_of={"like.auc": 5.4e-4})
    for a, b in zip(_train_losses(ref_rows), _train_losses(got_rows)):
        assert_close(a, b)


def test_a_client_floor_refusal_is_the_client_apps(tmp_path):
    """A client whose own floor refuses the run's requests answers as under inprocess (refused)."""
    ov = ["exchange=sparse", "client_floor.sparse=false", "on_client_failure=stop"]
    errors = []
    for backend in ("inprocess", "cohort"):
        try:
            _run(tmp_path, backend, ov + [f"backend={backend}"])
        except Exception as e:  # noqa: BLE001 the run stops with the refusal
            errors.append(str(e))
    assert len(errors) == 2 and "refused" in errors[1] and errors[0] == errors[1].replace("cohort", "inprocess")


@pytest.mark.parametrize("bad", ["backend.threads=-1", "backend.chunk_mb=0", "backend.threads=two", "backend.workers=0"])
def test_bad_backend_options_are_one_line(tmp_path, bad):
    from fedmtl.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        _run(tmp_path, "bad", ["backend=cohort", bad])
    assert bad.split("=")[0] in str(e.value) and "\n" not in str(e.value)


def test_a_bad_backend_option_with_workers_is_one_line_at_start_up(tmp_path):
    """With worker processes a bad cohort option is still the config's one line, not a worker
    process that fails as it builds its grid (and a run whose clients all fail)."""
    from fedmtl.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        _run(tmp_path, "bad", ["backend=cohort", "backend.workers=2", "backend.threads=-1"])
    assert "backend.threads" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_a_failing_batch_goes_through_the_client_app(tmp_path, caplog, monkeypatch):
    """A batch that raises: one warning, its clients answered by the ClientApp from the state they
    had (no half-stored state): the run is inprocess's exactly."""
    import fedmtl.engine.cohort as cohort

    collector_on = []

    def boom(*a, **k):
        collector_on.append(gc.isenabled())
        raise RuntimeError("boom")

    monkeypatch.setattr(cohort, "train_cohort", boom)
    monkeypatch.setattr(cohort, "evaluate_cohort", boom)
    caplog.set_level(logging.WARNING, logger="fedmtl")
    got, _ = _run(tmp_path, "cohort", ["backend=cohort"])
    ref, _ = _run(tmp_path, "inprocess", [])
    assert ref == got
    assert "the batched round failed (RuntimeError: boom)" in caplog.text
    # the cyclic collector is paused inside a batch and back on after it, the failed ones included
    assert collector_on and not any(collector_on) and gc.isenabled()


def test_a_run_freezes_its_setup_for_the_collector_and_frees_it_after(tmp_path, monkeypatch):
    """The ServerApp freezes what it built before round 1 (gc.freeze: full collections stop walking
    the data), and the run gives it back to the collector when it ends, also when it fails: a sweep's
    runs in one process leave nothing frozen behind."""
    import fedmtl.federation.server_app as server_app

    frozen_in_rounds = []
    real = server_app.train_round

    def spy(*a, **k):
        frozen_in_rounds.append(gc.get_freeze_count())
        return real(*a, **k)

    monkeypatch.setattr(server_app, "train_round", spy)
    assert gc.get_freeze_count() == 0
    _run(tmp_path, "ok", ["num_rounds=2"])
    assert len(frozen_in_rounds) == 2 and min(frozen_in_rounds) > 1000
    assert gc.get_freeze_count() == 0

    def fail(*a, **k):
        frozen_in_rounds.append(gc.get_freeze_count())
        raise RuntimeError("boom")

    monkeypatch.setattr(server_app, "train_round", fail)
    with pytest.raises(RuntimeError, match="boom"):
        _run(tmp_path, "fails", ["num_rounds=2"])
    assert frozen_in_rounds[-1] > 1000 and gc.get_freeze_count() == 0


def test_state_on_disk_matches_memory(tmp_path):
    mem, _ = _run(tmp_path, "mem", RECIPE + ["backend=cohort"])
    disk, _ = _run(tmp_path, "disk", RECIPE + ["backend=cohort", "backend.state=disk"])
    assert_close(mem, disk, 1e-9)
    assert (tmp_path / "disk" / "client_state.sqlite").is_file()


def test_cohort_runs_are_bit_reproducible_from_their_seed(tmp_path):
    one, rows_one = _run(tmp_path, "one", RECIPE + ["backend=cohort"])
    two, rows_two = _run(tmp_path, "two", RECIPE + ["backend=cohort"])
    assert one == two
    assert [r["train"] for r in rows_one] == [r["train"] for r in rows_two]
    other, _ = _run(tmp_path, "other", RECIPE + ["backend=cohort", "seed=1"])
    assert other != one  # the seed does reach the run


def test_two_threads_give_one_threads_run(tmp_path):
    """backend.threads=2 (torch's intra-op threads over the chunk's tensors) gives the run one
    thread gives, to float rounding."""
    many = RECIPE + ["num_clients=40", "dataset.n_users=40", "backend=cohort"]
    one, rows_one = _run(tmp_path, "one", many)
    two, rows_two = _run(tmp_path, "two", many + ["backend.threads=2"])
    assert_close(one, two, 1e-9)
    for a, b in zip(_train_losses(rows_one), _train_losses(rows_two)):
        assert_close(a, b, 1e-9)


@pytest.mark.parametrize("a", [np.arange(12, dtype=np.float32).reshape(3, 4), np.asarray(2.5, np.float32),
                               np.arange(5, dtype=np.uint16), np.zeros((0, 3), np.int8)])
def test_fast_array_is_the_array_flower_makes(a):
    """The engine's replies hold fast_array(a): the same dtype, shape, bytes and record as
    Flower's Array(a), read back as a, pickled as a plain Array."""
    import pickle

    from flwr.app import Array, ArrayRecord

    from fedmtl.federation.arrays import count_bytes, fast_array, nbytes, record as _record

    fast, ref = fast_array(a), Array(a)
    assert "_bytes" in fast.__dict__ and fast.__dict__["_bytes"] is None  # no bytes made until asked
    assert nbytes(a) == len(ref.data)
    assert (fast.dtype, fast.shape, fast.stype, fast.data) == (ref.dtype, ref.shape, ref.stype, ref.data)
    assert fast.deflate() == ref.deflate() and fast.object_id == ref.object_id  # what leaves the process
    np.testing.assert_array_equal(fast.numpy(), a)
    back = pickle.loads(pickle.dumps(fast))
    assert type(back) is Array and back.data == ref.data
    rec = _record({"x": a, "y": a})
    want = ArrayRecord({"x": ref, "y": ref}).count_bytes()
    assert list(rec.keys()) == ["x", "y"] and count_bytes(rec) == want  # without making the bytes
    assert all(v.__dict__["_bytes"] is None for v in rec.values())
    assert rec.count_bytes() == want and count_bytes(rec) == want  # Flower's count made them: the same
    assert count_bytes(ArrayRecord({"x": ref, "y": ref})) == want


@pytest.mark.parametrize("items", [np.array([0, 3, 4]), np.array([], np.int64), np.arange(6)], ids=["some", "none", "all"])
def test_rows_array_is_the_array_of_those_rows(items):
    """click_mix attaches RowsOf(B, items): an Array that is Array(B[items]) to every reader (bytes,
    object id, pickling, record size) without taking the rows, and whose matrix the cohort engine
    reads back without a copy."""
    import pickle

    from flwr.app import Array, ArrayRecord

    from fedmtl.federation.arrays import count_bytes, nbytes, record as _record, rows_source
    from fedmtl.itemitem import RowsOf

    b = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    src = RowsOf(b, items)
    rec = _record({"items": items, "b": src})
    lazy, ref = rec["b"], Array(np.ascontiguousarray(b[items]))
    assert rows_source(lazy) is src and lazy.__dict__["_bytes"] is None  # nothing taken until read
    assert nbytes(src) == len(ref.data)
    assert (lazy.dtype, lazy.shape, lazy.stype, lazy.data) == (ref.dtype, ref.shape, ref.stype, ref.data)
    assert lazy.deflate() == ref.deflate() and lazy.object_id == ref.object_id
    np.testing.assert_array_equal(lazy.numpy(), b[items])
    back = pickle.loads(pickle.dumps(lazy))
    assert type(back) is Array and back.data == ref.data
    fresh = _record({"items": items, "b": RowsOf(b, items)})
    assert count_bytes(fresh) == ArrayRecord({"items": Array(items), "b": ref}).count_bytes()
    assert fresh["b"].__dict__["_bytes"] is None  # counted without taking the rows
    assert count_bytes(rec) == ArrayRecord({"items": Array(items), "b": ref}).count_bytes()
    assert rec.count_bytes() == ArrayRecord({"items": Array(items), "b": ref}).count_bytes()


@pytest.mark.parametrize("same_matrix", [True, False], ids=["one_matrix", "per_client_rows"])
def test_batched_evaluation_with_item_item_rows(same_matrix):
    """click_mix's blends (the run's and a grid's): every client's parts as evaluate_client's with
    the rows taken, whether the rows are of one matrix (every user scored against it at once)
    or not (each client with its own rows)."""
    from fedmtl.client_step import evaluate_client, run_setup, train_client
    from fedmtl.cohort import EvalJob, evaluate_cohort
    from fedmtl.cohort.evaluation import _shared_rows
    from fedmtl.data import federation_for
    from fedmtl.itemitem import RowsOf
    from fedmtl.model import get_arrays, shared_names

    cfg = dict(compose(SMALL + RECIPE + ["num_clients=8"]), output_dir="x")
    setup = run_setup(cfg)
    fed = federation_for(cfg)
    model, _ = setup.template(1)
    shared = get_arrays(model, shared_names(model, "all"))
    states = [{}] * 3 + [train_client(setup, p, fed.partition_data(p), shared, {}, 1)[2] for p in range(3, 8)]
    rng = np.random.default_rng(1)
    n = fed.partition_data(0).n_items
    b, g = (rng.normal(size=(n, n)).astype(np.float32) for _ in range(2))
    jobs, ref = [], []
    for p in range(8):
        data = fed.partition_data(p)
        items = np.unique(data.train_i.numpy()).astype(np.int64)
        mb = b if same_matrix or p % 2 else b.copy()
        jobs.append(EvalJob(p, data, states[p], {"items": items, "b": RowsOf(mb, items), "grid@100": RowsOf(g, items)}))
        ref.append(evaluate_client(setup, p, data, shared, states[p], {"items": items, "b": b[items], "grid@100": g[items]}))
    assert (_shared_rows(jobs) is not None) == same_matrix
    got = evaluate_cohort(setup, shared, jobs)
    assert any(k.startswith("mix_") for k in got[0])  # the grid's blend was scored
    for a, c in zip(ref, got):
        assert_close(a, c, 1e-5)


@pytest.mark.parametrize("family", ["default", "ml100k_recipe"])
def test_worker_processes_match_one_process(tmp_path, family, caplog):
    """backend.workers=2: each worker process batches its nodes of a round (node k on worker k % 2),
    the replies come back in the messages' order (the server sums in client order, as with one
    process): inprocess's results to the batch's tolerance. The recipe's evaluation messages carry
    rows of EASE's B not taken yet (arrays.RowsOf), which cross the pipe as the matrix and row numbers."""
    caplog.set_level(logging.INFO, logger="fedmtl")
    ov = FAMILIES[family]
    ref, ref_rows = _run(tmp_path, "inprocess", ov)
    got, got_rows = _run(tmp_path, "workers", ov + ["backend=cohort", "backend.workers=2"])
    assert "2 worker processes, each training its clients of a round as one batch" in caplog.text
    assert_close(ref, got)
    for a, b in zip(_train_losses(ref_rows), _train_losses(got_rows)):
        assert_close(a, b)


def test_worker_processes_run_secagg(tmp_path):
    """SecAgg+ with the clients on two worker processes: every round really aggregates every client."""
    _, rows = _run(tmp_path, "workers", ["privacy=secagg", "backend=cohort", "backend.workers=2"])
    assert [r["secagg"]["aggregated"] for r in rows] == [True] * 3


def test_pipe_pickles_kept_arrays_as_values_and_a_matrix_once():
    """The grid-worker pipe (engine/pipe.py's dumps): a kept array comes back kept, with its values; rows
    of one matrix attached to many messages cross it as that matrix once and each one's row numbers."""
    import pickle

    from fedmtl.engine.pipe import dumps as _dumps
    from fedmtl.federation.arrays import record, rows_source
    from fedmtl.itemitem import RowsOf

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = pickle.loads(_dumps(record({"a": a})))
    assert np.array_equal(back["a"].numpy(), a) and back["a"].__dict__.get("_bytes") is None  # no .npy bytes made
    b = np.random.default_rng(0).normal(size=(200, 200)).astype(np.float32)  # 160 KB
    recs = [record({"b": RowsOf(b, np.array([k, k + 1]))}) for k in range(50)]
    blob = _dumps(recs)
    assert len(blob) < 1.2 * b.nbytes  # the matrix once, not 50 times; not 50 copies of its rows either
    back = pickle.loads(blob)
    srcs = [rows_source(r["b"]) for r in back]
    assert all(s.matrix is srcs[0].matrix for s in srcs) and np.array_equal(srcs[0].matrix, b)
    assert np.array_equal(back[7]["b"].numpy(), b[[7, 8]])


def test_workers_get_each_matrix_of_b_once(tmp_path, monkeypatch):
    """An evaluation round goes out in several sends (ItemItem.chunks; here one message each): the
    grid sends each worker a matrix of EASE's B once, later sends name it by its key, and the
    run's metrics are those of sending the whole batch at once."""
    import fedmtl.engine.inprocess as inprocess
    from fedmtl.federation.click_mix import ItemItem

    ov = FAMILIES["ml100k_recipe"] + ["backend=cohort", "backend.workers=2"]
    whole, _ = _run(tmp_path, "whole", ov)
    sent, real = [], inprocess._dumps
    monkeypatch.setattr(inprocess, "_dumps", lambda obj, known=None: sent.append(obj) or real(obj, known))
    monkeypatch.setattr(ItemItem, "CHUNK_BYTES", 1)
    monkeypatch.setattr(inprocess.InProcessGrid, "eval_rows_bytes", None)  # ItemItem.CHUNK_BYTES: one client a send
    got, _ = _run(tmp_path, "chunked", ov)
    runs = [o for o in sent if isinstance(o, tuple) and o[0] == "run"]
    matrices = [m for o in sent if isinstance(o, tuple) and o[0] == "matrices" for m in o[1].values()]
    assert len(runs) > 20  # every evaluation message a send of its own
    assert len(matrices) == 4  # B at click_mix.lam and the final grid's B, once to each worker
    assert_close(whole, got)  # one client per send: its scores from smaller products (float rounding)


def test_inprocess_workers_read_rows_of_b_sent_as_a_matrix(tmp_path):
    """backend=inprocess backend.workers=2 with the click blend: the ClientApps in the workers read
    their rows of B from the matrix the pipe carried, and the run is one process's exactly."""
    ov = FAMILIES["ml100k_recipe"]
    ref, _ = _run(tmp_path, "inprocess", ov)
    got, _ = _run(tmp_path, "two", ov + ["backend=inprocess", "backend.workers=2"])
    assert got == ref


def test_a_dead_worker_stops_the_run_with_one_line_and_resume_goes_on(tmp_path, monkeypatch):
    """A worker process that dies (killed, out of memory) takes its clients' states with it: its
    clients fail that round, then the run stops with one line when it cannot checkpoint them, and
    resume=true goes on from the last checkpoint with fresh workers."""
    import json

    import fedmtl.engine.inprocess as inprocess
    from fedmtl.errors import FedMTLError

    real, calls, killed = inprocess.InProcessGrid.answer, [], []

    def answer(self, messages, timeout=None, *, on_part=None):
        calls.append(len(messages))
        if len(calls) == 3:  # after round 1 and its checkpoint
            self.procs[1].kill()
            self.procs[1].join()
            killed.append(self.procs[1].pid)
        return real(self, messages, timeout, on_part=on_part)

    monkeypatch.setattr(inprocess.InProcessGrid, "answer", answer)
    ov = SMALL + ["backend=cohort", "backend.workers=2"]
    with pytest.raises(FedMTLError) as e:
        run(compose(ov), tmp_path)
    assert f"worker 1 (pid {killed[0]}) is gone" in str(e.value) and "\n" not in str(e.value)
    assert json.loads((tmp_path / "checkpoint" / "LATEST").read_text())["round"] >= 1
    monkeypatch.undo()
    done = run(compose(ov + ["resume=true"]), tmp_path)
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 3 and done["metrics"]


def test_clients_prepared_ahead_train_as_clients_prepared_in_the_round(monkeypatch):
    """A worker prepares the next round's clients while the server aggregates (cohort.prepare_ahead):
    train_cohort takes those that match a job (client, round, data), bit for bit what preparing them
    in the round gives, and prepares the others itself."""
    import fedmtl.cohort.training as training
    from fedmtl.client_step import run_setup
    from fedmtl.cohort import Job, prepare_ahead, train_cohort
    from fedmtl.data import federation_for
    from fedmtl.model import get_arrays, shared_names

    cfg = dict(compose(SMALL + RECIPE + ["num_clients=8"]), output_dir="x")
    setup = run_setup(cfg)
    fed = federation_for(cfg)
    model, _ = setup.template(1)
    shared = get_arrays(model, shared_names(model, cfg["aggregate"]))
    jobs = [Job(p, fed.partition_data(p), {}, 2) for p in range(8)]
    ref = train_cohort(setup, shared, jobs, budget_mb=0.05)
    ahead = prepare_ahead(setup, [Job(j.pid, j.data, {}, 2) for j in jobs[:5]])
    ahead[(5, 2)] = prepare_ahead(setup, [Job(5, fed.partition_data(5), {}, 2)])[(5, 2)]  # other data: not taken
    ahead[(6, 3)] = prepare_ahead(setup, [Job(6, jobs[6].data, {}, 3)])[(6, 3)]  # another round: not taken
    calls = []
    real = training.prepare
    monkeypatch.setattr(training, "prepare", lambda s, job, n: calls.append(job.pid) or real(s, job, n))
    got = train_cohort(setup, shared, jobs, budget_mb=0.05, prepared=ahead)
    assert sorted(calls) == [5, 6, 7]
    for (ua, ma, sa), (ub, mb, sb) in zip(ref, got):
        assert ua.keys() == ub.keys() and ma == mb
        for k in ua:
            assert np.array_equal(ua[k], ub[k]), k
        for k in sa["personal"]:
            assert np.array_equal(sa["personal"][k], sb["personal"][k]), k


def test_worker_processes_prepare_each_next_round_ahead(tmp_path, caplog):
    """backend.workers=2: after sending a round's replies each worker prepares the next round's clients
    (the same ones, one round on) on a low-priority thread; from round 2 on every client was prepared
    ahead, and the run is the one-process run's."""
    caplog.set_level(logging.DEBUG, logger="fedmtl")
    ov = RECIPE + ["num_clients=6", "num_rounds=4", "eval_every=2"]
    ref, _ = _run(tmp_path, "one", ov + ["backend=cohort"])
    got, _ = _run(tmp_path, "workers", ov + ["backend=cohort", "backend.workers=2"])
    assert_close(ref, got)
    lines = [r.getMessage() for r in caplog.records if "prepared ahead" in r.getMessage()]
    for rnd in (2, 3, 4):  # each worker's 3 nodes, every round after the first (evaluations in between)
        assert lines.count(f"backend=cohort: 3 of 3 clients of round {rnd} were prepared ahead") == 2, lines


def test_worker_processes_send_a_rounds_replies_in_parts(tmp_path, monkeypatch):
    """backend.workers=2: a worker sends its training replies in parts as its chunks finish (the grid
    reads each while the next chunks train, and the server checks its replies; the last part says
    so), and the run is the one-process run's."""
    import fedmtl.engine.inprocess as inprocess

    frames = []

    class Spy:
        @staticmethod
        def loads(data):
            out = inprocess_pickle.loads(data)
            if isinstance(out, tuple) and len(out) == 3:
                frames.append((len(out[0]), out[2]))
            return out

    from fedmtl.federation.screening import TrainChecks

    inprocess_pickle = inprocess.pickle
    ov = RECIPE + ["num_clients=12", "dataset.n_users=24", "num_rounds=2", "backend.chunk_mb=0.01"]
    ref, _ = _run(tmp_path, "one", ov + ["backend=cohort"])
    monkeypatch.setattr(inprocess, "pickle", Spy)
    checked, real_call = [], TrainChecks.__call__  # (replies handed over, how many not checked before)
    monkeypatch.setattr(TrainChecks, "__call__", lambda self, replies: checked.append(
        (len(replies), sum(1 for r in replies if id(r) not in self.problems))) or real_call(self, replies))
    got, _ = _run(tmp_path, "workers", ov + ["backend=cohort", "backend.workers=2"])
    assert_close(ref, got)
    early = [n for n, last in frames if not last]
    assert len(early) >= 4 and all(n >= 1 for n in early)  # each worker's 6 clients: parts before the last
    assert sum(n for n, _ in frames) >= 2 * 12  # every client's training reply, each round
    # the server checked each early part as it came (screen_train hands over a round's 12 replies, and
    # checks those not checked yet: the last parts), and every reply once
    assert sum(fresh for n, fresh in checked if n < 12) == sum(early)
    assert sum(fresh for _, fresh in checked) == 2 * 12
