"""Flower's SecAgg+ protocol as fedmtl runs it, for both sides: the masks (`mask_prg`,
installed into the clients' secaggplus_mod when this module is imported), the check and
dequantisation of the unmasked sum (`check_release`, `dequantise`) and the server's
workflow (`quorum_workflow`). The round that drives it: secagg_round.py.

What fedmtl changes in Flower's SecAgg+ (`quorum_workflow`, `legacy.LegacyFitMod`, `mask_prg`,
and the client's `secagg_guard.SecAggGuard`): the unmasked sum is checked before release
(every coordinate of a sum of m honest quantised vectors lies in [0, m * Q]; outside it
the round is refused and nothing is released), dequantised out of place (Flower's
in-place arithmetic skipped 0-d arrays: aggregate=all's head offsets came back as
sum + (m - 1) * clipping_range, issue 24 item 8), its saturation reported
(`secagg.saturated` in metrics.jsonl; above MAX_SATURATION the run stops and names
privacy.clipping_range); masks come from the whole 32-byte secret (Flower: a 32-bit
seed), the neighbour ring from the OS CSPRNG (Flower: the seeded global `random`).
For speed, the same results: Shamir shares made and combined by shamir.py (no thread pool per
secret; Lagrange weights once per set of share indices), a client's private key parsed once
(`private_key`), the server's masked vectors parsed by arrays.npy_array.
"""

from __future__ import annotations

import functools

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key as SAKey, Stage
from flwr.compat.common import recorddict_compat as compat

from .shamir import combine_shares, create_shares


