"""Many clients' rounds as one batched computation (no Flower): backend=cohort's arithmetic.

`train_cohort(setup, shared, jobs)` gives, for every job, what `client_step.train_client`
gives for it alone (upload, metrics, new state), to float tolerance: the same seeds, the
same permutations and mini-batches, the same row sets, the same optimiser steps, the same
upload encoding. Instead of one model per client it holds every client's parameters stacked
along a leading client axis:

- row tables (item embeddings, item biases): only the rows a client can touch this round
  (its row set: exchange=sparse's rows, the click loss's candidates, else its own items),
  gathered to [C, R, ...] and padded to the longest; a padded row is never a target and its
  click logit is -inf;
- every other parameter (towers, field tables, heads, user embeddings and biases): [C, ...];
- each step's mini-batch: [C, B] pairs, padded to the longest and masked, the losses means
  over each client's own pairs. A client whose epoch has fewer batches is inactive in the
  steps beyond them (its parameters and Adam moments are left as they are).

The clients are independent, so one backward pass of the sum of their losses gives each
its own gradients. SGD and Adam steps are written out as torch's (foreach) optimisers take
them, with each client's own Adam step count. Clients are sorted by size and split in
chunks that fit `budget_mb`, each chunk padded to its own longest.

What it does not batch (`unbatched`: the knobs that need per-client randomness, gradient
surgery or modules written out here only for shared_bottom) goes through the per-client path.

Its modules: clients.py (each job's row set, permutations and pairs; the chunks), chunk.py
(a chunk's stacked tensors and batched forward pass), optim.py (the per-client SGD / Adam
steps), training.py (the training round, `unbatched`, `round_flops`), evaluation.py.
"""

from .clients import CHUNK_MB, Job, prepare_ahead, prepared_for
from .evaluation import EvalJob, evaluate_cohort
from .training import round_flops, train_cohort, unbatched

__all__ = ["CHUNK_MB", "EvalJob", "Job", "evaluate_cohort", "prepare_ahead", "prepared_for", "round_flops",
           "train_cohort", "unbatched"]
