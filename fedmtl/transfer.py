"""Knowledge transfer from the federated encoder (no Flower): new users, new items, new tasks.

- New users (`transfer.new_users=f`, held out by `fedmtl.data.holdout`): after training,
  each new user's client receives the final shared arrays, builds its personal parts from
  what it has (its features: the user embedding starts at zero, so the user tower sees
  the features alone; the heads are the aggregated ones where `aggregate=all` shares
  them, else fresh) and fine-tunes them (`transfer.tune`: its embedding and biases, or the
  heads too), the encoder frozen, on its first k interactions by timestamp. Every k is scored on the same interactions, those after the first
  max(k), ranked among the items outside the first max(k). The same procedure runs on
  the untrained (seeded round-0) encoder ("scratch"), and popularity is scored on the
  same rows.
- New items (`transfer.new_items=f`): hidden from training (no train row, never a
  negative of the click softmax). Clients score them through their features alone:
  their id embedding is zero and their item bias the mean of the known items'. Test
  metrics are also reported on the new-item and the known-item test rows separately
  ("new_items/..." and "known_items/..."), each ranked among all items.
- New task: `init.from=RUN_DIR` starts a run from another run's encoder
  (`fedmtl.model.saved`); `python -m fedmtl.transfer curves` compares learning curves
  (rounds to a target, final metric).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import ConfigError, FedMTLError
from .metrics import HEADLINE, combine
from .model import saved
from .tasks import dataset_labels, get as get_task, ranking_tasks
from .runfiles import write_json
from .seeds import cold_start_seed

log = logging.getLogger("fedmtl")

GRADIENT_WEIGHTINGS = ("gradnorm", "pcgrad")  # they need trainable shared parameters
TUNE = ("user", "personal")  # what a new user fine-tunes: its embedding and biases, or the heads too


def validate_config(cfg: dict) -> None:
    """The init.* and transfer.* keys (called from `config.validate`)."""
    for key in ("init", "transfer"):
        if cfg.get(key) is None:
            cfg[key] = {}
        if not isinstance(cfg[key], dict):
            raise ConfigError(f"{key}={cfg[key]!r}: expected a mapping of {key}.* keys")
    init, t = cfg["init"], cfg["transfer"]
    init.setdefault("from", None)
    init.setdefault("freeze_encoder", False)
    t.setdefault("new_users", 0.0)
    t.setdefault("new_items", 0.0)
    t.setdefault("k", [0, 1, 5, 10, 20])
    t.setdefault("epochs", 20)
    t.setdefault("seed", None)
    t.setdefault("tune", "user")
    if t["tune"] not in TUNE:
        raise ConfigError(f"transfer.tune={t['tune']}: expected one of {list(TUNE)}")
    if not isinstance(init.get("freeze_encoder", False), bool):
        raise ConfigError(f"init.freeze_encoder={init['freeze_encoder']!r}: expected true or false")
    if init.get("freeze_encoder") and cfg["weighting"]["name"] in GRADIENT_WEIGHTINGS:
        raise ConfigError(f"init.freeze_encoder=true with weighting={cfg['weighting']['name']}: it weighs gradients "
                          "on the shared encoder, which is frozen; use fixed, uncertainty or dwa")
    if init["from"] is not None and not isinstance(init["from"], str):
        raise ConfigError(f"init.from={init['from']!r}: expected the path of a run folder, or null")
    if init["from"]:
        saved.load(init["from"])  # exists and reads, now rather than after the data is loaded
    for key in ("new_users", "new_items"):
        v = t[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ConfigError(f"transfer.{key}={v!r}: expected a fraction in [0, 1)")
    ks = t["k"]
    if not isinstance(ks, list) or not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in ks):
        raise ConfigError(f"transfer.k={ks!r}: expected a list of integers >= 0, e.g. [0,1,5,10,20]")
    if t["seed"] is not None and (isinstance(t["seed"], bool) or not isinstance(t["seed"], int) or t["seed"] < 0):
        raise ConfigError(f"transfer.seed={t['seed']!r}: expected an integer >= 0, or null")
    if isinstance(t["epochs"], bool) or not isinstance(t["epochs"], int) or t["epochs"] < 1:
        raise ConfigError(f"transfer.epochs={t['epochs']!r}: expected an integer >= 1")
    if t["new_users"] and not cfg.get("save_model", True):
        raise ConfigError("transfer.new_users needs save_model=true: the new users start from the saved encoder")
    if (t["new_users"] or t["new_items"]) and dataset_labels(cfg.get("dataset") or {}) is not None:
        key = "new_users" if t["new_users"] else "new_items"
        raise ConfigError(f"transfer.{key} with dataset={cfg['dataset']['name']}: cold-start evaluation (its popularity "
                          "and random references) knows rating logs only (synthetic, movielens100k, movielens1m); "
                          "not supported on interaction logs yet")


# --- new items ----------------------------------------------------------------------------------


def new_item_view(model, items: np.ndarray | None, hide: bool = True) -> None:
    """Score `items` through their features alone (zero id embedding, mean item bias) and,
    with `hide`, keep them out of training (never a click negative). None clears it."""
    enc = model.encoder
    if items is None or len(items) == 0:
        enc.hidden_items = None
        return
    dev = enc.item_emb.weight.device
    mask = torch.zeros(enc.item_emb.num_embeddings, dtype=torch.bool, device=dev)
    mask[torch.as_tensor(items, device=dev)] = True
    enc.hidden_items = mask if hide else None
    with torch.no_grad():
        enc.item_emb.weight[mask] = 0.0
        enc.item_bias.weight[mask] = enc.item_bias.weight[~mask].mean(0)


def hidden_items(cfg: dict) -> np.ndarray:
    """The run's new items (empty, without touching the data, when transfer.new_items=0)."""
    if not (cfg.get("transfer") or {}).get("new_items"):
        return np.empty(0, np.int64)
    from .data import federation_for
    return federation_for(cfg).holdout.items


