"""Shamir secret sharing for SecAgg+, as Flower 1.41's `flwr.common.secure_aggregation.crypto.shamir`
does it (pycryptodome's `Shamir` over GF(2^128), one 16-byte chunk of the padded secret at a
time; a share is 4 bytes of index then one 16-byte share per chunk), faster where it costs:

- `create_shares`: Flower starts a ThreadPoolExecutor for each secret; the chunks are pure
  Python under the GIL, so the pool only adds start-up and waits (2 pools per client and
  round, a quarter of the clients' key-sharing stage at 943 clients). Here: the same
  `Shamir.split` calls (their coefficients from pycryptodome's CSPRNG), one after another.
- `combine_shares`: pycryptodome's `Shamir.combine` recomputes the Lagrange weights of the
  share indices (a field inversion each) and multiplies bit by bit in Python for every
  16-byte chunk; the SecAgg+ server recombines every active client's mask seed each round
  (943 x 3 chunks at MovieLens-100k), which was about a sixth of a SecAgg+ round. Here the
  weights are computed once per set of indices with pycryptodome's own field element, and
  each chunk is the sum of share x weight, multiplied four bits at a time. The result is the
  same field arithmetic, checked against `Shamir.combine` value for value (tests); without
  pycryptodome's `_Element` (a later release) it falls back to `Shamir.combine`.

Nothing here draws randomness of its own: the secrets and the polynomials' coefficients are
the caller's and pycryptodome's.
"""

from __future__ import annotations

import functools

from Crypto.Protocol.SecretSharing import Shamir
from Crypto.Util.Padding import pad, unpad

_MASK = (1 << 128) - 1  # GF(2^128) modulo x^128 + x^7 + x^2 + x + 1 (pycryptodome's field)


def create_shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """Flower's `create_shares`: `num` shares of `secret`, any `threshold` of which give it back."""
    padded = pad(secret, 16)
    shares = [bytearray(idx.to_bytes(4, "little", signed=False)) for idx in range(1, num + 1)]
    for at in range(0, len(padded), 16):
        for idx, share in Shamir.split(threshold, num, padded[at:at + 16], ssss=False):
            shares[idx - 1] += share
    return [bytes(share) for share in shares]


def combine_shares(share_list: list[bytes]) -> bytes:
    """Flower's `combine_shares`: the secret from shares made by `create_shares` (ValueError
    "Failed to combine shares" where the result is not a padded secret, "Duplicate share" where
    an index repeats, as pycryptodome's)."""
    chunks = (len(share_list[0]) - 4) >> 4
    if any(len(share) != 4 + 16 * chunks for share in share_list):  # (pycryptodome: "16 byte string")
        raise ValueError("Failed to combine shares: the shares are not all 4 + 16 k bytes long")
    indices = tuple(int.from_bytes(share[:4], "little", signed=False) for share in share_list)
    if len(set(indices)) != len(indices):
        raise ValueError("Duplicate share")
    tables = _weight_tables(indices)
    if tables is None:  # (pycryptodome without _Element)
        padded = b"".join(Shamir.combine([(i, s[4 + 16 * c:20 + 16 * c]) for i, s in zip(indices, share_list)],
                                         ssss=False) for c in range(chunks))
    else:
        out = []
        for c in range(chunks):
            value = 0
            for table, share in zip(tables, share_list):
                value ^= _times(table, int.from_bytes(share[4 + 16 * c:20 + 16 * c], "big"))
            out.append(value.to_bytes(16, "big"))
        padded = b"".join(out)
    try:
        return unpad(padded, 16)
    except ValueError:
        raise ValueError("Failed to combine shares") from None


@functools.lru_cache(maxsize=256)
def _weight_tables(indices: tuple[int, ...]) -> list[list[int]] | None:
    """For each share, the table of its Lagrange weight at 0 (prod_m x_m / (x_j + x_m), the
    weight `Shamir.combine` computes, with pycryptodome's field element) times 0..15."""
    try:
        from Crypto.Protocol.SecretSharing import _Element
    except ImportError:  # pragma: no cover (a pycryptodome without it)
        return None
    xs = [_Element(i) for i in indices]
    tables = []
    for j, x_j in enumerate(xs):
        num, den = _Element(1), _Element(1)
        for m, x_m in enumerate(xs):
            if m != j:
                num *= x_m
                den *= x_j + x_m
        weight = int(num * den.inverse())
        tables.append([_clmul_small(weight, t) for t in range(16)])
    return tables


def _clmul_small(a: int, t: int) -> int:
    """a x t as polynomials over GF(2) (no reduction), t < 16."""
    out = 0
    for bit in range(4):
        if t >> bit & 1:
            out ^= a << bit
    return out


def _times(table: list[int], y: int) -> int:
    """weight x y in GF(2^128), `table` the weight's multiples by 0..15 (four bits of y at a time,
    then the product's high bits folded back by x^128 = x^7 + x^2 + x + 1)."""
    acc = 0
    shift = 0
    while y:
        acc ^= table[y & 15] << shift
        y >>= 4
        shift += 4
    for _ in range(2):  # the fold's own overflow (at most 7 bits) folds once more
        high = acc >> 128
        acc = (acc & _MASK) ^ high ^ (high << 1) ^ (high << 2) ^ (high << 7)
    return acc
