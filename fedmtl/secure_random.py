"""Randomness that a privacy guarantee rests on: drawn from the OS CSPRNG, never from `seed`.

Every DP noise draw (central, client-side clipping, local and distributed DP, the noisy
clipped count of adaptive clipping) and the choice of which clients a DP round samples
come from here. The bytes come from the kernel's CSPRNG: each draw takes a fresh 256-bit key
and 128-bit counter block from `os.urandom` and expands them with AES-256 in counter mode
(OpenSSL, through `cryptography`, a Flower dependency), as Opacus' secure mode expands a key
from the OS with torchcsprng's AES-CTR: the 32 bytes a noise value takes come about 4x
faster than from `os.urandom`, and a Gaussian draw 1.6x faster. Nothing in a run folder (its
`seed`, config.json, metrics) lets anyone regenerate them, and two runs with the same seed
release different noise. Runs without privacy never call this module and stay
bit-reproducible from their seed.

Gaussian draws follow Opacus' secure mode (Opacus `_generate_noise`, after Mironov's
floating-point attack on DP, CCS 2012): each value is the sum of four independent
N(0, std^2) draws halved, so that its low-order bits do not reveal the draw; the sum
has exactly the requested std. Each N(0, 1) draw is Box-Muller over two CSPRNG uniforms
with 53 random bits each.
"""

from __future__ import annotations

import os
import secrets

import numpy as np

_SYSTEM = secrets.SystemRandom()


def random_bytes(n: int) -> bytes:
    """`n` bytes of AES-256-CTR keystream under a key and counter block fresh from `os.urandom`."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    stream = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    out = stream.update(bytes(int(n)))
    stream.finalize()  # CTR has no tail: nothing to append (a concatenation would copy the stream)
    return out


def uniform(n: int) -> np.ndarray:
    """`n` doubles uniform on (0, 1), 53 random bits each, from the OS CSPRNG (`random_bytes`)."""
    words = np.frombuffer(random_bytes(8 * int(n)), dtype=np.uint64)
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)


def standard_normal(n: int) -> np.ndarray:
    """`n` independent N(0, 1) draws (Box-Muller on CSPRNG uniforms)."""
    half = (int(n) + 1) // 2
    u1, u2 = uniform(half), uniform(half)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
    return z[:n]


def gaussian(shape, std: float, dtype=np.float64) -> np.ndarray:
    """N(0, std^2) noise of `shape`, hardened as Opacus' secure mode: (n1 + n2 + n3 + n4) / 2."""
    shape = (int(shape),) if np.isscalar(shape) else tuple(shape)
    size = int(np.prod(shape, dtype=np.int64))
    if std == 0 or size == 0:
        return np.zeros(shape, dtype=dtype)
    draws = standard_normal(4 * size).reshape(4, size).sum(axis=0) / 2.0
    return (draws * float(std)).reshape(shape).astype(dtype, copy=False)


def add_gaussian_inplace(arrays, std: float) -> None:
    """Add N(0, std^2) from the OS CSPRNG to every array of `arrays`, in place."""
    for a in arrays:
        a += gaussian(a.shape, std, a.dtype)


def normal(mean: float, std: float) -> float:
    """One N(mean, std^2) draw (the noisy clipped count of adaptive clipping)."""
    return float(mean + gaussian((1,), std)[0])


def shuffled(items) -> list:
    """`items` in an order drawn from the OS CSPRNG."""
    out = list(items)
    _SYSTEM.shuffle(out)
    return out