def client_view(model, cfg: dict) -> None:
    """What a client applies after loading the server's arrays (a no-op without new items)."""
    new_item_view(model, hidden_items(cfg))


def item_parts(model, data, tasks, items: np.ndarray) -> dict:
    """Metric parts of the new-item and of the known-item test rows, each ranked among all items."""
    from .train import evaluate
    if len(items) == 0:
        return {}
    new = torch.as_tensor(np.isin(data.test_i.cpu().numpy(), items), device=data.test_i.device)
    out = {}
    for prefix, sel in (("new_items", new), ("known_items", ~new)):
        sub = replace(data, test_u=data.test_u[sel], test_i=data.test_i[sel], test_r=data.test_r[sel])
        # Every client sends the same keys (Flower aggregates only uniform records): a client
        # without such rows sends zero counts.
        part = {k: v for t in tasks for k, v in get_task(t).empty_parts().items()} | evaluate(model, sub, tasks)
        out.update({f"{prefix}/{k}": v for k, v in part.items()})
    return out


# --- reference scorers --------------------------------------------------------------------------


class Popularity(nn.Module):
    """Scores from the pooled training log (a central reference, not a federated model):
    click by interaction count, rating by the item's mean rating and like by its like rate,
    both shrunk to the global value with `shrink` pseudo-counts (an unseen item gets it)."""

    def __init__(self, train: pd.DataFrame, n_items: int, shrink: float = 5.0):
        super().__init__()
        i = train["item"].to_numpy()
        r = train["rating"].to_numpy().astype(np.float64)
        n = np.bincount(i, minlength=n_items).astype(np.float64)
        mean_r = (np.bincount(i, r, n_items) + shrink * r.mean()) / (n + shrink)
        like = (np.bincount(i, (r >= 4).astype(float), n_items) + shrink * (r >= 4).mean()) / (n + shrink)
        self.s = {"rating": torch.as_tensor(mean_r, dtype=torch.float32),
                  "like": torch.as_tensor(np.log(like / (1 - like)), dtype=torch.float32),
                  "click": torch.as_tensor(np.log1p(n), dtype=torch.float32)}

    def pair_scores(self, users, items):
        return {t: s[items.cpu()] for t, s in self.s.items()}

    def all_item_scores(self, users, task, item_reps=None):
        return self.s[task].expand(len(users), -1)

    def item_reps(self, items=None):
        return None


class RandomScores(nn.Module):
    """Seeded uniform scores: the chance level of every metric."""

    def __init__(self, n_items: int, seed: int = 0):
        super().__init__()
        self.n_items, self.gen = n_items, torch.Generator().manual_seed(seed)

    def pair_scores(self, users, items):
        return {t: torch.rand(len(items), generator=self.gen) * (4 if t == "rating" else 1) + (1 if t == "rating" else -0.5)
                for t in ("rating", "like", "click")}

    def all_item_scores(self, users, task, item_reps=None):
        return torch.rand(len(users), self.n_items, generator=self.gen)

    def item_reps(self, items=None):
        return None


