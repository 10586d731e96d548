"""Replies checked before they reach a strategy: what one client sends can neither crash
the ServerApp nor corrupt the global model.

Flower's strategies trust their replies: a weight of 1e9 makes one client the model, a
negative weight or a NaN poisons the mean, a row index of -1 writes the last item, a
wrong shape or a truncated packed array raises inside the ServerApp. So every training
reply is checked here against what the server sent and what the run allows
(`validate_train_reply`), and every item Gram part against what a part can be
(`validate_gram_part`). A reply that fails is a failed client (metrics.jsonl's
`failed_by: invalid`) with one log line naming the node and the problem; the round
aggregates the rest (screening.py screens a round's replies with these checks).

What a training reply must be (`Rules`, from the config, once per run):

- one ArrayRecord `arrays` and one MetricRecord `metrics`, nothing else;
- `exchange=dense`: the arrays sent, same names in the same order, same shapes and dtypes;
  `exchange=sparse`: the packed keys of sparse.py with consistent lengths (`::rows` against
  the rows of `::rows_delta`, its width the sum of the row tables' widths, `::dense_delta`
  the total size of the other arrays, the int8 scales one per row), in `exchange.dtype`;
- every value finite; row indices in [0, n_items) and unique;
- every coordinate of the update (weights minus what was sent; sparse: the decoded update)
  at most `robust.max_abs_update` in absolute value (int8: scale x 127 too). local_dp adds
  Gaussian noise of a known std: its bound grows by 10 such stds (a legitimate
  coordinate passes 10 sigma with probability 1.5e-23);
- `robust.max_update_norm` (optional): the update's L2 norm over all arrays at most this;
  beyond it the reply is refused (`on_large_update=reject`) or scaled down to it (`clip`).
  The update as received: under local_dp its noise counts too;
- `num-examples` (the strategies' weight) a finite number in [1, max_weight], max_weight
  being `robust.max_weight` or else the largest client's training-example count in the
  federation; exactly 1 in the modes whose clients report a uniform weight (the DP modes);
- metrics among those the client step reports (`num-examples`, `loss.<task>`, `weight.<task>`,
  and Flower's `norm_bit`, 0 or 1, which adaptive client-side clipping needs), finite numbers.
  A privacy mode may leave some out (local_dp sends the weight alone); Flower's FedAvg refuses
  a round whose replies differ in their metric keys, so the strategy gets each valid reply's
  metrics restricted to the keys all of them hold (`screening.common_metrics`).

A Gram part (click_mix, itemitem.py; checked by `screening.validate_gram_part`): `items` 1-d
integers, unique, in [0, n_items); `block` (k, k) for its k items, finite non-negative
integers, symmetric, no co-occurrence count above either item's own count (its diagonal); with
a sequence score, `window` too, the same shape, zero diagonal, no pair above block's count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from ..config_types import RunConfig
from .sparse import DENSE_DELTA, DENSE_SCALE, ROWS_DELTA, ROWS_KEY, ROWS_SCALE, layout

WEIGHT_KEY = "num-examples"
NORM_BIT = "norm_bit"  # flwr.clientapp.mod.adaptiveclipping_mod's metric
NOISE_SIGMAS = 10.0


@dataclass(frozen=True)
class Rules:
    """What this run accepts from a client."""

    exchange: str = "dense"
    dtype: str = "float32"  # exchange.dtype (sparse)
    max_weight: float = 1.0
    fixed_weight: float | None = None  # the DP modes' uniform weight
    max_abs_update: float = 100.0
    max_update_norm: float | None = None
    on_large_update: str = "reject"
    norm_bound: str = "robust.max_update_norm"  # what sets max_update_norm, for the refusal's line
    metrics: frozenset = frozenset({WEIGHT_KEY})  # the keys a reply may hold
    required: frozenset = frozenset({WEIGHT_KEY})  # and must hold


def largest_client(cfg: RunConfig) -> float:
    """The largest number of training examples a client of this federation holds."""
    from ..data import federation_meta

    return float(federation_meta(cfg)["max_examples"])


UNIFORM_WEIGHT_MODES = ("central_dp", "client_clip_dp", "local_dp")  # client_privacy.py: their clients report 1


def _noise_allowance(cfg: RunConfig) -> float:
    """How far local_dp's Gaussian noise may move a value: NOISE_SIGMAS of its stds."""
    p = cfg["privacy"]
    if p["name"] != "local_dp":
        return 0.0
    from .accounting import local_dp_std

    return NOISE_SIGMAS * local_dp_std(p)


