"""Smoke run of ``benchmarks.learned`` with the shipped policy (no timing asserted)."""
from __future__ import annotations

import json

import pytest

from test_benchmarks_smoke import HAVE_MPL, _run


@pytest.mark.skipif(not HAVE_MPL, reason="the training-curve plot needs matplotlib (pip install -e '.[bench]')")
def test_learned_smoke_with_history(tmp_path):
    history = {"corpus": ["g"], "elapsed": 12.0, "iterations": [
        {"iteration": i, "loss": 1.0, "policy_loss": 0.9, "value_loss": 0.1, "mean_ratio": 1.0 - 0.01 * i,
         **({"selection_score": {5: 0.9, 10: 0.8, 12: 0.85}[i]} if i in (5, 10, 12) else {})}
        for i in range(1, 13)]}
    (tmp_path / "history.json").write_text(json.dumps(history))
    _run("benchmarks.learned", "--smoke", "--out", str(tmp_path), "--history", str(tmp_path / "history.json"),
         tmp_path=tmp_path)
    assert (tmp_path / "training.png").stat().st_size > 0
    data = json.loads((tmp_path / "learned.json").read_text())
    assert data["training"]["iterations"] == 12
    assert data["training"]["selected_iteration"] == 10 and data["training"]["evaluations"] == 3
    assert "is iteration 10's, the best of 3 evaluations" in (tmp_path / "learned.md").read_text()


def test_learned_smoke(tmp_path):
    out = _run("benchmarks.learned", "--smoke", "--random-seeds", "2000", "2010", "--out", str(tmp_path),
               tmp_path=tmp_path)
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
    # --smoke keeps one unseen random function, seed 2000 (a scalar one).
    (rnd,) = data["random_rows"]
    assert rnd["seed"] == 2000 and "## Unseen random functions (seeds 2000-2000, 1 s each)" in out
    assert 0 < rnd["classical"] <= rnd["best_classical_order"]
    assert 0 < rnd["learned_search"] <= min(rnd["best_classical_order"], rnd["learned"])
    assert 0 < rnd["mcts"] <= rnd["learned"]
    assert rnd["learned_search_vs_classical"] == pytest.approx(rnd["learned_search"] / rnd["classical"])
