"""fedmtl beside the published federated recommenders, on their protocol (issue 28).

The protocol (PROTOCOL.md, `split=leave_one_out`, fedmtl/data/loo.py): every rating a
positive; per user the latest interaction is test, the second latest validation; the
held-out item ranked among 99 sampled negatives the user never interacted with; HR@10 and
NDCG@10 (negatives ahead on a tie); the test figure of the round with the best validation
HR@10.

Two parts:

- `--refs RUN_DIR`: centralised references scored on a run's own split and candidates
  (RUN_DIR/split: train.tsv, valid.tsv, test.tsv, test_candidates.tsv,
  valid_candidates.tsv): popularity (train counts), EASE (Steck 2019; lambda chosen on
  the validation candidates, then scored once on test) and EASE + sequence (EASE at that
  lambda plus the windowed-Gram sequence score of click_mix.seq_weight, itemitem.py, at
  window 10, the 5 latest items, decay 0.7; its weight chosen on validation). Validation is
  never trained on.
- `--runs NAME=GLOB ...`: fedmtl's rows, mean and spread over the runs each glob matches
  (their summary.json: the test figures of the validation-selected round), printed beside
  the published rows below, each with its source.

    python benchmarks/published.py --refs outputs/loo_s0 outputs/loo_s1 ...
    python benchmarks/published.py --runs "fedmtl federated, click=outputs/click_s*" \\
        "fedmtl federated, multi-task=outputs/mt_s*" --refs outputs/click_s*
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # fedmtl from this checkout, installed or not
from fedmtl.data.split import read_part  # noqa: E402
from fedmtl.errors import DataError  # noqa: E402
from fedmtl.data.temporal import recency  # noqa: E402
from fedmtl.itemitem import ease, standardise  # noqa: E402
from fedmtl.sequence import history, seq_matrix, window_part  # noqa: E402
from fedmtl.metrics import sampled_rank_metrics  # noqa: E402

# (system, setting, HR@10 %, NDCG@10 %, source). MovieLens-100K, leave-one-out, 99 negatives.
PFEDREC = "PFedRec (Zhang et al., IJCAI 2023), Table 2, mean of 5 runs"
COFEDREC = "CoFedRec (Zhong et al., WWW 2024), Table 1"
PUBLISHED = [
    ("MF", "centralised", 64.43, 38.95, PFEDREC),
    ("NCF", "centralised", 64.14, 37.91, PFEDREC),
    ("FedMF", "federated", 65.15, 39.38, PFEDREC),
    ("FedNCF", "federated", 60.62, 33.25, PFEDREC),
    ("FedRecon", "federated", 64.45, 37.78, PFEDREC),
    ("MetaMF", "federated", 66.38, 40.59, PFEDREC),
    ("PFedRec", "federated", 71.62, 43.44, PFEDREC),
    ("GPFedRec", "federated", 72.85, 43.77, COFEDREC + " (quoted there)"),
    ("CoFedRec", "federated", 77.52, 50.65, COFEDREC),
]
EASE_LAMBDAS = (50.0, 100.0, 200.0, 300.0, 500.0, 700.0, 1000.0)
SEQ_WEIGHTS = (0.25, 0.5, 1.0, 2.0)
SEQ = {"window": 10, "last": 5, "decay": 0.7}  # ml100k_loo_*'s click_mix.seq_* (chosen on seed 0's validation)


def _ids(path: Path) -> np.ndarray:
    try:
        return read_part(path)[["user", "item"]].to_numpy(dtype=np.int64)
    except DataError as e:
        raise SystemExit(f"published: {e}") from None


def read_candidates(path: Path) -> np.ndarray:
    """[users, 2 + N]: user, held-out item, negatives (raw ids, as data.split.write_candidates writes them)."""
    if not path.is_file():
        raise SystemExit(f"published: {path}: not found (a split=leave_one_out run writes it)")
    try:
        rows = [[int(x) for x in line.split("\t")] for line in path.read_text().splitlines() if line.strip()]
        return np.array(rows, dtype=np.int64)
    except ValueError:
        raise SystemExit(f"published: {path}: expected tab-separated integer ids with the same count per line") \
            from None


class LooSplit:
    """A leave-one-out split folder as a 0/1 train matrix and the candidate rows of test and validation."""

    def __init__(self, folder: Path):
        train = _ids(folder / "train.tsv")
        self.cand = {p: read_candidates(folder / f"{p}_candidates.tsv") for p in ("test", "valid")}
        n_users = int(max(train[:, 0].max(), *(c[:, 0].max() for c in self.cand.values()))) + 1
        n_items = int(max(train[:, 1].max(), *(c[:, 1:].max() for c in self.cand.values()))) + 1
        self.X = np.zeros((n_users, n_items))
        self.X[train[:, 0], train[:, 1]] = 1.0
        self.folder = folder

    def sequence_scores(self, window: int, last: int, decay: float) -> np.ndarray:
        """h_u S for every user (itemitem.py's sequence score) from train.tsv's timestamps."""
        try:
            df = read_part(self.folder / "train.tsv")
        except DataError as e:
            raise SystemExit(f"published: {e}") from None
        u, i = (torch.tensor(df[c].to_numpy(dtype=np.int64)) for c in ("user", "item"))
        age = torch.as_tensor(recency(df))
        items = np.arange(self.X.shape[1])
        s = seq_matrix(window_part(u, i, age, items, window), self.X.T @ self.X)
        h = history(u, i, age, self.X.shape[0], self.X.shape[1], last, decay).numpy()
        return h @ s

    def score(self, scores: np.ndarray, part: str, k: int = 10) -> tuple[float, float]:
        """(HR@k, NDCG@k) of full [users, items] scores on `part`'s candidates."""
        c = self.cand[part]
        s = torch.as_tensor(scores[c[:, 0]])
        hr, nd = sampled_rank_metrics(s, torch.as_tensor(c[:, 1:]), k)
        return float(hr.mean()), float(nd.mean())


def references(run_dir: Path) -> dict[str, dict]:
    """{system: {"hr", "ndcg", "setting"}} on one run's split and candidates (test figures)."""
    sp = LooSplit(run_dir / "split")
    out = {}
    pop = np.broadcast_to(sp.X.sum(0), sp.X.shape)
    hr, nd = sp.score(np.asarray(pop), "test")
    out["popularity"] = {"hr": hr, "ndcg": nd, "setting": "train counts"}
    G = sp.X.T @ sp.X
    best = None
    for lam in EASE_LAMBDAS:
        scores = sp.X @ ease(G, lam)
        v = sp.score(scores, "valid")
        if best is None or v[0] > best[0][0] or (v[0] == best[0][0] and v[1] > best[0][1]):
            best = (v, lam, scores)
    hr, nd = sp.score(best[2], "test")
    out["EASE"] = {"hr": hr, "ndcg": nd, "setting": f"lambda {best[1]:g}"}
    seen = torch.as_tensor(sp.X > 0)
    z_ease = standardise(torch.as_tensor(best[2]), seen)
    z_seq = standardise(torch.as_tensor(sp.sequence_scores(**SEQ)), seen)
    mixed = None
    for w in SEQ_WEIGHTS:
        scores = (z_ease + w * z_seq).numpy()
        v = sp.score(scores, "valid")
        if mixed is None or v[0] > mixed[0][0] or (v[0] == mixed[0][0] and v[1] > mixed[0][1]):
            mixed = (v, w, scores)
    hr, nd = sp.score(mixed[2], "test")
    out["EASE + sequence"] = {"hr": hr, "ndcg": nd, "setting": f"lambda {best[1]:g}, weight {mixed[1]:g}"}
    return out


def fedmtl_rows(pattern: str) -> tuple[list[float], list[float], list[str]]:
    """(HR@10 list, NDCG@10 list, seeds) of the finished runs a glob matches."""
    hrs, nds, seeds = [], [], []
    for d in sorted(glob.glob(pattern)):
        f = Path(d) / "summary.json"
        if not f.is_file():
            continue
        s = json.loads(f.read_text())
        m = s.get("metrics") or {}
        if "click.hr@10" in m:
            hrs.append(m["click.hr@10"])
            nds.append(m["click.ndcg@10"])
            cfg = Path(d) / "config.json"
            seeds.append(str(json.loads(cfg.read_text()).get("seed")) if cfg.is_file() else "?")
    return hrs, nds, seeds


def fmt(values: list[float]) -> str:
    """Mean ± sample standard deviation in %, or the one value."""
    if not values:
        return "-"
    v = 100 * np.asarray(values)
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def table(runs: list[tuple[str, list[float], list[float], str]]) -> str:
    lines = ["| system | HR@10 (%) | NDCG@10 (%) | runs | source |", "| --- | --- | --- | --- | --- |"]
    for name, setting, hr, nd, src in PUBLISHED:
        lines.append(f"| {name} ({setting}) | {hr:.2f} | {nd:.2f} | 5 | {src} |")
    for name, hrs, nds, src in runs:
        lines.append(f"| {name} | {fmt(hrs)} | {fmt(nds)} | {len(hrs)} | {src} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=[], metavar="NAME=GLOB",
                    help="fedmtl rows: a name and a glob of run folders (their summary.json)")
    ap.add_argument("--refs", nargs="*", default=[], type=Path, metavar="RUN_DIR",
                    help="run folders whose split/ the references (popularity, EASE) are scored on, one per seed")
    args = ap.parse_args(argv)
    rows = []
    for spec in args.runs:
        if "=" not in spec:
            raise SystemExit(f"published: --runs {spec!r}: expected NAME=GLOB")
        name, pattern = spec.rsplit("=", 1)  # a name may hold "=" (experiment=...), a folder glob rarely does
        hrs, nds, seeds = fedmtl_rows(pattern)
        if not hrs:
            print(f"published: --runs {name}: no finished run matches {pattern}", file=sys.stderr)
        rows.append((name, hrs, nds, f"this project, seeds {', '.join(seeds)}; test at the best validation round"))
    refs: dict[str, dict] = {}
    for d in args.refs:
        for name, r in references(d).items():
            ref = refs.setdefault(name, {"hr": [], "ndcg": [], "setting": []})
            ref["hr"].append(r["hr"])
            ref["ndcg"].append(r["ndcg"])
            ref["setting"].append(r["setting"])
            print(f"{d}: {name} ({r['setting']}): HR@10 {100 * r['hr']:.2f} NDCG@10 {100 * r['ndcg']:.2f}",
                  file=sys.stderr)
    for name, r in refs.items():
        chosen = {"EASE": f"; {', '.join(r['setting'])} by seed, chosen on validation from "
                            f"{', '.join(f'{x:g}' for x in EASE_LAMBDAS)}",
                  "EASE + sequence": f"; {', '.join(r['setting'])} by seed, the weight chosen on validation from "
                                     f"{', '.join(f'{x:g}' for x in SEQ_WEIGHTS)}"}.get(name, "")
        rows.append((f"{name} (centralised)", r["hr"], r["ndcg"],
                     f"this project, on the runs' own splits and candidates{chosen}"))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
