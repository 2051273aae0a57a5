"""Smoke run of ``benchmarks.learned`` with the shipped policy (no timing asserted)."""
from __future__ import annotations

import json

import pytest

from test_benchmarks_smoke import HAVE_MPL, _run


@pytest.mark.skipif(not HAVE_MPL, reason="the training-curve plot needs matplotlib (pip install -e '.[bench]')")
def test_learned_smoke_with_history(tmp_path):
    history = {"corpus": ["g"], "elapsed": 12.0, "iterations": [
        {"iteration": i, "loss": 1.0, "policy_loss": 0.9, "value_loss": 0.1, "mean_ratio": 1.0 - 0.01 * i}
        for i in range(1, 13)]}
    (tmp_path / "history.json").write_text(json.dumps(history))
    _run("benchmarks.learned", "--smoke", "--out", str(tmp_path), "--history", str(tmp_path / "history.json"),
         tmp_path=tmp_path)
    assert (tmp_path / "training.png").stat().st_size > 0
    data = json.loads((tmp_path / "learned.json").read_text())
    assert data["training"]["iterations"] == 12


def test_learned_smoke(tmp_path):
    out = _run("benchmarks.learned", "--smoke", "--out", str(tmp_path), tmp_path=tmp_path)
    data = json.loads((tmp_path / "learned.json").read_text())
    (row,) = data["rows"]
    assert row["task"] == "g" and "| g |" in out
    best = min(row["fwd"], row["rev"], row["markowitz"])
    assert row["best_classical_order"] == best
    # MCTS keeps the greedy order among its candidates; classical search starts from the heuristics.
    assert 0 < row["mcts"] <= row["learned"]
    assert 0 < row["classical"] <= best
    # With the greedy order as one more start the search never ends above either.
    assert 0 < row["learned_search"] <= min(best, row["learned"])
    assert row["paper_ratio"] == pytest.approx(417 / 451)