def expected_metrics(cfg: RunConfig) -> tuple[frozenset, frozenset]:
    """(the metric keys a training reply may hold, those it must hold)."""
    allowed = {WEIGHT_KEY, NORM_BIT} | {f"{k}.{t}" for t in cfg["tasks"] for k in ("loss", "weight")}
    p = cfg["privacy"]
    adaptive = p["name"] == "client_clip_dp" and p.get("clipping") == "adaptive"
    return frozenset(allowed), frozenset({WEIGHT_KEY, NORM_BIT} if adaptive else {WEIGHT_KEY})


@lru_cache(maxsize=8)
def _rules(cfg_json: str) -> Rules:
    cfg = json.loads(cfg_json)
    robust, ex, p = cfg["robust"], cfg["exchange"], cfg["privacy"]
    mode = p["name"]
    allowed, required = expected_metrics(cfg)
    max_weight, max_norm = robust["max_weight"], robust["max_update_norm"]
    bound, on_large = "robust.max_update_norm", robust["on_large_update"]
    if max_norm is None and mode == "client_clip_dp" and p.get("clipping") == "fixed":
        # every honest client clips its update (with DP rows: update and row indicator) to C itself:
        # an update above it was not clipped, and the noise z*C/m would not cover it
        max_norm, bound, on_large = float(p["clipping_norm"]) * (1 + 1e-3), "privacy.clipping_norm", "reject"
    from ..dp_rows import enabled as dp_rows
    exchange = "dense" if dp_rows(cfg) else ex["name"]  # DP rows: full-size arrays (dp_rows.py)
    return Rules(exchange=exchange, dtype=ex.get("dtype", "float32"),
                 max_weight=float(max_weight) if max_weight is not None else largest_client(cfg),
                 fixed_weight=1.0 if mode in UNIFORM_WEIGHT_MODES else None,
                 max_abs_update=float(robust["max_abs_update"]) + _noise_allowance(cfg),
                 max_update_norm=float(max_norm) if max_norm is not None else None,
                 on_large_update=on_large, norm_bound=bound, metrics=allowed, required=required)


def rules_for(cfg: RunConfig) -> Rules:
    """The run's `Rules`, computed once per run (the largest client's count reads the split)."""
    return _rules(json.dumps(cfg, sort_keys=True, default=str))


class Invalid(Exception):
    """What is wrong with a reply, in a few words."""


# The checks screening.py shares (a Gram part's arrays): a number as a refusal line writes it, an
# array read from a record, its values numbers and finite, a record's keys those expected.


def fmt_num(x) -> str:
    return f"{float(x):.4g}"


def decode_array(record, key: str) -> np.ndarray:
    """The values of record[key], to be read only (an array this process keeps is read without a copy)."""
    from .arrays import peek

    try:
        return peek(record[key])
    except Exception as e:  # foreign serialisation, bytes that are no .npy, pickled objects
        raise Invalid(f"{key} is unreadable ({type(e).__name__})") from None


def require_finite(name: str, v: np.ndarray) -> None:
    if v.dtype.kind not in "iuf":
        raise Invalid(f"{name} has dtype {v.dtype}, not a number")
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise Invalid(f"{name} holds {int((~np.isfinite(v)).sum())} NaN/inf values")


