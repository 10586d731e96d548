"""SecAgg+'s Shamir shares (fedmtl/federation/shamir.py): the shares Flower's would make and
the secrets Flower's combine gives back, from pycryptodome's field, without Flower's thread
pools and with the Lagrange weights computed once per set of share indices."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import _Element
from flwr.common.secure_aggregation.crypto.shamir import combine_shares as flower_combine
from flwr.common.secure_aggregation.crypto.shamir import create_shares as flower_create

from fedmtl.federation import shamir


def test_the_field_product_is_pycryptodomes():
    rng = random.Random(0)
    values = [0, 1, 2, 3, 2**127, 2**128 - 1] + [rng.getrandbits(128) for _ in range(300)]
    for a in values[:40]:
        table = [shamir._clmul_small(a, t) for t in range(16)]
        for b in values:
            assert shamir._times(table, b) == int(_Element(a) * _Element(b))


@pytest.mark.parametrize("size", [1, 16, 32, 33, 241])  # a mask seed (32 bytes), a PEM key (about 240)
@pytest.mark.parametrize("threshold,num", [(3, 5), (2, 3), (4, 7)])
def test_shares_made_by_either_side_combine_on_either_side(size, threshold, num):
    rng = random.Random(size * 100 + num)
    secret = os.urandom(size)
    ours, flowers = shamir.create_shares(secret, threshold, num), flower_create(secret, threshold, num)
    assert [(len(a), a[:4]) for a in ours] == [(len(b), b[:4]) for b in flowers]  # same layout and indices
    assert ours != shamir.create_shares(secret, threshold, num)  # fresh random coefficients each time
    for shares in (ours, flowers):
        for _ in range(4):
            picked = rng.sample(shares, rng.randint(threshold, num))
            assert shamir.combine_shares(picked) == flower_combine(picked) == secret


def test_too_few_or_garbled_shares_fail_as_flowers_do():
    secret = os.urandom(241)
    shares = shamir.create_shares(secret, 3, 5)
    rng = np.random.default_rng(0)
    garbage = [bytes(s[:4]) + bytes(rng.integers(0, 256, len(s) - 4, dtype=np.uint8)) for s in shares[:3]]
    for picked in ([shares[0], shares[3]], garbage):  # below the threshold; right indices, wrong values
        outcomes = []
        for combine in (shamir.combine_shares, flower_combine):
            try:
                outcomes.append(combine(picked))
            except ValueError as e:
                outcomes.append(str(e))
        assert outcomes[0] == outcomes[1] and outcomes[0] != secret
    with pytest.raises(ValueError, match="Duplicate share"):
        shamir.combine_shares([shares[0], shares[1], shares[1]])
    for short in (shares[2][:-1], shares[2][:-16]):  # a share cut short (a hostile neighbour's)
        with pytest.raises(ValueError, match="Failed to combine shares"):
            shamir.combine_shares([shares[0], shares[1], short])
