"""Which users each client holds: one user per client, or seeded groups."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def partition(users: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Assign `users` to `num_clients` clients of near-equal size.

    With as many clients as users each client holds exactly one user (client k
    holds the k-th user in id order); otherwise users are shuffled with `seed`
    and cut into contiguous groups.
    """
    users = np.sort(np.asarray(users))
    if not 1 <= num_clients <= len(users):
        raise ConfigError(f"num_clients={num_clients}: must be between 1 and the {len(users)} users of the data set")
    if num_clients == len(users):
        return [users[k:k + 1] for k in range(len(users))]
    perm = np.random.default_rng(seed).permutation(users)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]