def _bounded(name: str, upd: np.ndarray, bound: float, what: str = "an update of") -> None:
    if upd.size:
        top = float(np.abs(upd).max())
        if not top <= bound:
            raise Invalid(f"{name} holds {what} {fmt_num(top)} > robust.max_abs_update={bound:g}")


def _got(content) -> str:
    """What a reply holds, for the refusal's line: each record's name and type."""
    return ", ".join(f"{k} ({type(content[k]).__name__})" for k in content.keys()) or "nothing"


def _records(content):
    # RecordDict.array_records / .metric_records would rebuild (and type-check) a dict a call
    keys = list(content.keys())
    if (sorted(keys) != ["arrays", "metrics"] or not isinstance(content["arrays"], ArrayRecord)
            or not isinstance(content["metrics"], MetricRecord)):
        raise Invalid(f"expected an ArrayRecord 'arrays' and a MetricRecord 'metrics', got {_got(content)}")
    return content["arrays"], content["metrics"]


def _check_metrics(metrics, rules: Rules) -> None:
    keys = set(metrics.keys())
    missing, extra = sorted(rules.required - keys), sorted(keys - rules.metrics)
    if missing:
        raise Invalid(f"metric {missing[0]} is missing")
    if extra:
        raise Invalid(f"metric {extra[0][:60]} is not one a client reports")
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise Invalid(f"metric {k}={v!r} is not a finite number")
    if NORM_BIT in keys and metrics[NORM_BIT] not in (0, 1):
        raise Invalid(f"metric {NORM_BIT}={metrics[NORM_BIT]!r} is not 0 or 1")
    w = float(metrics[WEIGHT_KEY])
    if rules.fixed_weight is not None:
        if w != rules.fixed_weight:
            raise Invalid(f"{WEIGHT_KEY}={fmt_num(w)}; this privacy mode's clients report {rules.fixed_weight:g}")
    elif not 1.0 <= w <= rules.max_weight:
        raise Invalid(f"{WEIGHT_KEY}={fmt_num(w)} outside [1, {rules.max_weight:g}] (the largest client's examples)")


def check_keys(got: list[str], want: list[str], ordered: bool) -> None:
    if (got == want) if ordered else (set(got) == set(want)):
        return
    missing, extra = [k for k in want if k not in got], [k for k in got if k not in want]
    if missing:
        raise Invalid(f"array {missing[0]} is missing" + (f" ({len(missing)} in all)" if len(missing) > 1 else ""))
    if extra:
        raise Invalid(f"array {extra[0][:60]} was not sent" + (f" ({len(extra)} such)" if len(extra) > 1 else ""))
    raise Invalid("arrays not in the order sent")


def dense_update(record, sent: dict[str, np.ndarray], rules: Rules) -> dict[str, np.ndarray]:
    """A dense reply's update (weights minus sent, float64), checked."""
    check_keys(list(record.keys()), list(sent), ordered=True)
    upd = {}
    for k, ref in sent.items():
        v = decode_array(record, k)
        if v.shape != ref.shape or v.dtype != ref.dtype:
            raise Invalid(f"{k} is {v.dtype}{list(v.shape)}, sent as {ref.dtype}{list(ref.shape)}")
        require_finite(k, v)
        upd[k] = v.astype(np.float64) - ref.astype(np.float64)
        _bounded(k, upd[k], rules.max_abs_update)
    return upd


@lru_cache(maxsize=16)
def _packed_width(shape_items: tuple[tuple[str, tuple], ...]) -> tuple[int, int, int, int, int]:
    """(row-table width, dense values, dense scale rows, catalogue size, row tables) of what was
    sent, given as its (name, shape) pairs (a round's replies all share them: computed once)."""
    shapes = dict(shape_items)
    dense_names, row_names = layout(shapes)
    width = sum(math.prod(shapes[n][1:]) for n in row_names)
    size = sum(math.prod(shapes[n]) for n in dense_names)
    srows = sum(shapes[n][0] if len(shapes[n]) > 1 else 1 for n in dense_names)
    n_items = min((shapes[n][0] for n in row_names), default=0)
    return width, size, srows, n_items, len(row_names)


