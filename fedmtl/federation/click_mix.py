"""click_mix on the server (fedmtl/itemitem.py holds the maths): before round 1 the item Gram
is summed from the clients' parts (in the clear under privacy=none, as a SecAgg+ sum under
privacy=secagg) and EASE solved; with each evaluation the rows of B each client needs are
attached to its message, a chunk of clients at a time."""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from .. import itemitem, secure_random
from ..config_types import RunConfig
from ..data import federation_meta
from .arrays import count_bytes, nbytes, peek, record as fast_record
from .failures import RoundFailure, check_refusals, needed_nodes, wait_for_nodes
from .accounting import gram_noise_multiplier
from .screening import by_node, screen_gram

log = logging.getLogger("fedmtl")


class ItemItem:
    """click_mix on the server (itemitem.py): EASE's B per lam, and the items each node's
    Gram part named, so that each evaluation message carries only the rows of B that the
    node's users need (x_u B reads the rows of u's items)."""

    def __init__(self, cfg: RunConfig, gram: np.ndarray, node_items: dict, whole_once: bool = False,
                 dp_release: tuple[int, int] | None = None, window: np.ndarray | None = None):
        self.cfg, self.node_items, self.n_items = cfg, node_items, gram.shape[0]
        self.dp_release = dp_release  # a DP Gram: (clients summed, clients asked), for the ledger
        self.own, self.grid = itemitem.solve_each(cfg, lambda lam: itemitem.ease(gram, lam))
        # click_mix.seq_weight: S from the windowed Gram (itemitem.seq_matrix), rows sent like B's
        self.seq = None if window is None else itemitem.seq_matrix(window, gram)
        # secure Gram (privacy=secagg): the server does not know whose items are whose, so each
        # node gets the whole of B once (and the grid's at the final evaluation) and keeps its rows
        self.whole_once, self.sent = whole_once, set()

    def lams(self) -> list[float]:
        """The lams solved: the run's blend's and the grid's."""
        own = {float(self.cfg["click_mix"]["lam"])} if self.own is not None else set()
        return sorted(own | set(self.grid))

    def attach(self, msgs: list, final: bool) -> int:
        """Put B's rows into evaluation messages ("b": the run's blend; "grid@<lam>": the
        selection grid's, in the final evaluation); the bytes this adds."""
        if self.whole_once:
            return self._attach_whole(msgs, final)
        total = 0
        for m in msgs:
            items = self.node_items.get(m.metadata.dst_node_id)
            if items is None:  # no Gram part from this node: the whole B
                items = np.arange(self.n_items, dtype=np.int64)
            arrays = {"items": items}
            if self.own is not None:
                arrays["b"] = itemitem.RowsOf(self.own, items)
            if self.seq is not None:
                arrays["seq"] = itemitem.RowsOf(self.seq, items)
            if final:
                arrays.update({f"grid@{lam:g}": itemitem.RowsOf(b, items) for lam, b in self.grid.items()})
            if len(arrays) > 1:
                # rows taken, and their .npy bytes made, only if the message is read or leaves the
                # process (arrays.py); the bytes counted are those bytes' length, made or not
                rec = fast_record(arrays)
                # A strategy's messages share one RecordDict: each gets its own (same records, plus its rows)
                m.content = RecordDict({**dict(m.content.items()), "item_item": rec})
                total += sum(nbytes(v) + len(k) for k, v in arrays.items())
        return total

    CHUNK_BYTES = 512 * 2**20  # the rows of B attached to the messages of one send at most

    def chunks(self, msgs: list, final: bool, budget: float | None = None) -> list[list]:
        """The evaluation messages in groups whose rows of B stay under `budget` bytes (None:
        CHUNK_BYTES; one group: the whole of B, shared by every message). Each group is attached,
        sent and its rows dropped before the next: at 6,040 clients of MovieLens-1M the rows of
        all would be 11 GB where they are taken (a grid whose messages leave the process)."""
        budget = self.CHUNK_BYTES if budget is None else budget
        if self.whole_once:
            return [msgs]
        per_item = 4 * self.n_items * ((self.own is not None) + (self.seq is not None)
                                       + (len(self.grid) if final else 0))
        out, cur, size = [], [], 0
        for m in msgs:
            items = self.node_items.get(m.metadata.dst_node_id)
            rows = self.n_items if items is None else len(items)
            if cur and size + rows * per_item > budget:
                out.append(cur)
                cur, size = [], 0
            cur.append(m)
            size += rows * per_item
        return out + [cur] if cur else out

    def _attach_whole(self, msgs: list, final: bool) -> int:
        """The whole of B ("whole": the client keeps its own rows, client_app) to each node that
        has not had it, and the grid's to every node at the final evaluation: one record shared
        by all the messages."""
        rec, total = None, 0
        for m in msgs:
            node = m.metadata.dst_node_id
            if node in self.sent and not (final and self.grid):
                continue
            if rec is None:
                arrays = {"whole": Array(np.ones(1, np.float32))}
                if self.own is not None:
                    arrays["b"] = Array(self.own)
                if self.seq is not None:
                    arrays["seq"] = Array(self.seq)
                if final:
                    arrays.update({f"grid@{lam:g}": Array(b) for lam, b in self.grid.items()})
                rec = ArrayRecord(arrays)
            m.content = RecordDict({**dict(m.content.items()), "item_item": rec})
            total += rec.count_bytes()
            self.sent.add(node)
        return total


