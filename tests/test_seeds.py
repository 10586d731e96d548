"""fedmtl.seeds: every derived seed comes from one function per purpose, and the integers
are the ones the published figures were made with (a changed formula would change them)."""

from __future__ import annotations

import re
from pathlib import Path

from fedmtl.seeds import client_round_seed, cold_start_seed, local_client_seed, pooled_epoch_seed, user_init_seed

ROOT = Path(__file__).resolve().parents[1]


def test_the_seeds_are_the_integers_the_runs_were_made_with():
    assert client_round_seed(0, 1, 2) == 100_005
    assert client_round_seed(3, 7, 11) == 23_757 + 700_021 + 11
    assert user_init_seed(0, 5) == 5 and user_init_seed(2, 9) == 2_000_015
    assert local_client_seed(4, 3) == 31_679 and pooled_epoch_seed(4, 3) == 31_679
    assert cold_start_seed(1, 10, 5) == 7_919 + 310 + 5
    # different purposes of the same run draw from different seeds
    assert len({client_round_seed(1, 1, 0), user_init_seed(1, 0), cold_start_seed(1, 0, 1)}) == 3


def test_no_module_restates_a_seed_formula():
    strides = re.compile(r"\b(7_?919|100_?003|1_?000_?003)\b")
    found = [f"{p.relative_to(ROOT)}:{n}" for folder in ("fedmtl", "benchmarks") for p in (ROOT / folder).rglob("*.py")
             if p.name != "seeds.py" for n, line in enumerate(p.read_text().splitlines(), 1) if strides.search(line)]
    assert not found, f"seed formulas outside fedmtl/seeds.py: {found}"
