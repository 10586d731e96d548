"""SecAgg+'s secret randomness (secagg_workflow.py): masks keyed by the whole secret, not by Flower's
32-bit fold of it, and a neighbour ring drawn from the OS CSPRNG, not from `seed`."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from fedmtl.config import compose
from fedmtl.engine.inprocess import InProcessGrid
from fedmtl.federation.secagg_workflow import create_shares, mask_prg, private_key
from fedmtl.simulate import run

SHAPES = [(3, 4), (), (7,)]


def test_flowers_mask_has_only_32_bits_of_seed_and_ours_uses_the_whole_secret():
    a = bytes(range(32))
    b = bytes(x ^ 0xFF if i in (0, 4) else x for i, x in enumerate(a))  # same XOR fold, another secret
    flower_a, flower_b = pseudo_rand_gen(a, 2**32, SHAPES), pseudo_rand_gen(b, 2**32, SHAPES)
    assert all(np.array_equal(x, y) for x, y in zip(flower_a, flower_b))  # Flower: one mask for both
    ours_a, ours_b = mask_prg(a, 2**32, SHAPES), mask_prg(b, 2**32, SHAPES)
    assert not any(np.array_equal(x, y) for x, y in zip(ours_a, ours_b))
    assert all(np.array_equal(x, y) for x, y in zip(ours_a, mask_prg(a, 2**32, SHAPES)))  # masks cancel: same key, same mask
    assert [x.shape for x in ours_a] == SHAPES and all(x.dtype == np.int64 for x in ours_a)


def test_our_masks_are_uniform_over_the_modulus():
    values = mask_prg(b"k" * 32, 2**32, [(200_000,)])[0]
    assert values.min() >= 0 and values.max() < 2**32
    assert abs(values.mean() / 2**32 - 0.5) < 0.005
    counts = np.bincount((values >> 28).astype(int), minlength=16)  # top 4 bits: 16 equal bins
    assert counts.min() > 0.95 * len(values) / 16


def test_flowers_modulus_reads_the_same_keystream_as_any_smaller_power_of_two():
    full = mask_prg(b"s" * 32, 2**32, [(5000,)])[0]  # (2**32: the 4-byte values as they are)
    for bits in (8, 20, 31):
        assert np.array_equal(mask_prg(b"s" * 32, 2**bits, [(5000,)])[0], full & (2**bits - 1))


def test_masks_stay_in_any_range_and_cover_it_evenly():
    for num_range in (2**20, 3 * 2**20, 2**40):  # a small power of 2 (4-byte draws), and two 8-byte cases
        values = mask_prg(b"r" * 32, num_range, [(100_000,)])[0]
        assert values.min() >= 0 and values.max() < num_range
        counts = np.bincount((values * 8 // num_range).astype(int), minlength=8)
        assert counts.min() > 0.95 * len(values) / 8, num_range


def test_the_clients_secaggplus_mod_draws_its_masks_from_ours():
    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    assert mod.pseudo_rand_gen is mask_prg
    assert mod.create_shares is create_shares and mod.bytes_to_private_key is private_key


@pytest.mark.parametrize("array", [np.arange(12).reshape(3, 4), np.zeros(()), np.asfortranarray(np.ones((3, 5)) * 0.5),
                                   np.array([1.5], ">f8"), np.zeros((0, 3), np.int64)])
def test_the_servers_parse_of_a_masked_vector_is_np_load(array):
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes
    from flwr.server.workflow.secure_aggregation import secaggplus_workflow

    from fedmtl.federation.arrays import npy_array
    from fedmtl.federation.secagg_workflow import quorum_workflow

    data = ndarray_to_bytes(array)
    for _ in range(2):  # the second time from the parsed header
        got, want = npy_array(data), bytes_to_ndarray(data)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    if array.size:
        with pytest.raises(ValueError):
            npy_array(data[:-1])  # a truncated array is refused, as np.load refuses it
    quorum_workflow(2, num_shares=3, reconstruction_threshold=2)
    assert secaggplus_workflow.bytes_to_ndarray is npy_array


def test_our_quantisation_is_flowers_draw_for_draw():
    from flwr.common.secure_aggregation.quantization import quantize as flowers

    from fedmtl.federation.secagg_workflow import quantize

    rng = np.random.default_rng(1)
    arrays = [rng.normal(0, 3, 1000).astype(np.float32), rng.normal(0, 3, (50, 7)),
              np.array([0.0, 1e-10, -1e-10, 8.0, -8.0, 9.0, -100.0], np.float32),  # edges: tiny gaps, clipped values
              np.array([2.5e-8, 0.49999997, 1e-30]), np.zeros(0, np.float32), np.array(0.3), np.arange(-9, 9)]
    saved = np.random.get_state()  # (the global RNG is Flower's rounding source: left as found)
    try:
        for clipping_range, target_range in ((8.0, 2**22), (1.0, 2**16), (3.0, 1000)):
            for seed in range(3):
                np.random.seed(seed)
                want = flowers(arrays, clipping_range, target_range)
                np.random.seed(seed)
                got = quantize(arrays, clipping_range, target_range)
                assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, want))
    finally:
        np.random.set_state(saved)
    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    assert mod.quantize is quantize


def test_the_memoised_private_key_is_the_same_key():
    from cryptography.hazmat.primitives import serialization
    from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes

    sk, _ = generate_key_pairs()
    pem = private_key_to_bytes(sk)
    a, b = private_key(pem), private_key(bytes(pem))  # equal bytes, another object: one parse
    assert a is b
    raw = lambda k: k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,  # noqa: E731
                                    serialization.NoEncryption())
    assert raw(a) == raw(sk)


def neighbour_rings(monkeypatch, tmp_path, runs: int) -> list[dict]:
    """Each run's neighbour sets, as the share-keys stage sends them (one message per node,
    keyed by its neighbours' ids)."""
    original = InProcessGrid.send_and_receive
    rings: list[dict] = []

    def recording(self, messages, *, timeout=None):
        messages = list(messages)
        for m in messages:
            configs = m.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and configs.get(Key.STAGE) == Stage.SHARE_KEYS:
                rings[-1][m.metadata.dst_node_id] = frozenset(k for k in configs if k != Key.STAGE)
        return original(self, messages, timeout=timeout)

    monkeypatch.setattr(InProcessGrid, "send_and_receive", recording)
    cfg = ["backend=inprocess", "dataset.n_users=60", "dataset.n_items=40", "num_clients=10", "device=cpu", "num_rounds=1",
           "privacy=secagg", "privacy.num_shares=3", "privacy.reconstruction_threshold=2"]
    for i in range(runs):
        rings.append({})
        run(compose(cfg), tmp_path / str(i))
    return rings


def test_two_runs_with_the_same_seed_draw_different_neighbour_rings(monkeypatch, tmp_path):
    first, second = neighbour_rings(monkeypatch, tmp_path, 2)
    assert len(first) == len(second) == 10 and all(len(v) == 3 for v in first.values())
    assert first != second  # 9!/2 rings of 10 nodes: equal by chance once in 181440
