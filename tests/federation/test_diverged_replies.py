"""A run whose clients all diverge stops with one line, and a round's invalid replies are
named one line each only up to screening.LISTED: the rest are counted by kind in one line
(a diverged server model made every one of 943 clients' replies invalid: 943 lines a round,
43,448 in a run that went on for 40 rounds without a valid reply)."""

from __future__ import annotations

import json
import logging

import pytest

from fedmtl.config import compose
from fedmtl.errors import DivergedError
from fedmtl.federation import screening
from fedmtl.simulate import run

TINY = ["backend=inprocess", "dataset.n_users=60", "dataset.n_items=30", "num_clients=12", "num_rounds=3",
        "local_epochs=1", "device=cpu", "model.dim=8", "checkpoint_every=1"]


class NanLosses:
    """The ClientApp, whose training replies from round `start` on report NaN losses: what a
    client training on a diverged model sends (its arrays stay finite)."""

    def __init__(self, app, start: int):
        self.app, self.start = app, start

    def __call__(self, msg, ctx):
        reply = self.app(msg, ctx)
        if msg.metadata.message_type == "train" and not reply.has_error() \
                and int(msg.content["config"]["server-round"]) >= self.start:
            metrics = reply.content["metrics"]
            for k in list(metrics.keys()):
                if k.startswith("loss."):
                    metrics[k] = float("nan")
        return reply


def test_a_round_in_which_every_client_reports_nan_losses_stops_the_run(tmp_path, monkeypatch, caplog):
    import fedmtl.federation.client_app as ca

    real = ca.make_client_app
    monkeypatch.setattr(ca, "make_client_app", lambda cfg=None: NanLosses(real(cfg), start=2))
    with caplog.at_level(logging.WARNING, logger="fedmtl"), pytest.raises(DivergedError) as e:
        run(compose(TINY), tmp_path)
    said = str(e.value)
    assert "\n" not in said and said.startswith("round 2: every client's reply holds NaN/inf")
    assert "loss." in said and "is not a finite number" in said and "diverged" in said
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1]  # the finished round stays; nothing of the diverged one
    named = [r.getMessage() for r in caplog.records if "sent an invalid reply" in r.getMessage()]
    counted = [r.getMessage() for r in caplog.records if "more invalid replies left out" in r.getMessage()]
    assert len(named) == screening.LISTED and all(m.startswith("round 2: node ") for m in named)
    assert counted == ["round 2: 2 more invalid replies left out, not named "
                       "(2 x metric loss.rating=... is not a finite number)"]


def test_the_listing_names_the_first_replies_and_counts_the_rest_by_kind(caplog):
    listing = screening.Listing("round 7")
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        for node in range(25):
            problem = ("encoder.w holds 3 NaN/inf values" if node % 5 == 0
                       else f"metric loss.rating={node * 0.5} is not a finite number")
            listing.warn(problem, "round 7: node %d sent an invalid reply (%s)", node, problem)
        listing.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:10] == [f"round 7: node {n} sent an invalid reply (" + (
        "encoder.w holds 3 NaN/inf values" if n % 5 == 0 else f"metric loss.rating={n * 0.5} is not a finite number")
        + ")" for n in range(10)]
    assert lines[10:] == ["round 7: 15 more invalid replies left out, not named (12 x metric loss.rating=... is not "
                          "a finite number; 3 x encoder.w holds N NaN/inf values)"]


def test_a_listing_with_few_replies_names_each_and_adds_no_line(caplog):
    listing = screening.Listing("round 1")
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        for node in range(3):
            listing.warn("x", "node %d", node)
        listing.close()
    assert [r.getMessage() for r in caplog.records] == ["node 0", "node 1", "node 2"]
