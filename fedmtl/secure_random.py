"""Randomness that a privacy guarantee rests on: drawn from the OS CSPRNG, never from `seed`.

Every DP noise draw (central, client-side clipping, local and distributed DP, the noisy
clipped count of adaptive clipping) and the choice of which clients a DP round samples
come from here. The bytes come from the kernel's CSPRNG: each draw takes a fresh 256-bit key
and 128-bit counter block from `os.urandom` and expands them with AES-256 in counter mode
(OpenSSL, through `cryptography`, a Flower dependency), as Opacus' secure mode expands a key
from the OS with torchcsprng's AES-CTR, written in place in chunks into the array it fills
(a Gaussian of 1M values: about 40 ms on this project's 2-core machine, 190 ms with all
its bytes from `os.urandom`). Nothing in a run folder (its
`seed`, config.json, metrics) lets anyone regenerate them, and two runs with the same seed
release different noise. Runs without privacy never call this module and stay
bit-reproducible from their seed.

Gaussian draws follow Opacus' secure mode (Opacus `_generate_noise`, after Mironov's
floating-point attack on DP, CCS 2012): each value is the sum of four independent
N(0, std^2) draws halved, so that its low-order bits do not reveal the draw; the sum
has exactly the requested std. The N(0, 1) draws come from Box-Muller, a pair of them from
two CSPRNG uniforms with 53 random bits each.
"""

from __future__ import annotations

import math
import os
import secrets

import numpy as np
import torch

_SYSTEM = secrets.SystemRandom()


_CHUNK = 1 << 20  # keystream bytes per cipher call: one zero block, reused, and no large temporary
_ZEROS = bytes(_CHUNK)


def random_words(n: int) -> np.ndarray:
    """`n` uint64 words of AES-256-CTR keystream under a key and counter block fresh from `os.urandom`.

    The keystream is written in place, a chunk at a time, into the array returned (encrypting
    zeros gives the keystream itself), so a large draw allocates its output once and nothing more.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    n = int(n)
    out = np.empty(n + 2, dtype=np.uint64)  # 16 spare bytes: update_into asks block size - 1 of room
    buf = memoryview(out.view(np.uint8))
    zeros = memoryview(_ZEROS)
    stream = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    total = 8 * n
    for start in range(0, total, _CHUNK):
        size = min(_CHUNK, total - start)
        stream.update_into(zeros[:size], buf[start : start + size + 15])
    stream.finalize()  # CTR has no tail
    return out[:n]


def uniform(n: int) -> np.ndarray:
    """`n` doubles uniform on (0, 1), 53 random bits each, from the OS CSPRNG (`random_words`).

    Word w gives ((w >> 11) + 0.5) / 2^53, computed in the words' own memory.
    """
    words = random_words(n)
    words >>= np.uint64(11)
    out = words.view(np.float64)
    np.add(words, 0.5, out=out, casting="unsafe")  # element by element: each word read before written
    out *= 2.0**-53
    return out


def gaussian(shape, std: float, dtype=np.float64) -> np.ndarray:
    """N(0, std^2) noise of `shape`, hardened as Opacus' secure mode: (n1 + n2 + n3 + n4) / 2.

    The four N(0, 1) draws of a value are both members of two Box-Muller pairs (the two members
    of a pair are independent N(0, 1)), each pair from two CSPRNG uniforms: per value,
    (r1 cos t1 + r1 sin t1 + r2 cos t2 + r2 sin t2) / 2 with r = sqrt(-2 ln u), t = 2 pi u'.
    The arithmetic runs in float64 in place on the uniforms, through torch's vectorised log,
    cos and sin.
    """
    shape = (int(shape),) if np.isscalar(shape) else tuple(shape)
    size = int(np.prod(shape, dtype=np.int64))
    if std == 0 or size == 0:
        return np.zeros(shape, dtype=dtype)
    u = torch.from_numpy(uniform(4 * size))
    radius, angle = u[: 2 * size], u[2 * size :]  # pair k: (radius[k], angle[k]), two pairs a value
    radius.log_().mul_(-2.0).sqrt_()
    angle.mul_(2.0 * math.pi)
    pair = torch.cos(angle)
    pair.add_(angle.sin_()).mul_(radius)  # r cos t + r sin t: the sum of a pair's two draws
    draws = pair[:size].add_(pair[size:]).mul_(float(std) / 2.0)
    return draws.numpy().reshape(shape).astype(dtype, copy=False)


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