def secure_item_item_round(grid: Grid, cfg: RunConfig, strategy):
    """click_mix under privacy=secagg: the item Gram as a SecAgg+ sum of the clients' parts
    (secure_gram.SecureGram), EASE solved on it; B goes whole to each node once (ItemItem)."""
    from .secure_gram import SecureGram

    t0 = time.time()
    wait_for_nodes(grid, needed_nodes(strategy, "train"), cfg["round_timeout"], 0, "item Gram")
    secure = SecureGram(cfg)
    (gram, window), up, summed = secure.gram(grid)
    dp = (summed, cfg["num_clients"]) if itemitem.dp_gram(cfg) else None  # secagg_dp: the clients' noise is in it
    ii = ItemItem(cfg, gram, {}, whole_once=True, dp_release=dp, window=window)
    log.info("click_mix: item Gram%s summed by SecAgg+ from %d clients in %d chunks (%.1f MB up), EASE (lam %s) "
             "solved; %.1fs in all", " and windowed Gram" if window is not None else "", summed, secure.chunks,
             up / 1e6, ", ".join(f"{lam:g}" for lam in ii.lams()), time.time() - t0)
    return ii, up


def item_item_round(grid: Grid, cfg: RunConfig, strategy):
    """click_mix (itemitem.py), before round 1: ask every connected client for its users'
    item Gram part, add the parts up and solve EASE. Returns (an `ItemItem`, the bytes the
    parts took up), or (None, 0) when the run blends nothing and scores no selection grid.
    Parts come in the clear under privacy=none, clipped (the server adds the noise) under
    client_clip_dp; under secagg and secagg_dp, as a SecAgg+ sum (secagg_dp: clipped, with each
    client's share of the noise). config.py refuses click_mix with the other modes."""
    if not itemitem.needed(cfg):
        return None, 0
    if cfg["privacy"]["name"] in ("secagg", "secagg_dp"):
        return secure_item_item_round(grid, cfg, strategy)
    dp = itemitem.dp_gram(cfg)  # client_clip_dp: clipped parts, the server adds the noise
    clip = float(cfg["click_mix"]["dp_clip"]) if dp else None
    from flwr.app import Message
    from flwr.common import MessageType

    t0 = time.time()
    nodes = sorted(wait_for_nodes(grid, needed_nodes(strategy, "train"), cfg["round_timeout"], 0,
                                  "item Gram").get_node_ids())
    msgs = [Message(RecordDict({"config": ConfigRecord({"query": "gram"})}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in nodes]
    n_items = int(federation_meta(cfg)["n_items"])
    seq = itemitem.seq_active(cfg)  # click_mix.seq_weight: the windowed Gram comes with each part
    up, node_items = 0, {}
    replies = by_node(grid.send_and_receive(msgs, timeout=cfg["round_timeout"]))
    check_refusals("item Gram", msgs, replies, "the clients' privacy floors do not answer item Gram queries "
                   "(click_mix needs them: set click_mix.weight=0 and no grid)")
    kept = screen_gram(n_items, replies, clip, seq)  # screening.py: well-formed parts only, one log line per other
    # Parts in the clear are whole counts, each at most its diagonal's largest (screen_gram): while
    # their sum stays below 2^24 every float32 sum is exact, the float64 Gram the same bits, and
    # adding float32 parts into a float32 matrix moves half the bytes (about 2x faster)
    exact32 = clip is None and sum(float(peek(r.content["gram"]["block"]).diagonal().max(initial=0))
                                   for r in kept) < 2 ** 24
    acc = np.float32 if exact32 else np.float64
    gram = np.zeros((n_items, n_items), dtype=acc)
    window = np.zeros((n_items, n_items), dtype=acc) if seq else None
    blocks, windows = [], []
    for r in kept:
        part = r.content["gram"]  # read only: the arrays a reply keeps in this process, without copies
        up += count_bytes(part)
        items = peek(part["items"])
        blocks.append((items, peek(part["block"])))
        if seq:
            windows.append((items, peek(part["window"])))
        node_items[r.metadata.src_node_id] = np.asarray(items, dtype=np.int64)
    # exact sums in any order: the Gram's rows in bands on two threads; else one part after another
    itemitem.add_parts(gram, blocks, parallel=exact32)
    if seq:
        itemitem.add_parts(window, windows, parallel=exact32)
    gram = gram.astype(np.float64, copy=False)
    window = window.astype(np.float64, copy=False) if seq else None
    ok = len(node_items)
    if ok == 0:
        raise RoundFailure(f"item Gram: none of the {len(msgs)} clients sent its part "
                           "(click_mix needs them)")
    if dp:  # N(0, (z * dp_clip)^2) on each entry of the upper triangles, from the OS CSPRNG, mirrored
        upper = np.triu_indices(n_items)
        for m in (gram, window) if seq else (gram,):
            noise = np.zeros_like(m)
            noise[upper] = secure_random.gaussian(len(upper[0]), gram_noise_multiplier(cfg) * clip)
            m += noise + np.triu(noise, 1).T
    ii = ItemItem(cfg, gram, node_items, dp_release=(ok, len(msgs)) if dp else None, window=window)
    log.log(logging.INFO if ok == len(msgs) else logging.WARNING,
            "click_mix: item Gram from %d of %d clients (%.1f MB up), EASE (lam %s) solved in %.1fs", ok,
            len(msgs), up / 1e6, ", ".join(f"{lam:g}" for lam in ii.lams()),
            time.time() - t0)
    return ii, up


def send_evaluate(grid: Grid, cfg: RunConfig, msgs: list, item_item: ItemItem | None, final: bool) -> tuple[list, int]:
    """(the replies in node order, the bytes click_mix's rows of B add) of evaluation messages.
    With click_mix, the rows are attached a chunk of messages at a time (ItemItem.chunks), sent,
    and taken off the messages once answered, so the server holds one chunk's rows."""
    if item_item is None:
        return by_node(grid.send_and_receive(msgs, timeout=cfg["round_timeout"])), 0
    replies, added = [], 0
    # an in-process grid (engine/) keeps the rows as rows of the matrix, never taken at once
    # (arrays.RowsOf; its workers get each matrix once): its budget is unbounded, one send
    for chunk in item_item.chunks(msgs, final, getattr(grid, "eval_rows_bytes", None)):
        plain = [m.content for m in chunk]
        added += item_item.attach(chunk, final)
        replies += list(grid.send_and_receive(chunk, timeout=cfg["round_timeout"]))
        for m, content in zip(chunk, plain):
            m.content = content
    return by_node(replies), added
