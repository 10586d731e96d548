"""Where DP noise costs the DP recipe: a client_clip_dp run whose server adds its noise to
some of the released arrays only (a diagnostic: such a run has no privacy guarantee).

    python benchmarks/dp_noise_parts.py rows|dense OVERRIDES...
    python benchmarks/dp_noise_parts.py rows experiment=ml100k_dp dataset.path=DIR/ml-100k split.validation=true

`rows`: the noise on the row tables (item embeddings and biases) and the row counts only;
`dense`: on every other shared array (towers, field tables, heads) and the row counts only.
The noise has the std the run's privacy.* gives (z C / m on the mean); everything else is
`python -m fedmtl.simulate OVERRIDES...` (docs/privacy.md, "The DP recipe", uses it).
"""

from __future__ import annotations

import runpy
import sys

import numpy as np


def noise_on_part(which: str):
    """SecureNoise._add_noise_to_aggregated_arrays with its noise on `which` part only."""
    from flwr.app import Array, ArrayRecord
    from flwr.supercore.differential_privacy import compute_stdv

    from fedmtl import secure_random
    from fedmtl.sparse_codec import ROW_COUNT, ROW_TABLES

    def add(self, aggregated: ArrayRecord) -> ArrayRecord:
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)  # the averaged
        out = {}
        for key, arr in aggregated.items():
            v = arr.numpy().copy()
            if key == ROW_COUNT or (key in ROW_TABLES) == (which == "rows"):
                v += secure_random.gaussian(v.shape, std, v.dtype)
            out[key] = Array(np.asarray(v))
        return ArrayRecord(out)

    return add


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("rows", "dense"):
        sys.exit("usage: python benchmarks/dp_noise_parts.py rows|dense OVERRIDES...")
    import fedmtl.federation.privacy as privacy

    privacy.SecureNoise._add_noise_to_aggregated_arrays = noise_on_part(sys.argv[1])
    sys.argv = ["fedmtl.simulate", *sys.argv[2:]]
    runpy.run_module("fedmtl.simulate", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
