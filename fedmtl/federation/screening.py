"""A round's replies screened before a strategy sees them, with the checks of one reply in
replies.py: the invalid ones left out (one WARNING line each for a round's first LISTED, one
line counting the rest; or the run stopped under on_client_failure=stop), large updates
clipped (robust.on_large_update=clip), the metrics restricted to the keys all replies hold,
and the replies put in node order. Training (`screen_train`), evaluation (`screen_evaluate`)
and item Gram parts (`screen_gram`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter

import numpy as np

from ..config_types import RunConfig
from .failures import RoundFailure
from .replies import (Invalid, check_keys, clip_update, decode_array, fmt_num, require_finite, rules_for,
                      pool_problem, validate_evaluate_reply)
from .reply_groups import validate_train_replies

log = logging.getLogger("fedmtl")

LISTED = 10  # a round's invalid replies named one WARNING line each; the others are counted in one line
DIVERGED = ("NaN/inf", "robust.max_abs_update", "is not a finite number")  # problems a diverged client's reply has


class Listing:
    """A round's invalid replies as log lines: the first LISTED one line each, the rest counted
    by kind in one closing line (a diverging model makes every client's reply invalid: 943
    lines a round otherwise)."""

    def __init__(self, what: str):
        self.what, self.listed, self.rest = what, 0, Counter()

    def warn(self, problem: str, fmt: str, *args) -> None:
        if self.listed < LISTED:
            self.listed += 1
            log.warning(fmt, *args)
        else:  # the kind: the problem without its numbers and values
            self.rest[re.sub(r"=\S+", "=...", re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", problem))] += 1

    def close(self) -> None:
        if self.rest:
            kinds = "; ".join(f"{n} x {k}" for k, n in self.rest.most_common(3))
            more = len(self.rest) - 3
            log.warning("%s: %d more invalid replies left out, not named (%s%s)", self.what, sum(self.rest.values()),
                        kinds, f"; {more} other kinds" if more > 0 else "")


def common_metrics(replies) -> None:
    """Restrict the metrics of valid replies (in place) to the keys all of them hold, which
    Flower's FedAvg requires of a round (it raises otherwise)."""
    from flwr.app import MetricRecord

    replies = [r for r in replies if not r.has_error()]
    if not replies:
        return
    keys = [tuple(r.content["metrics"].keys()) for r in replies]
    if keys.count(keys[0]) == len(keys):  # the usual round: every reply the same keys in the same order
        return
    common = set.intersection(*map(set, keys))
    for r, k in zip(replies, keys):
        if set(k) != common:
            m = r.content["metrics"]
            r.content["metrics"] = MetricRecord({k: v for k, v in m.items() if k in common})


class TrainChecks:
    """`validate_train_reply` of a training round's replies against what was sent to each node:
    called with replies as they come (an in-process grid hands over each part of its workers'
    answers while the clients behind them still train: `send_train`), or asked for one
    (`problem`) by screen_train, which checks any reply not checked yet. It only records;
    screen_train logs, counts and stops as before, in node order."""

    def __init__(self, cfg: RunConfig, msgs):
        self.rules = rules_for(cfg)
        self.sent_to = {m.metadata.dst_node_id: m.content["arrays"] for m in msgs}
        self.decoded: dict[int, dict[str, np.ndarray]] = {}  # a round's messages share one record: decoded once
        self.problems: dict[int, tuple] = {}  # id(reply) -> (reply, its problem or None): the reply kept alive

    def sent(self, node: int) -> dict[str, np.ndarray]:
        record = self.sent_to.get(node) or next(iter(self.sent_to.values()))
        if id(record) not in self.decoded:
            self.decoded[id(record)] = {k: v.numpy() for k, v in record.items()}
        return self.decoded[id(record)]

    def _checked(self, r) -> bool:
        hit = self.problems.get(id(r))
        return hit is not None and hit[0] is r

    def __call__(self, replies) -> None:
        """Check every reply not checked yet, those to the same arrays together (validate_train_replies)."""
        groups: dict[int, list] = {}
        for r in replies:
            if not r.has_error() and not self._checked(r):
                groups.setdefault(id(self.sent(r.metadata.src_node_id)), []).append(r)
        for group in groups.values():
            found = validate_train_replies([r.content for r in group], self.sent(group[0].metadata.src_node_id),
                                           self.rules)
            self.problems.update((id(r), (r, p)) for r, p in zip(group, found))

    def problem(self, r) -> str | None:
        """The reply's problem or None (checked now if it was not yet)."""
        if not self._checked(r):
            self([r])
        return self.problems[id(r)][1]


