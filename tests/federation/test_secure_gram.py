"""click_mix under privacy=secagg: the item Gram is a SecAgg+ sum of the clients' parts, chunk
by chunk; it equals the sum of the parts in the clear exactly (small integers quantise
exactly), the blend ranks as in the clear, and each client keeps its own rows of B."""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl.config import compose
from fedmtl.errors import FedMTLError
from fedmtl.federation import secure_gram, server_app
from fedmtl.runfiles import read_jsonl
from fedmtl.simulate import run

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=10", "num_rounds=2", "device=cpu",
        "click_mix.weight=0.5", "click_mix.lam=5"]


@pytest.fixture
def grams(monkeypatch):
    seen = []
    real = server_app.ItemItem.__init__

    def spy(self, cfg, gram, node_items, whole_once=False, dp_release=None, window=None):
        seen.append(gram.copy())
        real(self, cfg, gram, node_items, whole_once, dp_release, window)

    monkeypatch.setattr(server_app.ItemItem, "__init__", spy)
    monkeypatch.setattr(secure_gram, "chunk_size", lambda cfg: 97)  # 820 values of the 40 x 40 triangle: 9 SecAgg+ rounds
    return seen


def test_the_secure_gram_is_the_clear_one_and_the_blend_ranks_the_same(tmp_path, grams, caplog):
    with caplog.at_level("INFO", logger="fedmtl"):
        secure = run(compose(TINY + ["privacy=secagg"]), tmp_path / "secagg")
    # one progress line per chunk (a SecAgg+ run each: minutes in all at a real federation's size)
    chunks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("secure item Gram: chunk")]
    assert [c.split()[4] for c in chunks] == [f"{k}/9" for k in range(1, 10)]
    assert all("block of 10 clients" in c for c in chunks) and "left" in chunks[0] and "left" not in chunks[-1]
    clear = run(compose(TINY), tmp_path / "clear")
    assert len(grams) == 2
    assert grams[0].max() > 1  # clients of 6 users: counts above 1 are summed exactly too
    np.testing.assert_array_equal(grams[0], grams[1])
    # the training updates go through SecAgg+'s stochastic rounding (NumPy's unseeded global RNG
    # in Flower's quantize): about 1e-5 on the model, so RMSE to 1e-4, while a ranking over 60
    # users may swap one pair in some runs (NDCG@10 moved by 0.0024 in about 1 run of 10)
    assert secure["metrics"]["rating.rmse"] == pytest.approx(clear["metrics"]["rating.rmse"], abs=1e-4)
    for k in ("click.hr@10", "click.ndcg@10"):
        assert secure["metrics"][k] == pytest.approx(clear["metrics"][k], abs=0.01)
    rows = read_jsonl(tmp_path / "secagg" / "metrics.jsonl")
    # B goes whole to each client once (round 1's evaluation); later evaluations use the rows it kept
    assert rows[0]["bytes_down"] > rows[1]["bytes_down"] + 10 * 40 * 40 * 4 * 0.9
    assert secure["item_gram_bytes_up"] > 0


def test_a_client_that_does_not_send_its_part_stops_the_secure_gram_with_one_line(tmp_path, grams):
    with pytest.raises(FedMTLError, match="secure item Gram: chunk 1 of 9 not aggregated") as e:
        run(compose(TINY + ["privacy=secagg", "client_floor.gram=false"]), tmp_path)
    assert "refused" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("mode", ["central_dp", "local_dp"])  # client_clip_dp, secagg_dp: test_dp_gram.py
def test_click_mix_stays_refused_where_the_parts_would_go_in_the_clear(mode):
    with pytest.raises(FedMTLError, match=f"privacy={mode}"):
        compose(TINY + [f"privacy={mode}"])


@pytest.mark.parametrize("scaled", [False, True])
def test_a_chunk_is_read_from_the_part_as_from_the_whole_matrix(scaled):
    """chunk_values: every chunk of the upper triangle equals the chunk of the whole n x n float32
    matrix that holds the part (the way it was built before), bit for bit, for counts and for a
    clipped (scaled, non-integer) part."""
    rng = np.random.default_rng(5)
    n = 53
    items = np.sort(rng.choice(n, 17, replace=False))
    part = rng.integers(0, 9, (17, 17)).astype(np.float64)
    part = part + part.T
    if scaled:
        part = part * 0.123456789
    full = np.zeros((n, n), np.float32)
    full[np.ix_(items, items)] = part
    r_all, c_all = np.triu_indices(n)
    for lo in range(0, len(r_all), 400):
        r, c = r_all[lo:lo + 400], c_all[lo:lo + 400]
        got = secure_gram.chunk_values(n, items, part, r, c)
        want = full[r, c].astype(np.float64)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.count_nonzero(secure_gram.chunk_values(n, items, part, r_all, c_all)) > 0


def test_the_chunk_follows_the_servers_memory_budget():
    """click_mix.secure_gram_mb: every client's masked chunk held at once, 8 bytes a value; the
    default makes 5 SecAgg+ runs of MovieLens-100k's triangle at 943 clients; a bad value is one
    line at start-up."""
    from fedmtl.errors import ConfigError

    size = secure_gram.chunk_size(compose(["num_clients=8", "click_mix.secure_gram_mb=1"]))
    assert size == 2**20 // 64
    default = secure_gram.chunk_size(compose(["num_clients=943"]))
    assert default == 2048 * 2**20 // (8 * 943) and secure_gram.gram_chunks(1682, 1, default) == 5
    assert secure_gram.gram_chunks(1682, 1, default // 2) == 10
    with pytest.raises(ConfigError, match="click_mix.secure_gram_mb"):
        compose(["click_mix.secure_gram_mb=0"])