# --- new users ----------------------------------------------------------------------------------


def _one_user_data(rows: pd.DataFrame, user_cat: np.ndarray, n_items: int, train_end: int, test_start: int):
    from .data import ClientData
    tr, te = rows.iloc[:train_end], rows.iloc[test_start:]
    t = lambda a, dt=torch.long: torch.as_tensor(np.array(a), dtype=dt)  # noqa: E731
    return ClientData(users=np.zeros(1, np.int64), user_cat=user_cat, n_items=n_items,
                      train_u=t(np.zeros(len(tr))), train_i=t(tr["item"]), train_r=t(tr["rating"], torch.float32),
                      test_u=t(np.zeros(len(te))), test_i=t(te["item"]), test_r=t(te["rating"], torch.float32))


def fine_tune(model, data, cfg: dict, epochs: int, seed: int):
    """A new user's fine-tuning on all its k interactions at once, the encoder frozen, with the
    run's fixed task weights (equal ones otherwise). `transfer.tune=user` trains only the
    user's embedding and biases (the heads stay as received), `personal` the heads too."""
    from .model import personal_names
    from .train import TrainConfig, local_train
    from .weighting import build_weighting

    w, t, tasks = cfg["weighting"], cfg["train"], cfg["tasks"]
    wcfg = {"name": "fixed", "weights": w.get("weights", {})} if w["name"] == "fixed" else {"name": "fixed"}
    tc = TrainConfig(epochs=epochs, batch_size=max(data.n_train, 1), lr=t["lr"], l2=t["l2"],
                     click_loss=t["click_loss"], num_negatives=t["num_negatives"])
    names = personal_names(model, "encoder")
    if cfg["transfer"].get("tune", "user") == "user":
        names = [n for n in names if n.startswith("personal.user_")]
    return local_train(model, data, tasks, build_weighting(wcfg, tasks), tc, seed=seed, trainable=names)


def cold_start(cfg: dict, fed, arrays: dict[str, np.ndarray], ks, epochs: int, seed: int) -> dict[int, dict]:
    """Metrics per k of the new users, each fine-tuned alone from `arrays` (the shared
    arrays; heads too where the checkpoint holds them) with the encoder frozen."""
    from .model import build_model, set_arrays
    from .train import evaluate

    ks, kmax = sorted(set(ks)), max(ks)
    tasks, meta, hold = cfg["tasks"], fed.meta, fed.holdout
    model = build_model(cfg["model"], tasks, 1, np.zeros((1, len(meta["user_cards"])), np.int64), meta, cfg["seed"])
    set_arrays(model, {k: v for k, v in arrays.items() if k in dict(model.named_parameters())})
    new_item_view(model, hold.items, hide=False)
    with torch.no_grad():
        model.personal.user_emb.weight.zero_()  # the features alone until the user's own data says more
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = {}
    users = [(u, rows) for u, rows in hold.user_log.groupby("user", sort=True) if len(rows) > kmax]
    for k in ks:
        parts = []
        for u, rows in users:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(base[n])
            model.personal.user_cat = torch.as_tensor(fed.dataset.user_cat[[u]])
            if k:
                fine_tune(model, _one_user_data(rows, fed.dataset.user_cat[[u]], meta["n_items"], k, kmax), cfg,
                          epochs, seed=cold_start_seed(seed, int(u), k))
            parts.append(evaluate(model, _one_user_data(rows, fed.dataset.user_cat[[u]], meta["n_items"], kmax, kmax),
                                  tasks))
        out[k] = combine(parts)
    return out


def reference_scores(scorer, fed, tasks, users_rows: list, kmax: int) -> dict:
    from .train import evaluate
    parts = [evaluate(scorer, _one_user_data(rows, fed.dataset.user_cat[[u]], fed.meta["n_items"], kmax, kmax), tasks)
             for u, rows in users_rows]
    return combine(parts)


def initial_arrays(cfg: dict, meta: dict) -> dict[str, np.ndarray]:
    """The untrained encoder: the seeded build every run starts from (no init.from)."""
    from .model import build_model, get_arrays, shared_names
    model = build_model(cfg["model"], cfg["tasks"], 1, np.zeros((1, len(meta["user_cards"])), np.int64), meta,
                        cfg["seed"])
    return get_arrays(model, shared_names(model, cfg["aggregate"]))