def send_train(grid, msgs, timeout, checks: TrainChecks) -> list:
    """grid.send_and_receive of a round's training messages; a grid that reads its answer in parts
    (engine/inprocess.py: `reads_parts`) hands each to `checks` (its `on_part`) as it comes."""
    if not getattr(grid, "reads_parts", False):
        return grid.send_and_receive(msgs, timeout=timeout)
    grid.on_part = checks
    try:
        return grid.send_and_receive(msgs, timeout=timeout)
    finally:
        grid.on_part = None


def screen_train(cfg: RunConfig, rnd: int, msgs, replies, checks: TrainChecks | None = None) -> tuple[list, int, int]:
    """A training round's replies as the strategy may take them: (error replies and valid
    replies, in their order, valid ones clipped where robust.on_large_update=clip; how many
    were invalid; how many were clipped). One WARNING line per invalid reply; under
    on_client_failure=stop the first one stops the run. checks: the round's TrainChecks (the
    replies it checked as they came are not checked again)."""
    checks = checks if checks is not None else TrainChecks(cfg, msgs)
    checks(replies)  # those not checked as they came, together
    rules, sent = checks.rules, checks.sent
    kept, invalid, clipped, problems = [], 0, 0, []
    listing = Listing(f"round {rnd}")
    for r in replies:
        if r.has_error():
            kept.append(r)
            continue
        node = r.metadata.src_node_id
        problem = checks.problem(r)
        if problem is not None:
            problems.append(problem)
            if cfg["on_client_failure"] == "stop":
                raise RoundFailure(f"round {rnd} train: node {node} sent an invalid reply ({problem}); stopping "
                                   "(on_client_failure=stop)")
            listing.warn(problem, "round %d: node %d sent an invalid reply (%s); left out of the aggregate", rnd, node,
                         problem)
            invalid += 1
            continue
        if rules.max_update_norm is not None and rules.on_large_update == "clip":
            r.content, norm = clip_update(r.content, sent(node), rules)
            if norm is not None:
                clipped += 1
                log.info("round %d: node %d's update norm %.4g clipped to robust.max_update_norm=%g", rnd, node,
                         norm, rules.max_update_norm)
        kept.append(r)
    listing.close()
    if problems and len(problems) == sum(1 for r in replies if not r.has_error()) \
            and all(any(d in p for d in DIVERGED) for p in problems):  # every client diverged
        from ..errors import DivergedError
        raise DivergedError(f"round {rnd}: every client's reply holds NaN/inf or out-of-bound values ({problems[0]}; "
                            "training diverged); lower train.lr, train.shared_lr or the strategy's server rate; "
                            "rounds before it are in metrics.jsonl and checkpoint/")
    common_metrics(kept)
    return kept, invalid, clipped