def mask_prg(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[np.ndarray]:
    """SecAgg+'s mask generator, keyed by the whole secret: a ChaCha20 keystream under
    SHA-256(secret), 4 bytes per value for a power-of-2 range up to 2**32 (Flower's), else 8,
    reduced mod num_range.

    Flower 1.41's `pseudo_rand_gen` XOR-folds the 32-byte secret to a 32-bit seed of NumPy's
    MT19937, so every mask has one of 2**32 seeds. A server that lists a client as dropped
    (or whose masked vector came after the timeout) legitimately rebuilds that client's
    pairwise masks; what is left on its vector is the self mask, and 2**32 seeds, each
    checked on four values against the quantised window [0, Q], recover the client's update
    (163 core-hours in a plain Python loop, far less in C). Same signature, same shapes;
    installed for both sides by `_install_mask_prg`."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    sizes = [int(np.prod(d)) if len(d) else 1 for d in dimensions_list]
    key = hashlib.sha256(b"fedmtl secagg mask\0" + bytes(seed)).digest()
    # a power-of-2 range up to 2**32 (Flower's modulus is 2**32) takes the low bits of 4 keystream
    # bytes a value: uniform, and half the keystream of 8; any other range reduces 8 bytes mod it
    small = num_range & (num_range - 1) == 0 and num_range <= 2**32
    width = 4 if small else 8
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(width * sum(sizes)))
    if num_range == 2**32:  # (Flower's modulus: every 4-byte value is in range; no mask pass)
        values = np.frombuffer(stream, dtype="<u4").astype(np.int64)
    elif small:
        values = (np.frombuffer(stream, dtype="<u4") & np.uint32(num_range - 1)).astype(np.int64)
    else:
        values = (np.frombuffer(stream, dtype="<u8") % np.uint64(num_range)).astype(np.int64)
    out, at = [], 0
    for d, size in zip(dimensions_list, sizes):
        out.append(values[at:at + size].reshape(d))  # views of one fresh array
        at += size
    return out


@functools.lru_cache(maxsize=64)
def private_key(pem: bytes):
    """secaggplus_mod's `bytes_to_private_key`, memoised: a client derives one shared key per
    neighbour from the same private key in each of two stages, and Flower parses the PEM
    again (with its curve-point check) for each one. At 943 clients of 5 neighbours that parsing
    was 12-14% of SecAgg+'s client-side stages (py-spy). The keys kept are the same objects those
    clients' own Contexts hold as PEM bytes in this process."""
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key

    return bytes_to_private_key(pem)


def quantize(parameters: list[np.ndarray], clipping_range: float, target_range: int) -> list[np.ndarray]:
    """Flower's `quantize` (secaggplus_mod's stochastic rounding of each clipped value to
    `target_range` levels), the same integers from the same draws of NumPy's global RNG, in
    fewer passes: Flower's makes eight temporaries per array and lowers the rounded-up values
    through a boolean index. The shifted values keep the array's own dtype, as Flower's do."""
    quantizer = target_range / (2 * clipping_range)
    out = []
    for arr in parameters:
        pre = np.clip(arr, -clipping_range, clipping_range)
        if pre.dtype.kind != "f":  # (whole numbers: Flower's first sum makes them float64)
            pre = pre.astype(np.float64)
        pre += clipping_range
        pre *= quantizer
        out.append(stochastic_round(pre))
    return out


def stochastic_round(pre: np.ndarray) -> np.ndarray:
    """Flower's `_stochastic_round`: ceil(pre) as int32, lowered by one where a uniform draw of
    NumPy's global RNG falls below the gap ceil - pre (taken in float64, as Flower's int32 minus
    float gives it). (A test makes it deterministic by replacing this function.)"""
    up = np.ceil(pre)
    draws = np.random.rand(*up.shape)  # noqa: NPY002 (Flower's own source of rounding draws)
    ret = up.astype(np.int32)
    ret -= np.less(draws, np.subtract(ret, pre, dtype=np.float64))
    return ret


def _install_mask_prg() -> None:
    """The clients' secaggplus_mod draws its masks from `mask_prg` (its module's
    `pseudo_rand_gen`); the server's unmask stage (quorum_workflow) calls mask_prg itself.
    Both sides of a fedmtl run import this module before SecAgg+ runs (the client's
    client_privacy._chain through legacy.py, the server's SecAggRound through secagg_round.py).
    A peer with Flower's own generator cannot unmask with ours: its round is refused by
    check_release, never silently wrong."""
    import importlib

    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    mod.pseudo_rand_gen = mask_prg
    mod.bytes_to_private_key = private_key
    mod.create_shares = create_shares
    mod.quantize = quantize


_install_mask_prg()


def check_release(recon: list, m: int, q: int) -> str | None:
    """Why the unmasked modular sum `recon` ([weight factor, arrays...]) cannot be a sum of
    `m` clients' quantised vectors, or None. Each client sends integers in [0, q] (its
    clipped value and its weight factor round(w / max_weight * q)), so every coordinate of
    an honest sum lies in [0, m * q] and the weight factor is above 0; anything else is a
    tampered masked vector or an m * q that overflowed the modulus."""
    factor = int(np.asarray(recon[0]).ravel()[0])
    outside = sum(int(((a < 0) | (a > m * q)).sum()) for a in (np.asarray(x) for x in recon[1:]))
    total = sum(int(np.asarray(x).size) for x in recon[1:])
    if not 0 < factor <= m * q or outside:
        return (f"SecAgg+ round refused: after unmasking, {outside} of {total} coordinates (weight factor {factor}) "
                f"lie outside [0, {m} * quantization_range]: a client tampered with its masked vector, or the "
                "modular sum overflowed")
    return None


def dequantise(recon: list, m: int, clip: float, q: int) -> list[np.ndarray]:
    """The weighted mean from the unmasked sum: SecAggPlusWorkflow.unmask_stage's arithmetic,
    done out of place. Flower's in-place `vec += offset; vec *= 1/total_weight` is a no-op
    for a 0-d array (its dequantize turns one into a NumPy scalar): the heads' 0-d offsets
    came back as sum(w_i x_i) + (m - 1) * clipping_range (7536 at 943 clients, issue 24 item 8)."""
    factor = int(np.asarray(recon[0]).ravel()[0])
    step = 2 * clip / q
    return [(np.asarray(a, dtype=np.float64) * step - m * clip) * (q / factor) for a in recon[1:]]


def quorum_workflow(quorum: int, **kwargs):
    """Flower's SecAggPlusWorkflow, with these changes (and its masks from mask_prg):

    - it stops before unmasking when fewer than `quorum` masked vectors arrived
      (min_train_clients, as a plain round's rule): the server then never learns that
      round's sum; it keeps the round's protocol state (threshold, shares) to say why;
    - the neighbour ring is shuffled with the OS CSPRNG (Flower shuffles with the global
      `random`, which fedmtl seeds from `seed`);
    - unmasking checks the sum before releasing it (check_release: a tampered vector or an
      overflow refuses the round: nothing is released) and dequantises out of place (0-d arrays);
    - the released arrays and the unmasked integer sum stay on `last_release` for the checks
      that follow (saturation)."""
    import secrets

    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (get_parameters_shape, parameters_addition,
                                                                     parameters_mod, parameters_subtraction)
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.secure_aggregation import secaggplus_workflow

    from .arrays import npy_array

    secaggplus_workflow.bytes_to_ndarray = npy_array  # its collect stage's parsing of every masked vector
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key as WKey
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    class QuorumSecAggPlusWorkflow(SecAggPlusWorkflow):
        def setup_stage(self, grid, context, state) -> bool:
            self.last_state, self.last_release, self.refused = state, None, None
            ok = super().setup_stage(grid, context, state)
            if state.nid_to_neighbours:  # the ring again, from the OS CSPRNG (Flower's ring rule)
                ring = sorted(state.sampled_node_ids)
                secrets.SystemRandom().shuffle(ring)
                half, n = state.num_shares >> 1, len(ring)
                state.nid_to_neighbours = {nid: {ring[(i + o) % n] for o in range(-half, half + 1)}
                                           for i, nid in enumerate(ring)}
                ok = ok and self._check_threshold(state)
            return ok

        def collect_masked_vectors_stage(self, grid, context, state) -> bool:
            ok = super().collect_masked_vectors_stage(grid, context, state)
            return ok and len(state.active_node_ids) >= quorum

        def unmask_stage(self, grid, context, state) -> bool:
            """Flower 1.41's unmask_stage (Apache-2.0), with check_release before anything is
            released and dequantise out of place."""
            current_round = context.state.config_records[MAIN_CONFIGS_RECORD][WKey.CURRENT_ROUND]
            active, dead = state.active_node_ids, state.sampled_node_ids - state.active_node_ids

            def make(nid: int) -> Message:
                nb = state.nid_to_neighbours[nid]
                record = ConfigRecord({SAKey.STAGE: Stage.UNMASK, SAKey.ACTIVE_NODE_ID_LIST: list(nb & active),
                                       SAKey.DEAD_NODE_ID_LIST: list(nb & dead)})
                return Message(RecordDict({RECORD_KEY_CONFIGS: record}), dst_node_id=nid,
                               message_type=MessageType.TRAIN, group_id=str(current_round))

            msgs = grid.send_and_receive([make(nid) for nid in active], timeout=self.timeout)
            state.active_node_ids = {m.metadata.src_node_id for m in msgs if not m.has_error()}
            shares: dict[int, list[bytes]] = {nid: [] for nid in state.sampled_node_ids}
            for msg in msgs:
                if msg.has_error():
                    state.failures.append(Exception(msg.error))
                    continue
                res = msg.content.config_records[RECORD_KEY_CONFIGS]
                for owner, share in zip(res[SAKey.NODE_ID_LIST], res[SAKey.SHARE_LIST], strict=True):
                    if owner in shares:  # a reply naming a node outside the round is ignored
                        shares[owner].append(share)
            masked = state.aggregate_ndarrays
            del state.aggregate_ndarrays
            shapes = get_parameters_shape(masked)
            for nid, share_list in shares.items():
                if len(share_list) < state.threshold:
                    return False  # SecAggRound says why (too few shares)
                secret = combine_shares(share_list)
                if nid in active:  # the self mask of a client whose vector is in the sum
                    masked = parameters_subtraction(masked, mask_prg(secret, state.mod_range, shapes))
                    continue
                for other in state.nid_to_neighbours[nid] - {nid}:  # a dropped client's pairwise masks
                    key = generate_shared_key(bytes_to_private_key(secret),
                                              bytes_to_public_key(state.nid_to_publickeys[other][0]))
                    mask = mask_prg(key, state.mod_range, shapes)
                    masked = (parameters_addition if nid > other else parameters_subtraction)(masked, mask)
            recon = parameters_mod(masked, state.mod_range)
            m, q = len(active), state.quantization_range
            self.refused = check_release(recon, m, q)
            if self.refused:
                return False
            arrays = [np.asarray(a) for a in dequantise(recon, m, state.clipping_range, q)]
            self.last_release = {"sum": recon[1:], "active": m}
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                ndarrays_to_parameters(arrays), True)
            return True

    wf = QuorumSecAggPlusWorkflow(**kwargs)
    wf.last_state = wf.last_release = wf.refused = None
    return wf
