"""What a curious server learns: item sets and like labels recovered from what it receives.

    python benchmarks/privacy_attacks.py --data DIR/ml-100k              # 943 clients, 2 rounds (~15 min, 2 cores)
    python benchmarks/privacy_attacks.py --dataset synthetic --clients 20 --rounds 1   # a quick look

For every privacy mode x exchange x click_mix, runs the federation with a grid that
records every message the server sends and every reply it receives (train replies,
SecAgg+ stage replies, Gram query replies), exactly as received. Then, from that
record and what is public (the run's config.json, its `seed` included) only, it
attacks each client's training item set and like labels (fedmtl/attacks.py):

- bias-column change: items whose rating or like column of `encoder.item_bias` moved;
  like = the sign of the like column's move;
- row presence / row update norm (exchange=sparse): the rows sent, ranked by their update;
- item-embedding norm (exchange=dense): rows of `encoder.item_emb` that moved;
- Gram items (click_mix): the items of the client's Gram part; "Gram query (active)":
  after the last round the server asks every client for its Gram part, whatever the mode;
- SecAgg+ masked bias: the bias-column attack on the masked vector;
- noise regenerated from the seed (DP modes): NumPy's global RNG re-seeded with `seed`
  (as fedmtl seeded Flower's DP noise before issue 24), the noise redrawn in the order the
  server saw the draws happen and subtracted: local_dp per client (then the bias-column
  attack), central_dp / client_clip_dp / secagg_dp on the released aggregate (the
  residual against the observed noise, or the regenerated noise's share of the released change).

Figures: means over clients of round 1's uploads (the JSON has every round): precision,
recall and exact-set rate of the guessed set, precision of the top-k guess at k = the
client's true item count, chance (the precision of a random guess: true count / items),
and like-label accuracy on the recovered true items. The ground truth is the run's split.
Combinations the config refuses are listed with its one-line reason; crashes with theirs.
Writes privacy_attacks.md and privacy_attacks.json to --out (default outputs/privacy_attacks/).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # fedmtl from this checkout, installed or not
from fedmtl import attacks  # noqa: E402
from fedmtl.errors import FedMTLError  # noqa: E402

MODES = ("none", "central_dp", "client_clip_dp", "local_dp", "secagg", "secagg_dp")
EXCHANGES = ("dense", "sparse")
BIAS, EMB = "encoder.item_bias.weight", "encoder.item_emb.weight"
NODE_ID_OFFSET = 1000  # fedmtl/engine/inprocess.py: node id = 1000 + partition id


# --- recording ------------------------------------------------------------------------------------


def _snap(msg, cache: dict) -> dict:
    """A copy of one message as it stands now (the server's DP wrappers edit replies in place)."""
    md = msg.metadata
    out = {"type": md.message_type, "dst": int(md.dst_node_id), "src": int(md.src_node_id)}
    if msg.has_error():
        out["error"] = str(msg.error.reason)
        return out
    c = msg.content
    arrays = {}
    for name, rec in c.array_records.items():
        if id(rec) not in cache:  # the messages of one send share their records: copy once
            cache[id(rec)] = {k: np.array(v.numpy(), copy=True) for k, v in rec.items()}
        arrays[name] = cache[id(rec)]
    out["arrays"] = arrays
    out["configs"] = {name: dict(rec.items()) for name, rec in c.config_records.items()}
    out["metrics"] = {name: dict(rec.items()) for name, rec in c.metric_records.items()}
    return out


def _gram_chunk(sent: list[dict]) -> bool:
    """Whether these messages ask for a chunk of click_mix's secure item Gram (secure_gram.GRAM_KEY
    in the FitIns config of SecAgg+'s collect stage)."""
    from fedmtl.federation.secure_gram import GRAM_KEY
    return any(GRAM_KEY in rec for s in sent[:1] for rec in s.get("configs", {}).values())


def _sizes(snap: dict) -> dict:
    """A reply's snapshot with its masked vectors replaced by their sizes."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    cfg = snap.get("configs", {}).get(RECORD_KEY_CONFIGS)
    if cfg is not None and Key.MASKED_PARAMETERS in cfg:
        cfg[Key.MASKED_PARAMETERS] = [len(b) for b in cfg[Key.MASKED_PARAMETERS]]
    return snap


@contextmanager
def recording(record: list, probe_gram: bool):
    """fedmtl's in-process grid, recording every exchange into `record` ([{tag, sent,
    replies}]), and with `probe_gram`, asking every client for its Gram part before it closes."""
    from unittest import mock

    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common import MessageType

    import fedmtl.engine.inprocess as engine

    class RecordingGrid(engine.InProcessGrid):
        tag = "run"

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            cache: dict = {}
            sent = [_snap(m, cache) for m in messages]
            replies = list(super().send_and_receive(messages, timeout=timeout))
            if _gram_chunk(sent):  # a chunk of the secure Gram: its masked vectors (10.7 GB at 943
                # clients) are kept by size only; the attacks read the training rounds
                record.append({"tag": "gram-chunk", "sent": [], "replies": [_sizes(_snap(r, {})) for r in replies]})
            else:
                record.append({"tag": self.tag, "sent": sent, "replies": [_snap(r, {}) for r in replies]})
            return replies

        def close(self):
            if probe_gram:
                self.tag = "probe"
                quiet = logging.getLogger("fedmtl")  # one refusal line per client would bury the progress
                level, quiet.level = quiet.level, logging.ERROR
                try:
                    self.send_and_receive([Message(RecordDict({"config": ConfigRecord({"query": "gram"})}),
                                                   dst_node_id=n, message_type=MessageType.QUERY)
                                           for n in self.get_node_ids()])
                except Exception as e:  # the probe's own failure is a finding, not a crash
                    record.append({"tag": "probe", "sent": [], "replies": [], "error": f"{type(e).__name__}: {e}"})
                finally:
                    quiet.level = level
            super().close()

    with mock.patch.object(engine, "InProcessGrid", RecordingGrid):
        yield


# --- what the server received, decoded ------------------------------------------------------------


def _stage(snap: dict) -> str | None:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    cfg = snap.get("configs", {}).get(RECORD_KEY_CONFIGS)
    return None if cfg is None or Key.STAGE not in cfg else str(cfg[Key.STAGE])


def decode(record: list) -> dict:
    """The record, by round: plain train uploads {node: (sent arrays, reply arrays, weight)},
    SecAgg+ masked vectors {node: [arrays]} with the collect stage's send order, the released
    model (evaluation messages' arrays), Gram items (run and probe)."""
    from flwr.common import MessageType, bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    out = {"train": {}, "train_order": {}, "masked": {}, "masked_order": {}, "released": {}, "gram": {},
           "probe": {}, "probe_errors": {}, "probe_error": None}
    secagg_round = 0
    for ev in record:
        if ev.get("error"):
            out["probe_error"] = ev["error"]
        sent = {s["dst"]: s for s in ev["sent"]}
        replies = ev["replies"]
        if ev["tag"] == "gram-chunk":  # the secure Gram's rounds: sizes only (recording)
            continue
        if ev["tag"] == "probe":
            for r in replies:
                if "error" in r:
                    out["probe_errors"][r["src"]] = r["error"]
                elif "gram" in r["arrays"]:
                    out["probe"][r["src"]] = np.asarray(r["arrays"]["gram"]["items"], dtype=np.int64)
                else:
                    out["probe_errors"][r["src"]] = "no Gram part in the reply"
            continue
        first = ev["sent"][0] if ev["sent"] else None
        if first is None:
            continue
        stage = _stage(first)
        if stage is not None:
            if stage == Stage.COLLECT_MASKED_VECTORS:
                secagg_round += 1
                out["masked_order"][secagg_round] = [s["dst"] for s in ev["sent"]]
                out["masked"][secagg_round] = {
                    r["src"]: [bytes_to_ndarray(b) for b in r["configs"][RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
                    for r in replies if "error" not in r}
            continue
        if first["type"] == MessageType.TRAIN and "arrays" in first.get("arrays", {}):
            rnd = int(first["configs"]["config"]["server-round"])
            out["train_order"][rnd] = [s["dst"] for s in ev["sent"]]
            out["train"][rnd] = {r["src"]: (sent[r["src"]]["arrays"]["arrays"], r["arrays"]["arrays"],
                                            float(r["metrics"]["metrics"].get("num-examples", 1.0)))
                                 for r in replies if "error" not in r and "arrays" in r["arrays"]}
        elif first["type"] == MessageType.EVALUATE and "arrays" in first.get("arrays", {}):
            rnd = int(first["configs"].get("config", {}).get("server-round", len(out["released"]) + 1))
            out["released"].setdefault(rnd, first["arrays"]["arrays"])
        elif first["type"] == MessageType.QUERY:
            for r in replies:
                if "error" not in r and "gram" in r["arrays"]:
                    out["gram"][r["src"]] = np.asarray(r["arrays"]["gram"]["items"], dtype=np.int64)
    return out


def upload_delta(sent: dict, reply: dict) -> tuple[dict, np.ndarray | None, list]:
    """({name: update, full size}, the rows of a sparse upload or None, the sparse rows' updates)."""
    from fedmtl.federation import sparse

    if sparse.ROWS_KEY in reply:
        shapes = {k: v.shape for k, v in sent.items()}
        rows, upd = sparse.unpack(reply, shapes)
        full, row_deltas = {}, []
        for name, u in upd.items():
            if name in sparse.ROW_TABLES:
                f = np.zeros(shapes[name])
                f[rows] = u
                full[name] = f
                row_deltas.append(u)
            else:
                full[name] = u
        return full, rows, row_deltas
    return {k: reply[k].astype(np.float64) - sent[k].astype(np.float64) for k in sent if k in reply}, None, []


# --- attacks over the record -------------------------------------------------------------------------


class Truth:
    """Each node's true training items and like labels (rating >= 4), from the run's split."""

    def __init__(self, fed):
        self.fed, self.n_items, self.cache = fed, int(fed.dataset.n_items), {}

    def __call__(self, node: int):
        if node not in self.cache:
            data = self.fed.client_data(self.fed.clients[node - NODE_ID_OFFSET])
            items, ratings = data.train_i.numpy(), data.train_r.numpy()
            best = {}
            for i, r in zip(items, ratings):
                best[int(i)] = max(best.get(int(i), 0.0), float(r))
            uniq = np.array(sorted(best), dtype=np.int64)
            self.cache[node] = (uniq, np.array([best[i] >= 4 for i in uniq]))
        return self.cache[node]


def _cols(cfg: dict) -> tuple[int | None, int | None]:
    tasks = list(cfg["tasks"])
    return (tasks.index("rating") if "rating" in tasks else None, tasks.index("like") if "like" in tasks else None)


def _score_all(guesses: dict, truth: Truth, rng) -> dict:
    per = [attacks.score_guess(g, *truth(node), truth.n_items, rng) for node, g in sorted(guesses.items())]
    return attacks.summarise(per)


def _names_shapes(dec: dict) -> list[tuple[str, tuple]]:
    rel = next(iter(dec["released"].values()), None)
    return [] if rel is None else [(k, v.shape) for k, v in rel.items()]


def _noise_std(cfg: dict, summary: dict) -> float:
    p = cfg["privacy"]
    z = (summary.get("privacy") or {}).get("noise_multiplier", p.get("noise_multiplier"))
    if p["name"] == "local_dp":
        sens = p.get("sensitivity") or p["clipping_norm"]
        return float(sens) * math.sqrt(2 * math.log(1.25 / p["delta"])) / float(p["epsilon"])
    from fedmtl.federation.accounting import sample_size
    if p["name"] == "secagg_dp":
        return float(z) * float(p["clipping_norm"]) / math.sqrt(sample_size(cfg))
    return float(z) * float(p["clipping_norm"]) / sample_size(cfg)


def _clip(update: dict, c: float) -> dict:
    norm = math.sqrt(sum(float((u ** 2).sum()) for u in update.values()))
    scale = min(1.0, c / norm) if norm > 0 else 1.0
    return {k: u * scale for k, u in update.items()}


def attack_run(cfg: dict, record: list, fed, summary: dict) -> dict:
    """Every attack that applies to this run's record: {attack: {round: figures}}."""
    rng = np.random.default_rng(0)  # tie-breaks of the top-k guesses only
    truth, n_items = Truth(fed), int(fed.dataset.n_items)
    rating_col, like_col = _cols(cfg)
    mode, seed = cfg["privacy"]["name"], int(cfg["seed"])
    dec = decode(record)
    res: dict = {}

    def put(name, rnd, figures):
        res.setdefault(name, {})[rnd] = figures

    # plain uploads: bias column, embedding norm, rows
    for rnd, ups in sorted(dec["train"].items()):
        bias, emb, pres, rnorm = {}, {}, {}, {}
        for node, (sent, reply, _) in ups.items():
            delta, rows, row_deltas = upload_delta(sent, reply)
            if BIAS in delta:  # an upload as trained: an untouched entry moved by exactly 0
                bias[node] = attacks.bias_change(delta[BIAS], rating_col, like_col, tol=0.0)
            if rows is None and EMB in delta:
                emb[node] = attacks.emb_norm(delta[EMB], tol=0.0)
            if rows is not None:
                pres[node] = attacks.row_presence(rows, n_items)
                rnorm[node] = attacks.row_norm(row_deltas, rows, n_items)
        for name, g in (("bias-column change", bias), ("item-embedding norm", emb), ("row presence", pres),
                        ("row update norm", rnorm)):
            if g:
                put(name, rnd, _score_all(g, truth, rng))

    # SecAgg+: the masked vectors (masked parameters = [weight factor, *arrays, (losses)])
    names = [n for n, _ in _names_shapes(dec)]
    for rnd, vecs in sorted(dec["masked"].items()):
        if BIAS not in names:
            break
        k = names.index(BIAS) + 1
        g = {node: attacks.masked_bias_change(v[k].reshape(len(v[k]), -1), rating_col, like_col)
             for node, v in vecs.items() if len(v) > k}
        put("bias-column change (masked vector)", rnd, _score_all(g, truth, rng))

    # Gram parts: the run's own query (click_mix), and the server's probe after the run
    if dec["gram"]:
        put("Gram items", 0, _score_all({n: attacks.gram_items(i, n_items) for n, i in dec["gram"].items()},
                                        truth, rng))
    probe = {n: attacks.gram_items(i, n_items) for n, i in dec["probe"].items()}
    fig = _score_all(probe, truth, rng) if probe else {"clients": 0}
    fig["answered"], fig["refused"] = len(dec["probe"]), len(dec["probe_errors"])
    if dec["probe_errors"]:
        fig["refusal"] = next(iter(dec["probe_errors"].values()))
    if dec["probe_error"]:
        fig["error"] = dec["probe_error"]
    put("Gram query (active)", 0, fig)

    if mode in ("local_dp", "central_dp", "client_clip_dp", "secagg_dp"):
        res.update(regenerated_noise(cfg, dec, summary, truth, rng))
    return res


def regenerated_noise(cfg: dict, dec: dict, summary: dict, truth: Truth, rng) -> dict:
    """Re-seed NumPy's RNG with the public `seed`, redraw the noise in the order the draws
    happened (one process: clients run in the order the server sent them), and measure how
    much of the observed noise it explains (attacks.noise_fit: its scale is fitted, so a
    std the attacker got wrong does not hide a regenerated stream). local_dp: subtract it
    from each upload, then the bias-column attack."""
    mode, seed, std = cfg["privacy"]["name"], int(cfg["seed"]), _noise_std(cfg, summary)
    rating_col, like_col = _cols(cfg)
    name = "noise regenerated from seed"
    out: dict = {}
    if mode == "local_dp":  # each client: one draw per uploaded array, in the order sent
        draws, keys = [], []
        for rnd in sorted(dec["train"]):
            for node in dec["train_order"][rnd]:
                if node in dec["train"][rnd]:
                    reply = dec["train"][rnd][node][1]
                    draws += [("normal", std, v.shape, v.dtype) for v in reply.values()]
                    keys += [(rnd, node, k) for k in reply]
        noise = dict(zip(keys, attacks.regenerate_gaussian(seed, draws)))
        for rnd in sorted(dec["train"]):
            raw = {node: {k: reply[k].astype(np.float64) - sent[k].astype(np.float64) for k in reply}
                   for node, (sent, reply, _) in dec["train"][rnd].items()}
            fit = attacks.noise_fit([d for r in raw.values() for d in r.values()],
                                    [noise[(rnd, node, k)] for node, r in raw.items() for k in r])
            guesses = {}
            for node, r in raw.items():
                if BIAS in r:
                    # the rating / like entries of untouched items are noise alone: their median
                    # ratio to the redrawn noise is its exact scale, if the stream was redrawn
                    n = noise[(rnd, node, BIAS)].astype(np.float64)
                    ok = n != 0
                    a = float(np.median(r[BIAS][ok] / n[ok])) if ok.any() else 1.0
                    guesses[node] = attacks.bias_change(r[BIAS] - a * n, rating_col, like_col)
            out.setdefault(name + ", then bias-column change", {})[rnd] = {**_score_all(guesses, truth, rng), **fit}
        return out
    if mode in ("central_dp", "client_clip_dp"):  # the server: one draw per aggregated array, every round
        rounds = sorted(r for r in dec["train"] if r in dec["released"])
        if cfg["privacy"].get("clipping", "fixed") != "fixed":
            return {name + " (released aggregate)": {r: {"note": "adaptive clipping: not attacked"} for r in rounds}}
        order = list(dec["released"][rounds[0]]) if rounds else []
        draws = [("normal", std, dec["released"][r][k].shape, dec["released"][r][k].dtype)
                 for r in rounds for k in order]
        regen = attacks.regenerate_gaussian(seed, draws)
        c = float(cfg["privacy"]["clipping_norm"])
        for j, rnd in enumerate(rounds):
            ups = dec["train"][rnd]
            sent = next(iter(ups.values()))[0]
            total = sum(w for _, _, w in ups.values())
            mean = {k: np.zeros(sent[k].shape) for k in order}
            for s, reply, w in ups.values():  # the noiseless aggregate, from the uploads
                upd = {k: reply[k].astype(np.float64) - s[k].astype(np.float64) for k in order}
                if mode == "central_dp":
                    upd = _clip(upd, c)
                for k in order:
                    mean[k] += w / total * upd[k]
            observed = [dec["released"][rnd][k].astype(np.float64) - sent[k] - mean[k] for k in order]
            fit = attacks.noise_fit(observed, regen[j * len(order):(j + 1) * len(order)])
            out.setdefault(name + " (released aggregate)", {})[rnd] = {**fit, "noise_std": std}
        return out
    # secagg_dp: each client adds its share, then SecAgg+'s quantiser draws its rounding
    names_shapes = _names_shapes(dec)
    draws, index = [], []
    for rnd in sorted(dec["masked"]):
        for node in dec["masked_order"][rnd]:
            if node in dec["masked"][rnd]:
                index.append((rnd, len(draws)))
                draws += [("normal", std, s, np.float32) for _, s in names_shapes]
                draws += [("rand", s) for _, s in names_shapes]
    regen = attacks.regenerate_gaussian(seed, draws)
    prev = None
    for rnd in sorted(dec["masked"]):
        if rnd not in dec["released"]:
            continue
        shares = [regen[i:i + len(names_shapes)] for r, i in index if r == rnd]
        mean_noise = [sum(s[a] for s in shares) / len(shares) for a in range(len(names_shapes))]
        sent, prev = prev, dec["released"][rnd]
        if sent is None:  # round 1 starts from the seeded initial model, public too
            from fedmtl.federation.server_app import initial_arrays
            sent = {k: v.numpy() for k, v in initial_arrays(cfg).items()}
        change = [dec["released"][rnd][k].astype(np.float64) - sent[k].astype(np.float64) for k, _ in names_shapes]
        out.setdefault(name + " (released sum)", {})[rnd] = {**attacks.noise_fit(change, mean_noise),
                                                             "noise_std": std}
    return out


# --- the grid of combinations -------------------------------------------------------------------------


def overrides_for(args, mode: str, exchange: str, mix: float) -> list[str]:
    if args.dataset == "synthetic":
        ov = ["dataset=synthetic"]
    else:
        ov = [f"dataset={args.dataset}", f"dataset.path={args.data}"]
    aggregate = args.aggregate if args.aggregate != "auto" else ("all" if mode == "none" else "encoder")
    ov += [f"num_clients={args.clients}", f"num_rounds={args.rounds}", "eval_every=1", "average_last=0",
           f"seed={args.seed}", f"aggregate={aggregate}", f"privacy={mode}", f"exchange={exchange}",
           f"click_mix.weight={mix}", "backend=inprocess", f"backend.workers={args.workers}", "save_model=false", "checkpoint_every=0"]
    if mode != "none":
        ov.append("strategy=fedavg")
    return ov + list(args.set)


def run_one(args, mode: str, exchange: str, mix: float, out: Path) -> dict:
    from fedmtl.config import compose
    from fedmtl.data import federation_for
    from fedmtl.simulate import run

    row = {"privacy": mode, "exchange": exchange, "click_mix": mix}
    ov = overrides_for(args, mode, exchange, mix)
    row["overrides"] = ov
    try:
        cfg = compose(ov)
    except FedMTLError as e:
        return {**row, "refused": str(e)}
    run_dir = out / "runs" / f"{mode}-{exchange}-mix{mix:g}"
    record: list = []
    t0 = time.time()
    try:
        with recording(record, probe_gram=not args.no_probe):
            summary = run(cfg, run_dir)
    except Exception as e:  # a crash is a finding: one line, with where it was raised
        import traceback
        where = traceback.extract_tb(e.__traceback__)[-1]
        return {**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                                f"({Path(where.filename).name}:{where.lineno})", "seconds": round(time.time() - t0, 1)}
    row["seconds"] = round(time.time() - t0, 1)
    public = json.loads((run_dir / "config.json").read_text())  # the attacker's view of the config
    row["attacks"] = attack_run(public, record, federation_for(cfg), summary)
    row["privacy_summary"] = summary.get("privacy")
    return row


# --- report ------------------------------------------------------------------------------------


def _f(v, digits=3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table(rows: list[dict], rnd: int = 1) -> str:
    head = ("| privacy | exchange | click_mix | attack | precision | recall | exact sets | top-k precision | "
            "chance | like acc | note |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        key = f"| {r['privacy']} | {r['exchange']} | {r['click_mix']:g} |"
        if "refused" in r:
            lines.append(f"{key} - | | | | | | | refused by config: {r['refused']} |")
            continue
        if "error" in r:
            lines.append(f"{key} - | | | | | | | error: {r['error']} |")
            continue
        for name, by_round in r["attacks"].items():
            f = by_round.get(rnd, by_round.get(0, {}))
            note = []
            if "cosine" in f:
                note.append(f"regenerated noise: cosine {f['cosine']:.3f} with the observed, residual "
                            f"{f['residual']:.3g} (0: regenerated, 1: independent)")
            if name == "Gram query (active)":
                note.append(f"{f.get('answered', 0)} answered, {f.get('refused', 0)} refused"
                            + (f" ({f['refusal'][:90]})" if f.get("refusal") else "")
                            + (f"; {f['error']}" if f.get("error") else ""))
            if f.get("note"):
                note.append(f["note"])
            exact = f.get("exact")
            exact = "-" if exact is None else f"{exact * f['clients']:.0f}/{f['clients']}"
            lines.append(f"{key} {name} | {_f(f.get('precision'))} | {_f(f.get('recall'))} | "
                         f"{exact} | "
                         f"{_f(f.get('topk_precision'))} | {_f(f.get('chance'))} | {_f(f.get('like_acc'))} | "
                         f"{'; '.join(note)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="movielens100k", choices=["movielens100k", "movielens1m", "synthetic"])
    ap.add_argument("--data", help="the MovieLens folder (GroupLens layout), e.g. DIR/ml-100k")
    ap.add_argument("--clients", type=int, help="clients (default: 943 for MovieLens-100k, 50 synthetic)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES), help="privacy modes, comma-separated")
    ap.add_argument("--exchanges", default=",".join(EXCHANGES))
    ap.add_argument("--click-mix", default="0,0.1", help="click_mix.weight values, comma-separated")
    ap.add_argument("--aggregate", default="auto", choices=["auto", "encoder", "all"],
                    help="auto: all (the recipe's) for privacy=none, encoder (the default) otherwise")
    ap.add_argument("--workers", type=int, default=1, help="backend.workers (1: clients in this process)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="more overrides, e.g. model.dim=8")
    ap.add_argument("--no-probe", action="store_true", help="skip the active Gram query after each run")
    ap.add_argument("--out", type=Path, default=Path("outputs/privacy_attacks"))
    args = ap.parse_args(argv)
    if args.dataset != "synthetic" and not args.data:
        ap.error(f"--data: --dataset {args.dataset} needs the MovieLens folder (e.g. --data DIR/ml-100k)")
    if args.clients is None:
        args.clients = 943 if args.dataset == "movielens100k" else (6040 if args.dataset == "movielens1m" else 50)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"--modes {bad[0]}: expected some of {list(MODES)}")
    combos = [(m, e, float(w)) for m in modes for e in args.exchanges.split(",") for w in args.click_mix.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/privacy_attacks.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = (f"`{command}`: {args.dataset}{'' if args.dataset == 'synthetic' else ' (' + str(args.data) + ')'}, "
              f"{args.clients} clients, {args.rounds} rounds, seed {args.seed}; figures: round 1's uploads, "
              "means over clients")
    rows = []
    t_all = time.time()
    for k, (mode, exchange, mix) in enumerate(combos, 1):
        print(f"[{k}/{len(combos)}] privacy={mode} exchange={exchange} click_mix={mix:g} ...", file=sys.stderr,
              flush=True)
        t0 = time.time()
        row = run_one(args, mode, exchange, mix, args.out)
        status = "refused" if "refused" in row else "error" if "error" in row else "done"
        print(f"[{k}/{len(combos)}] {status} in {time.time() - t0:.0f}s"
              + (f": {row.get('refused') or row.get('error')}" if status != "done" else ""), file=sys.stderr,
              flush=True)
        rows.append(row)
        (args.out / "privacy_attacks.json").write_text(
            json.dumps({"command": command, "header": header, "rows": rows}, indent=1, default=str))
    md = f"{header}\n\n{table(rows)}\n"
    (args.out / "privacy_attacks.md").write_text(md)
    print(md)
    print(f"({time.time() - t_all:.0f}s; {args.out / 'privacy_attacks.json'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