def validate_gram_part(content, n_items: int, clip: float | None = None, window: bool = False) -> str | None:
    """What is wrong with a client's item Gram part (itemitem.gram_parts), or None. With `clip`
    (click_mix's DP Gram: itemitem.clip_parts) the counts may be scaled down, to a joint
    Frobenius norm <= clip. `window`: the part must also hold the windowed Gram ("window",
    click_mix.seq_weight), over the same items, no pair counted more often than in "block"."""
    try:
        if list(content.keys()) != ["gram"] or list(content.array_records) != ["gram"]:
            return f"expected one ArrayRecord 'gram', got {', '.join(content.keys()) or 'nothing'}"
        record = content["gram"]
        check_keys(sorted(record.keys()), ["block", "items", "window"] if window else ["block", "items"],
                    ordered=True)
        items, block = decode_array(record, "items"), decode_array(record, "block")
        if items.ndim != 1 or items.dtype.kind not in "iu":
            return f"items is {items.dtype}{list(items.shape)}, not a list of item indices"
        if items.size and (int(items.min()) < 0 or int(items.max()) >= n_items):
            bad = int(items.min()) if int(items.min()) < 0 else int(items.max())
            return f"items names item {bad}, outside the catalogue's 0..{n_items - 1}"
        if len(np.unique(items)) != len(items):
            return f"items names {len(items) - len(np.unique(items))} item(s) twice"
        k = len(items)
        blocks = {"block": block, **({"window": decode_array(record, "window")} if window else {})}
        for name, b in blocks.items():
            if b.shape != (k, k):
                return f"{name} has shape {list(b.shape)}, its {k} items need [{k}, {k}]"
            require_finite(name, b)
            if b.size and float(b.min()) < 0:
                return f"{name} holds a negative count {fmt_num(b.min())}"
            if clip is None and not np.array_equal(b, np.round(b)):
                return f"{name} holds counts that are not whole numbers"
            if not np.array_equal(b, b.T):
                return f"{name} is not symmetric"
        norm = float(np.sqrt(sum(np.sum(b.astype(np.float64) ** 2) for b in blocks.values())))
        if clip is not None and norm > clip * (1 + 1e-5):
            what = "block's norm" if not window else "block and window's joint norm"
            return f"{what} {fmt_num(norm)} is above click_mix.dp_clip={fmt_num(clip)}"
        diag = np.diag(block)
        if (block > np.minimum(diag[:, None], diag[None, :])).any():
            return "block counts a pair of items more often than one of its items"
        if window:
            w = blocks["window"]
            if np.diag(w).any():
                return "window counts an item with itself"
            if (w > block * (1 + 1e-5)).any():
                return "window counts a pair of items more often than block does"
    except Invalid as e:
        return str(e)
    except Exception as e:
        return f"unreadable part ({type(e).__name__}: {str(e)[:120]})"
    return None


def screen_gram(n_items: int, replies, clip: float | None = None, window: bool = False) -> list:
    """The Gram replies that carry a valid part (in their order; `window`: with the windowed
    Gram too); one WARNING line for each that does not (error replies are left out silently:
    the caller counts them)."""
    kept = []
    for r in replies:
        if r.has_error():
            continue
        problem = validate_gram_part(r.content, n_items, clip, window)
        if problem is not None:
            log.warning("item Gram: node %d sent an invalid part (%s); left out of the Gram", r.metadata.src_node_id,
                        problem)
            continue
        kept.append(r)
    return kept


def screen_evaluate(rnd: int, replies) -> tuple[list, int]:
    """An evaluation's replies as the strategy may take them: (error replies and valid ones,
    in their order; how many were invalid). A valid reply must also hold the metric keys
    most replies hold (Flower's mean raises on a round whose replies differ). One WARNING
    line per invalid reply; the evaluation pools the rest."""
    from collections import Counter

    from ..metrics import combine

    replies = list(replies)
    problems = {id(r): validate_evaluate_reply(r.content, pool=False) for r in replies if not r.has_error()}
    try:  # the parts that pass the other checks pool together, so each alone does: one combine, not one a reply
        combine([dict(r.content["metrics"]) for r in replies if problems.get(id(r), "") is None])
        pooled = True
    except Exception:  # noqa: BLE001 -- find which, one reply at a time
        pooled = False
    ok, kept, invalid = [], [], 0
    listing = Listing(f"round {rnd} evaluation")
    for r in replies:
        if r.has_error():
            kept.append(r)
            continue
        problem = problems[id(r)]
        if problem is None and not pooled:
            problem = pool_problem(dict(r.content["metrics"]))
        if problem is None:
            ok.append(r)
            kept.append(r)
            continue
        listing.warn(problem, "round %d: node %d sent an invalid evaluation (%s); left out", rnd,
                     r.metadata.src_node_id, problem)
        invalid += 1
    if ok:
        usual = Counter(frozenset(r.content["metrics"].keys()) for r in ok).most_common(1)[0][0]
        for r in ok:
            keys = frozenset(r.content["metrics"].keys())
            if keys != usual:
                odd = sorted(keys ^ usual)[0]
                where = "not among" if odd in keys else "missing from"
                listing.warn(f"metric {odd[:60]} is {where} the others'",
                             "round %d: node %d sent an invalid evaluation (metric %s is %s the others'); left out",
                             rnd, r.metadata.src_node_id, odd[:60], where)
                kept.remove(r)
                invalid += 1
    listing.close()
    return kept, invalid


def by_node(replies) -> list:
    """Replies in node order: the strategy's float sums then do not depend on the order in
    which clients were sampled or answered (same seed, same config -> same bits)."""
    return sorted(replies, key=lambda m: m.metadata.src_node_id)