def after_run(cfg: dict, fed, out_dir: str | Path, result: dict, write: bool = True) -> dict:
    """The transfer evaluations of a finished federated run, written to transfer.json."""
    out_dir = Path(out_dir)
    tcfg = cfg["transfer"]
    tasks = cfg["tasks"]
    report: dict = {}
    seed = tcfg["seed"] if tcfg.get("seed") is not None else cfg["seed"]
    if len(fed.holdout.users):
        ks, kmax = sorted(set(tcfg["k"])), max(tcfg["k"])
        users = [(u, rows) for u, rows in fed.holdout.user_log.groupby("user", sort=True) if len(rows) > kmax]
        log.info("new users: %d held out, %d with more than %d interactions scored", len(fed.holdout.users),
                 len(users), kmax)
        if users:
            final = saved.load(out_dir, what="run folder").arrays
            pop = reference_scores(Popularity(fed.split.train, fed.meta["n_items"]), fed, tasks, users, kmax)
            report["new_users"] = {
                "users": len(users), "held_out": int(len(fed.holdout.users)), "k": ks,
                "head_prior": cfg["aggregate"] == "all", "epochs": tcfg["epochs"], "tune": tcfg["tune"],
                "transfer": cold_start(cfg, fed, final, ks, tcfg["epochs"], seed),
                "scratch": cold_start(cfg, fed, initial_arrays(cfg, fed.meta), ks, tcfg["epochs"], seed),
                "popularity": pop,
            }
    if len(fed.holdout.items):
        from .train import evaluate
        data = fed.all_data()
        refs = {}
        for name, scorer in (("popularity", Popularity(fed.split.train, fed.meta["n_items"])),
                             ("random", RandomScores(fed.meta["n_items"], seed))):
            refs[name] = combine([item_parts(scorer, data, tasks, fed.holdout.items) | evaluate(scorer, data, tasks)])
        report["new_items"] = {"items": int(len(fed.holdout.items)), "model": result.get("metrics", {}), **refs}
    if report and write:
        write_json(out_dir / "transfer.json", report)
        (out_dir / "transfer.md").write_text(tables(report, tasks))
        log.info("transfer:\n%s", tables(report, tasks))
    return report


# --- tables, learning curves --------------------------------------------------------------------


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def tables(report: dict, tasks) -> str:
    keys = [HEADLINE[t][0] for t in tasks] + [f"{t.name}.hr@{t.k}" for t in ranking_tasks(tasks)]
    lines = []
    nu = report.get("new_users")
    if nu:
        lines += [f"New users ({nu['users']} scored of {nu['held_out']} held out; fine-tuned {nu['epochs']} epochs, "
                  f"encoder frozen, tuning {nu.get('tune', 'personal')}; head prior: {'aggregated heads' if nu['head_prior'] else 'none (fresh heads)'})",
                  "", "| k | start | " + " | ".join(keys) + " |", "| --- | --- |" + " --- |" * len(keys)]
        for k in nu["k"]:
            for name in ("transfer", "scratch"):
                m = nu[name][str(k)] if str(k) in nu[name] else nu[name][k]
                lines.append(f"| {k} | {name} | " + " | ".join(_fmt(m.get(x)) for x in keys) + " |")
        lines.append("| any | popularity | " + " | ".join(_fmt(nu["popularity"].get(x)) for x in keys) + " |")
        lines.append("")
    ni = report.get("new_items")
    if ni:
        lines += [f"New items ({ni['items']} hidden from training, scored from their features)", "",
                  "| scorer | rows | " + " | ".join(keys) + " |", "| --- | --- |" + " --- |" * len(keys)]
        for name in ("model", "popularity", "random"):
            for rows in ("new_items", "known_items"):
                m = ni[name]
                lines.append(f"| {name} | {rows} | " + " | ".join(_fmt(m.get(f"{rows}/{x}")) for x in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def read_curve(run_dir: str | Path, key: str) -> list[tuple[int, float]]:
    from .runfiles import read_jsonl
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FedMTLError(f"{run_dir}: no metrics.jsonl (not a run folder?)")
    return [(row["round"], row["test"][key]) for row in read_jsonl(path) if key in row.get("test", {})]


def rounds_to_target(curve: list[tuple[int, float]], target: float, larger_is_better: bool = True) -> int | None:
    """The first round whose metric reaches `target`; None if none does."""
    for rnd, v in curve:
        if v is not None and (v >= target if larger_is_better else v <= target):
            return rnd
    return None


def _larger_is_better(key: str) -> bool:
    for k, larger in HEADLINE.values():
        if k == key:
            return larger
    return not any(s in key for s in ("rmse", "mae", "logloss"))


def curves_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m fedmtl.transfer curves",
                                 description="Learning curves of runs: rounds to a target and final metric")
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--key", default="click.ndcg@10")
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--plot", help="write a PNG of the curves here")
    a = ap.parse_args(argv)
    larger = _larger_is_better(a.key)
    curves = {}
    for spec in a.runs:
        name, _, path = spec.partition("=")
        if not path:
            raise FedMTLError(f"{spec}: expected NAME=RUN_DIR")
        curves[name] = read_curve(path, a.key)
    print(f"| run | rounds to {a.key} {'>=' if larger else '<='} {a.target} | final {a.key} | best |")
    print("| --- | --- | --- | --- |")
    for name, c in curves.items():
        vals = [v for _, v in c]
        best = (max if larger else min)(vals) if vals else None
        r = rounds_to_target(c, a.target, larger)
        print(f"| {name} | {r if r is not None else 'not reached'} | {_fmt(vals[-1] if vals else None)} | {_fmt(best)} |")
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for name, c in curves.items():
            ax.plot([r for r, _ in c], [v for _, v in c], marker="o", ms=3, label=name)
        ax.axhline(a.target, color="grey", ls=":", lw=1)
        ax.set_xlabel("round")
        ax.set_ylabel(a.key)
        ax.legend()
        fig.tight_layout()
        Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.plot, dpi=120)
        print(f"plot -> {a.plot}")


