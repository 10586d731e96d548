"""Speed, memory and communication of fedmtl's engines on one workload.

    python benchmarks/speed.py [--ml-path DIR/ml-100k] [--rounds 3] [--skip-ray] [--scale]
                               [--only-exchange | --only-scale | --skip-exchange]
    python benchmarks/speed.py --recipe-engines --ml-path DIR/ml-100k [--rounds 5] [--skip-workers]
                               [--extra exchange=dense ...]
    python benchmarks/speed.py --ml1m-shape [--ml1m-path DIR/ml-1m] [--rounds 45] [--ml1m-inprocess-rounds 2]

Workload: MovieLens-100k sized (943 clients, one user each, full participation,
2 local epochs; the real data with --ml-path, else synthetic data of the same
size). Every engine runs in its own subprocess; the parent samples the RSS of
that process tree (Ray's workers included) every 0.2 s.

Prints, per engine: ms per client-round (train + evaluate, mean over rounds
after the first), the time outside rounds (start-up: imports, data, split, Ray
start; and teardown), and peak RSS; then dense vs sparse upload bytes with the
test metrics of each, same seed (on MovieLens: whole runs of the default recipe,
experiment=ml100k_federated; on synthetic data: the workload above); with --scale, peak RSS of a 10,000- and a 100,000-client
synthetic federation (1% sampled per round, 3 rounds). --recipe-engines: only the default
MovieLens recipe (experiment=ml100k_federated) under inprocess, inprocess with 2 workers and
cohort (one process; 2 threads; 2 worker processes) (training and evaluation rounds apart), and how far cohort's final metrics are from
inprocess's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # fedmtl from this checkout, installed or not
from fedmtl.config import compose  # noqa: E402


def workload(args) -> list[str]:
    base = ["num_clients=943", f"num_rounds={args.rounds}", "local_epochs=2", "fraction_train=1.0",
            "fraction_evaluate=1.0", "save_model=false", f"seed={args.seed}", f"device={args.device}"]
    if args.ml_path:
        return base + ["dataset=movielens100k", f"dataset.path={args.ml_path}"]
    return base + ["dataset.n_users=943", "dataset.n_items=1682", "dataset.mean_interactions=106"]


# ---------------------------------------------------------------- child side

def plain_loop(cfg: dict, out: Path) -> dict:
    """The same client work as the ClientApp, as a bare PyTorch loop with NumPy FedAvg."""
    import numpy as np
    import torch

    from fedmtl.data import federation_for
    from fedmtl.federation.client_app import train_config
    from fedmtl.metrics import combine
    from fedmtl.model import build_model, get_arrays, personal_names, set_arrays, shared_names
    from fedmtl.local_rounds import client_round
    from fedmtl.seeds import client_round_seed
    from fedmtl.train import evaluate
    from fedmtl.weighting import build_weighting

    from fedmtl.config import resolve_device

    torch.set_num_threads(1)
    device = resolve_device(cfg)
    fed = federation_for(cfg)
    tasks = cfg["tasks"]
    templates = {}
    personal: dict[int, dict] = {}
    glob = None
    seconds = []
    for rnd in range(1, cfg["num_rounds"] + 1):
        t0 = time.time()
        updates, weights, parts = [], [], []
        for pid in range(len(fed.clients)):
            data = fed.partition_data(pid).to(device)
            n = len(data.users)
            if n not in templates:
                m = build_model(cfg["model"], tasks, n, data.user_cat, fed.meta, cfg["seed"]).to(device)
                templates[n] = (m, get_arrays(m, personal_names(m, cfg["aggregate"])))
                if glob is None:
                    glob = get_arrays(m, shared_names(m, cfg["aggregate"]))
            model, init_personal = templates[n]
            model.personal.user_cat = torch.as_tensor(data.user_cat, device=device)
            set_arrays(model, personal.get(pid, init_personal))
            set_arrays(model, glob)
            res = client_round(model, data, tasks, build_weighting(cfg["weighting"], tasks), train_config(cfg), cfg,
                               seed=client_round_seed(cfg["seed"], rnd, pid))  # the ClientApp's seed
            personal[pid] = get_arrays(model, personal_names(model, cfg["aggregate"]))
            updates.append(get_arrays(model, shared_names(model, cfg["aggregate"])))
            weights.append(res.num_examples)
        w = np.asarray(weights, dtype=np.float64) / sum(weights)
        glob = {k: sum(wi * u[k] for wi, u in zip(w, updates)).astype(np.float32) for k in updates[0]}
        for pid in range(len(fed.clients)):
            data = fed.partition_data(pid).to(device)
            model, _ = templates[len(data.users)]
            model.personal.user_cat = torch.as_tensor(data.user_cat, device=device)
            set_arrays(model, {**personal[pid], **glob})
            parts.append(evaluate(model, data, tasks))
        seconds.append(time.time() - t0)
        metrics = combine(parts)
    return {"round_seconds": seconds, "metrics": metrics}


def child(args) -> None:
    t_start = time.time()
    from fedmtl.config import compose

    overrides = json.loads(args.child_overrides)
    out = Path(args.out)
    cfg = compose(overrides)
    if args.engine == "plain":
        cfg = dict(cfg, output_dir=str(out))
        res = plain_loop(cfg, out)
        rounds, metrics = res["round_seconds"], res["metrics"]
    else:
        from fedmtl.runfiles import read_jsonl
        from fedmtl.simulate import run

        summary = run(cfg, out)
        rows = read_jsonl(out / "metrics.jsonl")
        rounds, metrics = [r["seconds"] for r in rows], summary["metrics"]
        bytes_up = [r["bytes_up"] for r in rows]
    total = time.time() - args.launched
    result = {"round_seconds": rounds, "outside_rounds_s": total - sum(rounds), "metrics": metrics,
              "import_s": t_start - args.launched}
    if args.engine != "plain":
        result["bytes_up_per_round"] = bytes_up
        result["bytes_up_per_client"] = [r["bytes_up_per_client"] for r in rows]
        result["evaluated"] = ["test" in r for r in rows]
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------- parent side

def tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_engine(engine: str, overrides: list[str], label: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"fedmtl-bench-{label}-"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--engine", engine, "--out", str(out),
           "--child-overrides", json.dumps(overrides), "--launched", repr(time.time())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise SystemExit(f"benchmark {label} failed (exit {proc.returncode}):\n{tail}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["peak_rss_mb"] = peak / 2**20
    return res


def ms_per_client_round(res: dict, clients: int) -> float:
    secs = res["round_seconds"][1:] or res["round_seconds"]
    return 1000 * sum(secs) / len(secs) / clients


def headline(m: dict) -> str:
    keys = [("rating.rmse", "RMSE"), ("like.auc", "AUC"), ("click.hr@10", "HR@10"), ("click.ndcg@10", "NDCG@10")]
    return "  ".join(f"{label} {m[k]:.4f}" for k, label in keys if m.get(k) is not None)


def exchange_table(args, base: list[str], dense: dict | None) -> None:
    """Upload bytes and final test metrics of dense vs sparse exchange, same seed. On MovieLens
    the runs are the default recipe (experiment=ml100k_federated, all its rounds); on synthetic
    data, the benchmark workload (the dense run is the inprocess engine's)."""
    if args.ml_path:
        ex = ["experiment=ml100k_federated", f"dataset.path={args.ml_path}", f"seed={args.seed}",
              "backend.workers=2", "save_model=false", f"device={args.device}"]
        print("\n# exchange: the default MovieLens recipe (experiment=ml100k_federated, all rounds), same seed")
        dense = run_engine("sim", ex + ["exchange=dense"], "dense")
    else:
        ex = base + ["backend=inprocess"]
        print(f"\n# exchange: the workload above ({args.rounds} rounds), same seed")
        dense = dense or run_engine("sim", ex, "dense")
    sp = compose(ex + ["exchange=sparse"])["exchange"]
    rows = [("dense", dense), (f"sparse ({sp['dtype']} update, {sp['pad_rows']} pad rows)",
                               run_engine("sim", ex + ["exchange=sparse"], "sparse"))]
    d_up = dense["bytes_up_per_client"][-1]
    print("\n| exchange | upload bytes / client-round | vs dense | test metrics after the last round |")
    print("| --- | --- | --- | --- |")
    for label, res in rows:
        up = res["bytes_up_per_client"][-1]
        ratio = "-" if res is dense else f"{d_up / up:.1f}x less"
        print(f"| {label} | {up:,} | {ratio} | {headline(res['metrics'])} |", flush=True)


def recipe_engines(args) -> None:
    """ms per client-round of the default MovieLens recipe (experiment=ml100k_federated, sparse
    int8 exchange, evaluation every 5 rounds) per engine, training rounds and evaluation rounds
    apart, peak RSS, and the largest difference of cohort's final metrics from inprocess's."""
    if not args.ml_path:
        raise SystemExit("--recipe-engines needs --ml-path DIR/ml-100k (the default recipe is MovieLens-100k's)")
    base = ["experiment=ml100k_federated", f"dataset.path={args.ml_path}", f"num_rounds={args.rounds}",
            f"seed={args.seed}", "save_model=false", f"device={args.device}"] + list(args.extra or [])
    cfg = compose(base)
    clients = cfg["num_clients"]
    print(f"# default recipe, {args.rounds} rounds (eval every {cfg['eval_every']} and after the last), "
          f"{clients} clients, exchange={cfg['exchange']['name']}; overrides: {' '.join(base)}\n")
    runs = [("inprocess", ["backend=inprocess"]), ("inprocess, 2 workers", ["backend=inprocess", "backend.workers=2"]),
            ("cohort", ["backend=cohort"]), ("cohort, 2 threads", ["backend=cohort", "backend.threads=2"]),
            ("cohort, 2 workers", ["backend=cohort", "backend.workers=2"])]
    if args.skip_workers:  # one process, one thread each: the engines' own costs
        runs = [r for r in runs if "2 " not in r[0]]
    print("| engine | ms / client-round, training rounds | ms / client-round, evaluation rounds | "
          "ms / client-round, all rounds after the first | wall (s) | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    results = {}
    for label, ov in runs:
        res = run_engine("sim", base + ov, label.split(",")[0])
        results[label] = res
        secs = res["round_seconds"]
        tr, er = round_seconds(res)
        fmt = lambda xs: f"{1000 * sum(xs) / len(xs) / clients:.2f}" if xs else "-"  # noqa: E731
        wall = res["outside_rounds_s"] + sum(secs)
        print(f"| {label} | {fmt(tr)} | {fmt(er)} | {ms_per_client_round(res, clients):.2f} | {wall:.1f} | "
              f"{res['peak_rss_mb']:.0f} |", flush=True)
    ref, got = results["inprocess"]["metrics"], results["cohort"]["metrics"]
    diffs = {k: abs(ref[k] - got[k]) for k in ref if isinstance(ref[k], (int, float)) and ref.get(k) is not None}
    worst = max(diffs, key=diffs.get)
    inp, coh = results["inprocess"], results["cohort"]
    print(f"\nspeed-up of cohort over inprocess (training rounds): "
          f"{_train_ms(inp, clients) / _train_ms(coh, clients):.1f}x; all rounds after the first: "
          f"{ms_per_client_round(inp, clients) / ms_per_client_round(coh, clients):.1f}x")
    for label in ("cohort, 2 threads", "cohort, 2 workers"):
        if label in results:
            print(f"{label} over inprocess (training rounds): "
                  f"{_train_ms(inp, clients) / _train_ms(results[label], clients):.1f}x; all rounds after the first: "
                  f"{ms_per_client_round(inp, clients) / ms_per_client_round(results[label], clients):.1f}x")
    print(f"final metrics, cohort vs inprocess: largest difference {diffs[worst]:.2g} ({worst}); "
          f"{headline(ref)} vs {headline(got)}")
    arithmetic_floor(base, results, clients)


def write_ml1m_shape(folder: Path, seed: int = 0) -> Path:
    """A synthetic data set of MovieLens-1M's shape (6,040 users, 3,706 items, about 1M
    ratings, 18 genres, its user fields) written in ml-1m's `::` layout, for when the real
    files are not at hand."""
    import numpy as np

    from fedmtl.data.movielens import ML1M_GENRES
    from fedmtl.data.synthetic import generate

    folder.mkdir(parents=True, exist_ok=True)
    ds = generate(n_users=6040, n_items=3706, mean_interactions=165.6, n_genres=len(ML1M_GENRES), seed=seed)
    r = ds.interactions
    with open(folder / "ratings.dat", "w") as f:
        f.write("".join(f"{u + 1}::{i + 1}::{int(x)}::{t}\n" for u, i, x, t in
                        zip(r.user.to_numpy(), r.item.to_numpy(), r.rating.to_numpy(), r.ts.to_numpy())))
    rng = np.random.default_rng(seed)
    ages, occ = [1, 18, 25, 35, 45, 50, 56], rng.integers(0, 21, ds.n_users)
    with open(folder / "users.dat", "w") as f:
        f.writelines(f"{u + 1}::{'MF'[int(ds.user_cat[u, 0]) % 2]}::{ages[int(ds.user_cat[u, 1])]}::{occ[u]}::"
                     f"{10000 + u}\n" for u in range(ds.n_users))
    with open(folder / "movies.dat", "w") as f:
        for i in range(ds.n_items):
            genres = [g for g, on in zip(ML1M_GENRES, ds.item_multi[i]) if on] or ["Drama"]
            f.write(f"{i + 1}::Movie {i + 1} ({1950 + 10 * int(ds.item_cat[i, 0])})::{'|'.join(genres)}\n")
    return folder


def ml1m_shape(args) -> None:
    """The default recipe (experiment=ml100k_federated's knobs) on a MovieLens-1M-shaped
    federation, one client per user: per engine, seconds per training and evaluation round,
    the whole run's wall time and peak RSS."""
    path = Path(args.ml1m_path) if args.ml1m_path else write_ml1m_shape(
        Path(tempfile.mkdtemp(prefix="fedmtl-ml1m-shape-")) / "ml-1m")
    base = ["experiment=ml100k_federated", "dataset=movielens1m", f"dataset.path={path}", "num_clients=6040",
            f"seed={args.seed}", "save_model=false", f"device={args.device}"] + list(args.extra or [])
    print(f"# MovieLens-1M shape ({'real files' if args.ml1m_path else 'synthetic, ml-1m layout'}: {path}); "
          f"overrides: {' '.join(base)}\n")
    print("| engine | rounds | s / training round | s / evaluation round | wall (s) | peak RSS (MB) | "
          "RMSE | like AUC | HR@10 | NDCG@10 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, ov in [("cohort", ["backend=cohort", f"num_rounds={args.rounds}"]),
                      ("inprocess", ["backend=inprocess", f"num_rounds={min(args.rounds, args.ml1m_inprocess_rounds)}",
                                     f"eval_every={min(args.rounds, args.ml1m_inprocess_rounds)}"])]:
        if label == "inprocess" and args.ml1m_inprocess_rounds <= 0:
            continue
        res = run_engine("sim", base + ov, f"ml1m-{label}")
        secs = res["round_seconds"]
        tr, er = round_seconds(res)
        mean = lambda xs: f"{sum(xs) / len(xs):.2f}" if xs else "-"  # noqa: E731
        m = res["metrics"]
        print(f"| {label} | {len(secs)} | {mean(tr)} | {mean(er)} | {res['outside_rounds_s'] + sum(secs):.0f} | "
              f"{res['peak_rss_mb']:.0f} | {m['rating.rmse']:.4f} | {m['like.auc']:.4f} | {m['click.hr@10']:.4f} | "
              f"{m['click.ndcg@10']:.4f} |", flush=True)


def arithmetic_floor(base: list[str], results: dict, clients: int) -> None:
    """A training round's matmul FLOPs (as the batch computes them, and as the per-client path
    does: every item through the item tower each step) at this machine's measured one-thread
    matmul rate, beside the measured training rounds."""
    import torch

    from fedmtl.client_step import run_setup
    from fedmtl.cohort import Job, round_flops
    from fedmtl.data import federation_for

    cfg = dict(compose(base), output_dir=tempfile.mkdtemp(prefix="fedmtl-bench-floor-"))
    fed = federation_for(cfg)
    batch, single = round_flops(run_setup(cfg), [Job(p, fed.partition_data(p), {}, 1) for p in range(clients)])
    torch.set_num_threads(1)
    a, b = torch.randn(4096, cfg["model"]["dim"]), torch.randn(cfg["model"]["dim"], 64)
    for _ in range(5):
        a @ b
    t0, n = time.time(), 300
    for _ in range(n):
        a @ b
    rate = n * a.shape[0] * a.shape[1] * b.shape[1] * 2 / (time.time() - t0)
    ms = lambda flops: 1000 * flops / rate / clients  # noqa: E731
    print(f"\narithmetic floor of a training round (matmuls only, one thread at the measured "
          f"{rate / 1e9:.1f} GFLOP/s): cohort's batch {batch / 1e9:.1f} GFLOP = {ms(batch):.2f} ms / client-round "
          f"(measured {_train_ms(results['cohort'], clients):.2f}); the per-client path {single / 1e9:.1f} GFLOP = "
          f"{ms(single):.2f} ms / client-round (measured {_train_ms(results['inprocess'], clients):.2f})")


def round_seconds(res: dict, all_if_none: bool = True) -> tuple[list[float], list[float]]:
    """(seconds of the training rounds after the first, the first's warm-up left out; with
    `all_if_none`, every training round's when none comes after it; seconds of the rounds
    that also evaluated)."""
    secs, ev = res["round_seconds"], res["evaluated"]
    train = [x for k, (x, e) in enumerate(zip(secs, ev)) if not e and k > 0]
    if not train and all_if_none:
        train = [x for x, e in zip(secs, ev) if not e]
    return train, [x for x, e in zip(secs, ev) if e]


def _train_ms(res: dict, clients: int) -> float:
    xs = round_seconds(res, all_if_none=False)[0]
    return 1000 * sum(xs) / max(len(xs), 1) / clients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ml-path", help="a MovieLens-100k folder (GroupLens layout); default: synthetic of that size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (every engine trains its clients there)")
    ap.add_argument("--scale", action="store_true", help="also run the 10,000 vs 100,000-client memory check")
    ap.add_argument("--only-scale", action="store_true")
    ap.add_argument("--only-exchange", action="store_true", help="only the dense vs sparse table")
    ap.add_argument("--skip-exchange", action="store_true", help="no dense vs sparse table")
    ap.add_argument("--recipe-engines", action="store_true",
                    help="only: inprocess vs cohort on the default MovieLens recipe (needs --ml-path)")
    ap.add_argument("--skip-workers", action="store_true",
                    help="--recipe-engines: no 2-worker inprocess run, no 2-thread cohort run")
    ap.add_argument("--extra", nargs="*", help="--recipe-engines: more overrides (e.g. exchange=dense)")
    ap.add_argument("--ml1m-shape", action="store_true",
                    help="only: the default recipe on a MovieLens-1M-shaped federation (6,040 clients)")
    ap.add_argument("--ml1m-path", help="--ml1m-shape: the real ml-1m folder (default: synthetic files of its shape)")
    ap.add_argument("--ml1m-inprocess-rounds", type=int, default=2,
                    help="--ml1m-shape: rounds of the inprocess comparison (0: none)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--child-overrides", help=argparse.SUPPRESS)
    ap.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch

    print(f"# fedmtl speed benchmark: {psutil.cpu_count()} CPUs, torch {torch.__version__}, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    if args.recipe_engines:
        return recipe_engines(args)
    if args.ml1m_shape:
        return ml1m_shape(args)
    base = workload(args)
    results = {}
    if not (args.only_scale or args.only_exchange):
        data = "MovieLens-100k" if args.ml_path else "synthetic, MovieLens-100k sized"
        print(f"# workload: {data}, 943 clients, full participation, 2 local epochs, {args.rounds} rounds\n")
        runs = [("plain core loop (no Flower)", "plain", base),
                ("inprocess", "sim", base + ["backend=inprocess"]),
                ("inprocess, 2 workers", "sim", base + ["backend=inprocess", "backend.workers=2"])]
        if not args.skip_ray:
            runs.append(("ray (Flower simulation engine)", "sim", base + ["backend=ray"]))
        print("| engine | ms / client-round | vs plain | outside rounds (s) | peak RSS (MB) |")
        print("| --- | --- | --- | --- | --- |")
        for label, engine, ov in runs:
            res = run_engine(engine, ov, label.split()[0])
            results[label] = res
            ms = ms_per_client_round(res, 943)
            ref = ms_per_client_round(results["plain core loop (no Flower)"], 943)
            print(f"| {label} | {ms:.2f} | {ms / ref:.2f}x | {res['outside_rounds_s']:.1f} | {res['peak_rss_mb']:.0f} |",
                  flush=True)
    if not (args.only_scale or args.skip_exchange):
        exchange_table(args, base, results.get("inprocess") if not args.only_exchange else None)
    if args.scale or args.only_scale:
        print("\n| synthetic federation (1% sampled, 3 rounds, state on disk) | ms / client-round | peak RSS (MB) |")
        print("| --- | --- | --- |")
        peaks = {}
        for n in (10_000, 100_000):
            ov = [f"dataset.n_users={n}", "dataset.n_items=1000", "dataset.mean_interactions=20",
                  f"num_clients={n}", "num_rounds=3", "fraction_train=0.01", "fraction_evaluate=0.01",
                  "backend.state=disk", "save_model=false"]
            res = run_engine("sim", ov, f"scale{n}")
            peaks[n] = res["peak_rss_mb"]
            print(f"| {n:,} clients | {ms_per_client_round(res, n // 100):.2f} | {peaks[n]:.0f} |", flush=True)
        print(f"\npeak RSS ratio 100,000 / 10,000 clients: {peaks[100_000] / peaks[10_000]:.2f}")


if __name__ == "__main__":
    main()
