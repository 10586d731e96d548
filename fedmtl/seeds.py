"""The seeds derived from a run's `seed`: one function per purpose, so that each formula
lives in one place. Flower-free and torch-free: plain integer arithmetic.

Every figure the project has published was made with these exact integers; changing
a formula changes the runs it seeds (a different permutation, row set, rounding or
initial user embeddings), so a new purpose gets a new function, not an edit.

    client_round_seed   a federated client's round (permutations, row set, rounding)
    user_init_seed      a federated client's initial user embeddings; the local-only
                        baseline's global torch seed, per client
    local_client_seed   the local-only baseline's one training run per client
    pooled_epoch_seed   the centralised (pooled) baseline's epoch
    cold_start_seed     transfer's fine-tuning of one held-out user on k of their ratings
"""

from __future__ import annotations

_RUN = 7_919  # the run seed's stride in the training seeds
_ROUND = 100_003  # a round's stride in client_round_seed
_USER_INIT = 1_000_003  # the run seed's stride in user_init_seed
_COLD_USER = 31  # a held-out user's stride in cold_start_seed


def client_round_seed(seed: int, server_round: int, pid: int) -> int:
    """The seed of client `pid`'s training in round `server_round` of a run seeded `seed`."""
    return seed * _RUN + server_round * _ROUND + pid


def user_init_seed(seed: int, pid: int) -> int:
    """The seed of client `pid`'s initial user embeddings (its first round)."""
    return seed * _USER_INIT + pid


def local_client_seed(seed: int, pid: int) -> int:
    """The seed of client `pid`'s training in the local-only baseline (one run per client)."""
    return seed * _RUN + pid


def pooled_epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` of the centralised (pooled) baseline."""
    return seed * _RUN + epoch


def cold_start_seed(seed: int, user: int, k: int) -> int:
    """The seed of fine-tuning held-out user `user` on `k` of their ratings (transfer)."""
    return seed * _RUN + user * _COLD_USER + k
