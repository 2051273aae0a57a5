"""Smoke runs of the benchmarks: they finish and write well-formed output.

No assertion here depends on how fast anything is; timings are only checked
to be present.  The runs use fresh interpreters (float32, as documented).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAVE_ASDEX = importlib.util.find_spec("asdex") is not None
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def _run(module: str, *args: str, tmp_path: Path) -> str:
    env = dict(os.environ, CCJAX_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_mults_smoke(tmp_path):
    out = _run("benchmarks.mults", "--smoke", "--out", str(tmp_path), tmp_path=tmp_path)
    data = json.loads((tmp_path / "mults.json").read_text())
    md = (tmp_path / "mults.md").read_text()
    assert "| task |" in md and "| task |" in out
    rows = {r["task"]: r for r in data["rows"]}
    assert len(rows) == 2
    for name, r in rows.items():
        for key in ("fwd", "rev", "markowitz", "auto", "best_known"):
            assert isinstance(r[key], int) and r[key] > 0, (name, key, r[key])
        assert r["best_known"] <= min(r["fwd"], r["rev"], r["markowitz"])
        assert r["auto"] <= min(r["fwd"], r["rev"], r["markowitz"])
        assert set(r["paper"]) == {"fwd", "rev", "markowitz", "alphagrad"}
        assert name in md


def test_runtime_smoke(tmp_path):
    _run("benchmarks.runtime", "--smoke", "--out", str(tmp_path), tmp_path=tmp_path)
    if str(ROOT) not in sys.path:  # plain `pytest` does not put the repository root on the path
        sys.path.insert(0, str(ROOT))
    from benchmarks.runtime import ALL_METHODS, ASDEX, COMPACT, SCATTER

    backend = "cpu"
    data = json.loads((tmp_path / f"runtime_{backend}.json").read_text())
    md = (tmp_path / f"runtime_{backend}.md").read_text()
    assert data["meta"]["settings"] == ["none", "4"]
    assert len(data["results"]) == 2
    for task, per in data["results"].items():
        assert set(per) == {"none", "4"}
        for setting, res in per.items():
            expected = set(ALL_METHODS) - ({SCATTER, COMPACT} if setting == "none" else set())
            assert set(res) == expected, (task, setting, sorted(res))
            for method, rec in res.items():
                if method == ASDEX and not HAVE_ASDEX:
                    assert rec["status"] == "skipped"
                    continue
                assert rec["status"] == "ok", (task, setting, method, rec)
                for key in ("median_s", "q1_s", "q3_s", "iqr_s", "n", "trace_s", "compile_s", "first_call_s"):
                    assert key in rec, (task, setting, method, key)
                assert rec["median_s"] > 0 and rec["n"] >= 1
                if method != "f (primal)":
                    assert "max_abs_diff" in rec, (task, setting, method)
        assert task in md
    s = data["summary"]
    assert s["batch"] == 4 and len(s["rows"]) == 2
    assert all(r["speedup"] is not None for r in s["rows"])
    assert "Summary at B = 4" in md
    if HAVE_MPL:
        assert (tmp_path / f"runtime_{backend}.png").stat().st_size > 0


def test_sparse_smoke(tmp_path):
    out = _run("benchmarks.sparse", "--smoke", "--out", str(tmp_path), tmp_path=tmp_path)
    data = json.loads((tmp_path / "sparse_cpu.json").read_text())
    md = (tmp_path / "sparse_cpu.md").read_text()
    assert data["meta"]["batches"] == [4] and len(data["results"]) == 2
    methods = {"ccjax auto (sparse)", "asdex (bcoo)"} if HAVE_ASDEX else {"ccjax auto (sparse)"}
    for task, per in data["results"].items():
        res = per["4"]
        assert set(res) == methods, (task, sorted(res))
        for method, rec in res.items():
            assert rec["status"] == "ok", (task, method, rec)
            for key in ("median_s", "min_s", "n", "compile_s", "first_call_s", "nse"):
                assert key in rec, (task, method, key)
            assert rec["median_s"] > 0 and rec["nse"] > 0
        assert task in md
    assert "## B = 4" in md and "B = 4" in out


def test_breakdown_smoke(tmp_path):
    _run("benchmarks.breakdown", "--smoke", "--tasks", "HumanHeartDipole", "--quiet", "--out", str(tmp_path),
         tmp_path=tmp_path)
    data = json.loads((tmp_path / "breakdown_cpu.json").read_text())
    res = data["results"]["HumanHeartDipole"]["4"]
    for name in ("ccjax auto", "elimination", "writing", "zeros"):
        assert res[name]["status"] == "ok" and res[name]["median_s"] > 0, (name, res[name])


def test_programs_smoke(tmp_path):
    """One tiny program, every method, one timed call: the table, the JSON and
    the plot are written and every cell is accounted for."""
    out = _run("benchmarks.programs", "--quick", "--programs", "burgers1d_upwind", "--quiet", "--out", str(tmp_path),
               tmp_path=tmp_path)
    del out
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.programs import CCJAX, CCJAX_SPARSE, METHODS, PRIMAL

    data = json.loads((tmp_path / "programs_cpu.json").read_text())
    md = (tmp_path / "programs_cpu.md").read_text()
    assert data["meta"]["quick"] and list(data["results"]) == ["burgers1d_upwind"]
    pr = data["results"]["burgers1d_upwind"]
    assert pr["info"]["true_nnz"] > 0 and pr["info"]["m"] == pr["info"]["n"] == 32
    assert set(pr["methods"]) == {PRIMAL, *METHODS}
    for method, rec in pr["methods"].items():
        if method.startswith("asdex") and not HAVE_ASDEX:
            assert rec["status"] == "skipped"
            continue
        assert rec["status"] in ("ok", "error", "mismatch", "skipped"), (method, rec)
        if rec["status"] != "ok":
            assert rec.get("error"), (method, rec)
            continue
        assert rec["median_s"] > 0 and rec["first_call_s"] > 0, (method, rec)
        if method != PRIMAL:
            assert rec["check"] == "ok", (method, rec)
    for method in (CCJAX, CCJAX_SPARSE):  # ccjax itself must work on this program
        assert pr["methods"][method]["status"] == "ok", pr["methods"][method]
    assert pr["methods"][CCJAX_SPARSE]["nse"] >= pr["info"]["true_nnz"]
    assert "| burgers1d_upwind |" in md and "Geometric-mean speedup" in md
    if HAVE_MPL:
        assert (tmp_path / "programs_cpu.png").stat().st_size > 0


def test_scaling_smoke(tmp_path):
    """Every phase is measured in child interpreters, the ccjax result is
    checked against float64 forward mode, and the report is written."""
    _run("benchmarks.scaling", "--quick", "--sizes", "40", "120", "--programs", "mlp", "scan",
         "--limit", "200", "--out", str(tmp_path), tmp_path=tmp_path)
    data = json.loads((tmp_path / "scaling_cpu.json").read_text())
    assert set(data["rows"]) == {"mlp", "scan"}
    for program, rows in data["rows"].items():
        assert [r["target"] for r in rows] == [40, 120]
        for r in rows:
            c = r["ccjax"]
            assert "error" not in c, (program, c)
            assert c["exact"], (program, c["max_rel_err"])
            for phase in ("build", "plan_auto", "lower", "compile", "first", "steady"):
                assert c[phase] > 0, (program, phase)
            assert c["first"] >= c["compile"]
            for peer in ("jacrev", "jacfwd"):
                assert r[peer].get("steady", 0) > 0 or "error" in r[peer]
    assert set(data["growth"]["mlp"]) >= {"build", "plan_auto", "compile", "first"}
    md = (tmp_path / "scaling_cpu.md").read_text()
    assert "## Growth exponents" in md and "| mlp |" in md


def test_selfplay_smoke(tmp_path):
    from ccjax.search.policy import SHIPPED_POLICY

    out = _run("benchmarks.selfplay", "--smoke", "--simulations", "4", "--baseline", SHIPPED_POLICY,
               "--out", str(tmp_path), tmp_path=tmp_path)
    data = json.loads((tmp_path / "selfplay_cpu.json").read_text())
    (row,) = data["results"]
    assert row["task"] == "g" and row["games"] == 2 and row["simulations"] == 4
    assert row["moves"] > 0
    for board in ("full", "shrink", "fine", "baseline"):
        for key in ("episodes_per_s", "episodes_per_cpu_s", "first_batch_s", "mean_cost"):
            assert row[board][key] > 0, (board, key)
    for key in ("observe_ms", "network_ms", "step_ms", "speedup_per_cpu_s", "fine_speedup_per_cpu_s",
                "over_baseline_per_cpu_s"):
        assert row[key] > 0, key
    # The same network as baseline: its full board plays the same games as the policy's own.
    assert row["baseline"]["mean_cost"] == row["full"]["mean_cost"]
    md = (tmp_path / "selfplay_cpu.md").read_text()
    assert "| g |" in md and "training ladder over baseline full" in md and "episodes/CPU-s" in out