def reevaluate(run_dir: str | Path, overrides: list[str], name: str = "transfer") -> dict:
    """The transfer evaluations of a finished run again, with other `transfer.KEY=VALUE`
    (k, epochs, tune), into NAME.json / NAME.md; the held-out users and items stay the run's."""
    import yaml
    from .data import federation_for

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "summary.json").is_file():
        raise FedMTLError(f"{run_dir}: not a finished run folder (config.json and summary.json expected)")
    cfg = json.loads((run_dir / "config.json").read_text())
    for ov in overrides:
        key, eq, value = ov.partition("=")
        if not eq or not key.startswith("transfer.") or key.split(".", 1)[1] not in ("k", "epochs", "tune"):
            raise FedMTLError(f"{ov}: expected transfer.k=..., transfer.epochs=... or transfer.tune=...")
        cfg["transfer"][key.split(".", 1)[1]] = yaml.safe_load(value)
    validate_config(cfg)
    fed = federation_for(cfg)
    report = after_run(cfg, fed, run_dir, json.loads((run_dir / "summary.json").read_text()), write=False)
    write_json(run_dir / f"{name}.json", report)
    (run_dir / f"{name}.md").write_text(tables(report, cfg["tasks"]))
    return report


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] not in ("curves", "table", "evaluate"):
            raise FedMTLError("usage: python -m fedmtl.transfer curves NAME=RUN_DIR ... --target X "
                              "| table RUN_DIR | evaluate RUN_DIR [--name NAME] [transfer.KEY=VALUE ...]")
        if argv[0] == "curves":
            curves_main(argv[1:])
        elif argv[0] == "evaluate":
            if len(argv) < 2:
                raise FedMTLError("evaluate: give the run folder")
            rest = argv[2:]
            name = "transfer"
            if "--name" in rest:
                at = rest.index("--name")
                name, rest = rest[at + 1], rest[:at] + rest[at + 2:]
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            torch.set_num_threads(1)  # one user's tiny steps: threads only contend
            print(tables(reevaluate(argv[1], rest, name), json.loads((Path(argv[1]) / "config.json").read_text())["tasks"]))
        else:
            path = Path(argv[1]) / "transfer.json" if len(argv) > 1 else None
            if path is None or not path.is_file():
                raise FedMTLError(f"table: no transfer.json in {argv[1] if len(argv) > 1 else '(no folder given)'}")
            rep = json.loads(path.read_text())
            print(tables(rep, json.loads((path.parent / "config.json").read_text())["tasks"]))
    except FedMTLError as e:
        print(f"fedmtl: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