def _strictly_increasing(a: np.ndarray) -> bool:
    """Whether every index is above the one before (then none repeats): one pass, not a sort."""
    return a.size < 2 or bool((a[1:] > a[:-1]).all())


def sparse_update(record, sent: dict[str, np.ndarray], rules: Rules, decode: bool = True
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(rows, {name: update}) of a packed sparse reply, checked before sparse.unpack reads it
    (decode=False: only checked, None). The checks bound every decoded value: a float code is
    its own value, an int8 code in -127..127 decodes to at most 127 x its scale."""
    from .sparse import unpack

    int8 = rules.dtype == "int8"
    want = [ROWS_KEY, ROWS_DELTA, DENSE_DELTA] + ([ROWS_SCALE, DENSE_SCALE] if int8 else [])
    check_keys(list(record.keys()), want, ordered=False)
    shapes = {k: v.shape for k, v in sent.items()}
    width, size, srows, n_items, n_tables = _packed_width(tuple(shapes.items()))
    v = {k: decode_array(record, k) for k in want}
    rows = v[ROWS_KEY]
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise Invalid(f"{ROWS_KEY} is {rows.dtype}{list(rows.shape)}, not a list of row indices")
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= n_items):
        bad = int(rows.min()) if int(rows.min()) < 0 else int(rows.max())
        raise Invalid(f"{ROWS_KEY} names row {bad}, outside the catalogue's 0..{n_items - 1}")
    if not _strictly_increasing(rows) and len(np.unique(rows)) != len(rows):  # an honest client's rows are sorted
        raise Invalid(f"{ROWS_KEY} names {len(rows) - len(np.unique(rows))} row(s) twice")
    expect = {ROWS_DELTA: (len(rows), width), DENSE_DELTA: (size,)}
    if int8:
        expect.update({ROWS_SCALE: (len(rows), n_tables), DENSE_SCALE: (srows,)})
    for k, shape in expect.items():
        if v[k].shape != shape:
            raise Invalid(f"{k} has shape {list(v[k].shape)}, the arrays sent need {list(shape)}")
        require_finite(k, v[k])
    for k in (ROWS_DELTA, DENSE_DELTA):
        if v[k].size and v[k].dtype != np.dtype(rules.dtype):
            raise Invalid(f"{k} is {v[k].dtype}, exchange.dtype is {rules.dtype}")
    if int8:
        for k in (ROWS_SCALE, DENSE_SCALE):
            if v[k].dtype.kind != "f":
                raise Invalid(f"{k} is {v[k].dtype}, expected float scales")
            if v[k].size and float(v[k].min()) < 0:
                raise Invalid(f"{k} holds a negative scale {fmt_num(v[k].min())}")
            if v[k].size and not float(v[k].max()) * 127 <= rules.max_abs_update:
                top = float(v[k].max())
                raise Invalid(f"{k} holds {fmt_num(top)}: it decodes to up to {fmt_num(top * 127)} "
                              f"> robust.max_abs_update={rules.max_abs_update:g}")
        for k in (ROWS_DELTA, DENSE_DELTA):
            if v[k].size and int(v[k].min()) < -127:
                raise Invalid(f"{k} holds {int(v[k].min())}, outside the int8 code's -127..127")
    else:
        for k in (ROWS_DELTA, DENSE_DELTA):
            _bounded(k, v[k], rules.max_abs_update)
    if not decode:
        return None
    try:
        return unpack(v, shapes)
    except Exception as e:  # the checks above should leave nothing here; never let it reach the strategy
        raise Invalid(f"the packed update does not unpack ({type(e).__name__}: {e})") from None


def _norm(upd: dict[str, np.ndarray]) -> float:
    return float(math.sqrt(sum(float(np.square(u).sum()) for u in upd.values())))


def validate_train_reply(content, sent: dict[str, np.ndarray], rules: Rules) -> str | None:
    """What is wrong with a training reply's content (a few words), or None when the
    strategy may take it. `sent`: the arrays the server sent, by name. A norm above
    robust.max_update_norm is a problem only with on_large_update=reject."""
    try:
        arrays, metrics = _records(content)
        _check_metrics(metrics, rules)
        norm_check = rules.max_update_norm is not None and rules.on_large_update == "reject"
        if rules.exchange == "sparse":
            upd = sparse_update(arrays, sent, rules, decode=norm_check)
            upd = upd[1] if upd is not None else None
        else:
            upd = dense_update(arrays, sent, rules)
        if norm_check:
            norm = _norm(upd)
            if not norm <= rules.max_update_norm:
                return f"update norm {fmt_num(norm)} > {rules.norm_bound}={rules.max_update_norm:g}"
    except Invalid as e:
        return str(e)
    except Exception as e:  # anything a check did not foresee is still the client's problem, not the run's
        return f"unreadable reply ({type(e).__name__}: {str(e)[:120]})"
    return None


def clip_update(content, sent: dict[str, np.ndarray], rules: Rules):
    """(content, the norm before) with the update scaled down to robust.max_update_norm, for a
    reply that `validate_train_reply` passed; (content, None) when within the bound. Dense:
    the weights become sent + update x factor; sparse: the deltas (int8: the scales) times
    the factor."""
    if rules.max_update_norm is None:
        return content, None
    record = content["arrays"]
    if rules.exchange == "sparse":
        upd = sparse_update(record, sent, rules)[1]
    else:
        upd = dense_update(record, sent, rules)
    norm = _norm(upd)
    if norm <= rules.max_update_norm:
        return content, None
    factor = rules.max_update_norm / norm
    if rules.exchange == "sparse":
        scaled = {k: record[k].numpy() for k in record.keys()}
        for k in ((ROWS_SCALE, DENSE_SCALE) if rules.dtype == "int8" else (ROWS_DELTA, DENSE_DELTA)):
            scaled[k] = np.asarray(scaled[k] * factor, dtype=scaled[k].dtype)
    else:
        scaled = {k: np.asarray(sent[k].astype(np.float64) + upd[k] * factor, dtype=sent[k].dtype) for k in sent}
    out = RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in scaled.items()}),
                      "metrics": content["metrics"]})
    return out, norm


def validate_evaluate_reply(content, pool: bool = True) -> str | None:
    """What is wrong with a client's evaluation reply (a MetricRecord 'metrics' of finite
    numbers or lists of them, a test count >= 0, parts each task can have given
    (metrics.check_part), parts that metrics.combine can pool), or None. pool=False: all but
    the last (screening.screen_evaluate pools a round's parts at once, each alone only if that
    fails: `pool_problem`)."""

    keys = list(content.keys())
    if keys != ["metrics"] or not isinstance(content["metrics"], MetricRecord):
        return f"expected one MetricRecord 'metrics', got {_got(content)}"
    part = dict(content["metrics"])
    for k, v in part.items():
        values = v if isinstance(v, list) else [v]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in values):
            return f"metric {k[:60]} holds a value that is not a finite number"
    n = part.get(WEIGHT_KEY)
    if n is None or not 0 <= n:
        return f"{WEIGHT_KEY}={n!r}: expected a test count >= 0"
    from ..metrics import check_part

    problem = check_part(part)
    if problem is not None:
        return problem[:120]
    return pool_problem(part) if pool else None


def pool_problem(part: dict) -> str | None:
    """Why one client's metric parts do not pool alone (metrics.combine raises), or None."""
    from ..metrics import combine

    try:
        combine([part])
    except Exception as e:  # noqa: BLE001 -- any way a part breaks the pooling makes it invalid
        return f"its metric parts do not pool ({type(e).__name__}: {str(e)[:80]})"
    return None
