"""The usage scripts under examples/ run to completion and report success.

Each runs in a fresh interpreter (the test session enables float64, the
examples must not depend on that) with a private ccjax order-cache directory.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str, tmp_path: Path) -> str:
    env = dict(os.environ, CCJAX_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_newton(tmp_path):
    out = _run("newton.py", tmp_path=tmp_path)
    assert "converged in" in out
    assert "Jacobian at the solution equal to jax.jacrev: True" in out


def test_model_decorator(tmp_path):
    pytest.importorskip("flax")
    out = _run("model_decorator.py", tmp_path=tmp_path)
    assert out.count("equal to jax.jacrev: True") == 2
    assert "same pytree layout and values as jax.jacrev: True" in out


def test_offline_search_both_steps(tmp_path):
    out = _run("offline_search.py", "--budget", "2", tmp_path=tmp_path)
    assert "Jacobian equal to jax.jacrev: True" in out


def test_offline_search_reuse_in_a_new_process(tmp_path):
    store = str(tmp_path / "orders")
    _run("offline_search.py", "--cache-dir", store, "--step", "search", "--budget", "2", tmp_path=tmp_path)
    out = _run("offline_search.py", "--cache-dir", store, "--step", "reuse", tmp_path=tmp_path)
    assert "reused the stored order" in out and "equal to jax.jacrev: True" in out
