"""What one client does in one round, by `aggregate` mode (no Flower).

- encoder / all: train every parameter for `local_epochs` (what is then sent
  differs, see `model.parts`).
- fedrep: FedRep-style (Collins et al. 2021): first the personal parameters with
  the encoder frozen for `fedrep.head_epochs`, then the encoder with the personal
  parameters frozen for `local_epochs`.
- `init.freeze_encoder=true` (any mode): only the parameters outside the encoder train.
"""

from __future__ import annotations

from dataclasses import replace

from .config_types import RunConfig
from .model import personal_names, shared_names
from .train import TrainConfig, TrainResult, local_train


def client_round(model, data, tasks, weighting, tcfg: TrainConfig, cfg: RunConfig, seed: int) -> TrainResult:
    aggregate = cfg["aggregate"]
    shared = shared_names(model, aggregate)
    if cfg["init"]["freeze_encoder"]:  # a transferred encoder, kept as it came
        personal = [n for n in dict(model.named_parameters()) if not n.startswith("encoder.")]
        return local_train(model, data, tasks, weighting, tcfg, seed, shared=shared, trainable=personal)
    if aggregate != "fedrep":
        return local_train(model, data, tasks, weighting, tcfg, seed, shared=shared)
    head_epochs = int(cfg["fedrep"]["head_epochs"])
    local_train(model, data, tasks, weighting, replace(tcfg, epochs=head_epochs), seed,
                shared=shared, trainable=personal_names(model, aggregate))
    return local_train(model, data, tasks, weighting, tcfg, seed + 1, shared=shared, trainable=shared)
