"""The Flower ServerApp: Flower's strategy over the shared encoder, one round at a time.

The round loop is the same as `Strategy.start` (configure_train, send_and_receive,
aggregate_train, then the same for evaluation), written out so that every round
is logged to metrics.jsonl with its timing, client counts and bytes as it ends.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from ..config_types import RunConfig
from ..data import federation_meta
from ..errors import DivergedError
from ..model import build_model, saved as saved_model, shared_names
from ..progress import progress
from ..runfiles import append_jsonl
from ..tasks import get as get_task, selection_key
from . import deployed, failures, faults
from .arrays import count_bytes
from .resume import Checkpointer, resume, round_commit
from .client_state import config_from_context
from .failures import check_refusals, check_replies, needed_nodes, wait_for_nodes
from .accounting import secret_sampling
from .privacy import SecretOrder, ServerPrivacy
from .click_mix import ItemItem, item_item_round, secure_item_item_round, send_evaluate  # noqa: F401 (re-exported)
from .screening import TrainChecks, by_node, screen_evaluate, screen_train, send_train
from .strategies import build_strategy, set_server_rate

log = logging.getLogger("fedmtl")


def initial_arrays(cfg: RunConfig) -> ArrayRecord:
    """The shared parameters at round 0, from the same seeded build every client uses."""
    meta = federation_meta(cfg)
    model = build_model(cfg["model"], cfg["tasks"], 1, np.zeros((1, len(meta["user_cards"])), np.int64), meta,
                        cfg["seed"])
    params = dict(model.named_parameters())
    arrays = {n: params[n].detach().numpy().copy() for n in shared_names(model, cfg["aggregate"])}
    arrays = saved_model.init_shared(cfg, arrays, meta)  # init.from=RUN_DIR, if set
    return ArrayRecord({n: Array(a) for n, a in arrays.items()})


def check_finite(arrays: ArrayRecord, rnd: int) -> None:
    """Stop a diverged run at once (its finished rounds stay checkpointed) instead of
    training on NaN for the remaining rounds."""
    for name, a in arrays.items():
        v = a.numpy()
        if not np.isfinite(v).all():
            raise DivergedError(f"round {rnd}: the aggregated {name} holds {int((~np.isfinite(v)).sum())} NaN/inf "
                                "values (training diverged); lower train.lr, train.shared_lr or the strategy's "
                                "server rate; rounds before it are in metrics.jsonl and checkpoint/")


def seed_sampling(cfg: RunConfig, phase: str, rnd: int) -> None:
    """Flower's strategies sample nodes with Python's `random`: reseed it from (seed, phase,
    round) so which clients train in a round does not depend on how often the run evaluates.
    Under a DP mode the sample is secret all the same: the nodes it picks positions from come
    in a CSPRNG order (privacy.SecretOrder), so no randomness a guarantee rests on comes from
    this seeded RNG."""
    random.seed(f"fedmtl-{phase}-{cfg['seed']}-{rnd}")


def sampling_grid(cfg: RunConfig, grid):
    """The grid a strategy samples a training round from (secret under the DP modes)."""
    return SecretOrder(grid) if secret_sampling(cfg) else grid


def _bytes(records) -> int:
    """The bytes of these ArrayRecords (a round's messages share one: counted once, times its uses)."""
    counted: dict[int, tuple] = {}
    total = 0
    for r in records:
        hit = counted.get(id(r))
        if hit is None or hit[0] is not r:
            hit = counted[id(r)] = (r, count_bytes(r))
        total += hit[1]
    return int(total)


def format_metrics(m: dict, tasks) -> str:
    """The progress line's metrics: `rmse=...`, or `click.auc=...` where two tasks share a metric name."""
    keys = [k for t in tasks for k in get_task(t).log_keys() if k in m]
    short = [k.split(".", 1)[1] if "." in k else k for k in keys]
    return "  ".join(f"{k if short.count(s) > 1 else s}={m[k]:.4f}" for k, s in zip(keys, short))


class TailAverage:
    """`average_last=K`: the mean of the global model over the last K rounds (tail averaging,
    Polyak and Juditsky 1992; SWA, Izmailov et al. 2018). Training goes on from each round's
    own model; evaluations from round num_rounds-K+1 on, and the saved model, use the mean,
    which damps the server optimiser's round-to-round noise."""

    def __init__(self, cfg: RunConfig):
        k = int(cfg["average_last"])
        self.start = max(1, cfg["num_rounds"] - k + 1) if k > 0 else None  # K > rounds: all of them
        self.mean: dict[str, np.ndarray] | None = None
        self.count = 0

    def update(self, rnd: int, arrays: ArrayRecord) -> None:
        if self.start is None or rnd < self.start:
            return
        self.count += 1
        new = {k: v.numpy() for k, v in arrays.items()}
        if self.mean is None:
            self.mean = {k: v.astype(np.float64) for k, v in new.items()}
        else:
            for k, v in new.items():
                self.mean[k] += (v - self.mean[k]) / self.count

    def model(self, arrays: ArrayRecord) -> ArrayRecord:
        """What to evaluate and save: the running mean once it has begun, else `arrays`."""
        if self.mean is None:
            return arrays
        return ArrayRecord({k: Array(self.mean[k].astype(a.numpy().dtype)) for k, a in arrays.items()})

    def state_dict(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.count = state.get("mean"), int(state.get("count", 0))


class Selection:
    """split=leave_one_out: the published protocol reports the test figure of the round with the
    best validation HR@K of its first ranking task (tasks.selection_key; data/loo.select_round: a
    tie goes to the later round); this keeps
    that round's evaluated model, so the model saved is the one reported. Other splits: the
    last round's."""

    def __init__(self, cfg: RunConfig, state: dict | None = None):
        on = cfg["split"]["name"] == "leave_one_out"
        self.key = selection_key(cfg["tasks"]) if on else None  # None: no selection, the last round's model
        self.round, self.value, self.arrays = None, None, None
        if state:
            self.round, self.value = state["round"], state["value"]
            self.arrays = ArrayRecord({k: Array(v) for k, v in state["arrays"].items()})

    def update(self, rnd: int, evaluation: dict, arrays: ArrayRecord) -> None:
        v = evaluation.get(self.key) if self.key else None
        if v is not None and (self.value is None or v >= self.value):
            self.round, self.value, self.arrays = rnd, v, arrays

    def chosen(self, last_round: int, last: ArrayRecord) -> tuple[int, ArrayRecord]:
        """(the round whose model is saved, that model)."""
        return (self.round, self.arrays) if self.arrays is not None else (last_round, last)

    def state_dict(self) -> dict | None:
        if self.arrays is None:
            return None
        return {"round": self.round, "value": self.value, "arrays": {k: v.numpy() for k, v in self.arrays.items()}}


def train_round(strategy, grid: Grid, cfg: RunConfig, rnd: int, arrays: ArrayRecord):
    """One plain training round: (new arrays or None, train metrics, the metrics.jsonl row,
    the reason the round was skipped or None)."""
    train_cfg = ConfigRecord({"local-epochs": cfg["local_epochs"]})
    tgrid = sampling_grid(cfg, wait_for_nodes(grid, needed_nodes(strategy, "train"), cfg["round_timeout"], rnd,
                                              "train"))
    seed_sampling(cfg, "train", rnd)
    msgs = list(strategy.configure_train(rnd, arrays, train_cfg, tgrid))
    down = _bytes(m.content["arrays"] for m in msgs)
    checks = TrainChecks(cfg, msgs)  # screening.py: each reply checked as it comes where the grid reads them in parts
    replies = by_node(send_train(grid, msgs, cfg["round_timeout"], checks))
    check_refusals(f"round {rnd} train", msgs, replies, "the clients' privacy floors do not accept this run's "
                   f"privacy={cfg['privacy']['name']}")
    check_replies(cfg, rnd, "train", msgs, replies)
    kept, invalid, clipped = screen_train(cfg, rnd, msgs, replies, checks)  # the strategy sees valid ones only
    ok = [r for r in kept if not r.has_error()]
    up = _bytes(r.content["arrays"] for r in ok)
    counts = failures.round_counts(msgs, replies, invalid)
    skipped = failures.skip_reason(counts, cfg)
    agg, train_metrics = (None, None) if skipped else strategy.aggregate_train(rnd, kept)
    row = {"round": rnd, **counts, "bytes_down": int(down), "bytes_up": int(up),
           "bytes_up_per_client": int(up / max(len(ok), 1))}
    if cfg["robust"]["on_large_update"] == "clip" and cfg["robust"]["max_update_norm"]:
        row["clipped"] = clipped
    return agg, train_metrics, row, skipped


def run_rounds(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict:
    """The run: its rounds, evaluations and checkpoints; the summary."""
    try:
        return _run_rounds(grid, cfg, out_dir)
    finally:  # what the run froze (gc.freeze, below) is the collector's again: a sweep's next run in this process
        gc.unfreeze()


def _run_rounds(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict:
    random.seed(cfg["seed"])  # Flower samples nodes with `random`
    privacy = ServerPrivacy(cfg, build_strategy(cfg))  # DP wrappers, accountant, SecAgg+ (privacy.py)
    strategy = privacy.strategy
    arrays = initial_arrays(cfg)
    metrics_path = out_dir / "metrics.jsonl"
    t_start = time.time()
    history = []
    n_rounds = cfg["num_rounds"]
    ckpt = Checkpointer(out_dir, cfg, grid)
    tail = TailAverage(cfg)
    faults.quiet_injected_drops()
    first = 1
    if cfg.get("resume"):
        first, saved, history = resume(ckpt, strategy, metrics_path)
        arrays = saved if saved is not None else arrays
        if ckpt.extra.get("privacy"):
            privacy.load_state_dict(ckpt.extra["privacy"])
        if ckpt.extra.get("tail_average"):
            tail.load_state_dict(ckpt.extra["tail_average"])
    selection = Selection(cfg, ckpt.extra.get("selection") if cfg.get("resume") else None)
    item_item, gram_up = item_item_round(grid, cfg, strategy)  # click_mix: EASE's B, rows sent with evaluations
    # what is built so far (the data, the strategy, EASE's B) lives for the whole run: Python's cyclic
    # collector stops walking it in every full collection (about 0.3 s a round at ML-1M shape) until
    # the run ends (run_rounds unfreezes it)
    gc.freeze()
    if item_item is not None and item_item.dp_release is not None:  # a DP Gram: one more release, accounted
        gram_dp = privacy.gram_released(*item_item.dp_release)
        log.info("click_mix: the DP item Gram (noise multiplier %.4g) took epsilon to %.4f",
                 gram_dp["gram_noise_multiplier"], gram_dp["epsilon_after_gram"])
    last_eval: dict = next((dict(h["test"]) for h in reversed(history) if "test" in h), {})
    last_eval_round = next((h["round"] for h in reversed(history) if "test" in h), 0)
    t_rounds = time.time()  # the time left counts rounds only, not the item Gram before them
    for rnd in range(first, n_rounds + 1):
        if privacy.stop_reason(rnd):
            log.warning("stopping before round %d: %s", rnd, privacy.stopped)
            break
        t0 = time.time()
        rate = set_server_rate(strategy, cfg, rnd)  # server_lr.schedule
        if privacy.secure_round is not None:  # SecAgg+ (secagg_round.py)
            seed_sampling(cfg, "train", rnd)
            agg, train_metrics, row, skipped = privacy.secure_round(rnd, arrays, grid)
            if agg is not None:  # the server optimiser's step from the released mean, then server_decay
                agg = privacy.server_step(rnd, arrays, agg)
        else:
            agg, train_metrics, row, skipped = train_round(strategy, grid, cfg, rnd, arrays)
        if agg is not None:
            check_finite(agg, rnd)
            arrays = agg
            tail.update(rnd, arrays)
        else:
            skipped = skipped or f"no update aggregated ({row['answered']} of {row['sampled']} clients answered)"
            log.warning("round %d skipped: %s", rnd, skipped)
        row["train"] = dict(train_metrics or {})
        if rate is not None:
            row["server_lr"] = rate
        if skipped:
            row["skipped"] = skipped
        row.update(privacy.after_round(rnd, agg is not None, row["answered"]))
        if rnd % cfg["eval_every"] == 0 or rnd == n_rounds:
            egrid = wait_for_nodes(grid, needed_nodes(strategy, "evaluate"), cfg["round_timeout"], rnd, "evaluate")
            seed_sampling(cfg, "evaluate", rnd)
            evaluated = tail.model(arrays)
            emsgs = list(strategy.configure_evaluate(rnd, evaluated, ConfigRecord({}), egrid))
            row["bytes_down"] += _bytes(m.content["arrays"] for m in emsgs)
            ereplies, added = send_evaluate(grid, cfg, emsgs, item_item, final=rnd == n_rounds)
            row["bytes_down"] += added
            check_replies(cfg, rnd, "evaluate", emsgs, ereplies)
            ereplies, row["invalid_evaluate"] = screen_evaluate(rnd, ereplies)  # screening.py
            row["failed_evaluate"] = len(emsgs) - sum(1 for r in ereplies if not r.has_error())
            ev = strategy.aggregate_evaluate(rnd, ereplies)
            if ev is not None:
                last_eval = dict(ev)
                row["test"] = last_eval
                selection.update(rnd, last_eval, evaluated)
            else:  # every evaluation failed: say why in the row (the metrics below are an earlier round's)
                row["evaluate_error"] = next((r.error.reason for r in ereplies if r.has_error()),
                                             f"none of {len(emsgs)} evaluations answered")
        row["seconds"] = round(time.time() - t0, 3)
        with round_commit():  # Ctrl-C waits until the row and its checkpoint are both written
            append_jsonl(metrics_path, row)
            history.append(row)
            ckpt.save(rnd, arrays, strategy, history,
                      extra={"privacy": privacy.state_dict(), "tail_average": tail.state_dict(),
                             "selection": selection.state_dict()})
        if "test" in row:
            last_eval_round = rnd
        losses = " ".join(f"{k[5:]}={v:.3f}" for k, v in row["train"].items() if k.startswith("loss."))
        log.info("%s  clients %d/%d  loss %s  %s", progress("round", rnd, n_rounds, t_start, t_rounds, first),
                 row["answered"], row["sampled"], losses,
                 f"test@{last_eval_round} " + format_metrics(last_eval, cfg["tasks"]) if last_eval else "")
    if privacy.stopped and history and "test" not in history[-1]:
        # The budget ended the run between evaluations: evaluate the last released model.
        rnd = history[-1]["round"]
        emsgs = list(strategy.configure_evaluate(rnd, tail.model(arrays), ConfigRecord({}), grid))
        ereplies, _ = screen_evaluate(rnd, send_evaluate(grid, cfg, emsgs, item_item, final=True)[0])
        ev = strategy.aggregate_evaluate(rnd, ereplies)
        last_eval = dict(ev) if ev is not None else last_eval
    no_eval, no_metrics = next((h for h in reversed(history) if "evaluate_error" in h or "test" in h), None), ""
    if no_eval is not None and "evaluate_error" in no_eval:
        if last_eval:
            log.warning("round %d: no client's evaluation succeeded (%s); the metrics reported are round %d's",
                        no_eval["round"], no_eval["evaluate_error"], last_eval_round)
        else:
            no_metrics = (f"round {no_eval['round']}: no client's evaluation succeeded ({no_eval['failed_evaluate']} "
                          f"failed; the first: {no_eval['evaluate_error']}), so the run has no metrics; its rounds "
                          f"are in {out_dir}/metrics.jsonl")
    if cfg["save_model"]:
        final = tail.model(arrays)  # average_last: the averaged model, the one evaluated
        saved_round, final = selection.chosen(n_rounds, final)  # leave-one-out: the round reported
        saved_model.save(out_dir, cfg, {k: v.numpy() for k, v in final.items()}, federation_meta(cfg), saved_round)
    summary = {"metrics": last_eval, "seconds": round(time.time() - t_start, 2), "rounds": len(history),
               "bytes_up_total": sum(h["bytes_up"] for h in history) + gram_up, "item_gram_bytes_up": gram_up,
               "bytes_down_total": sum(h["bytes_down"] for h in history), "privacy": privacy.summary()}
    if no_metrics:
        summary["no_metrics"] = no_metrics  # simulate.run writes the summary, then fails with this line
    return summary


def make_server_app(cfg: RunConfig | None = None, result_sink: dict | None = None) -> ServerApp:
    """A ServerApp bound to `cfg`; `result_sink` (a dict) receives the run summary."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if cfg is None:  # a deployed run (flwr run): config from the run config, own run folder
            deployed.serve(grid, context, run_rounds)
            return
        run_cfg = config_from_context(context, cfg)
        out_dir = Path(run_cfg.get("output_dir") or "outputs/deployed")
        out_dir.mkdir(parents=True, exist_ok=True)
        if run_cfg["backend"]["name"] == "ray":  # Flower's engine is still starting: not round 1's time
            from ..engine.ray import warm_up
            warm_up(grid, run_cfg["backend"])
        summary = run_rounds(grid, run_cfg, out_dir)
        if result_sink is not None:
            result_sink.update(summary)

    return app


app = make_server_app()
