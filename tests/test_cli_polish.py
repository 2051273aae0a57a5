"""A new user's first hour: CLI messages, a fast ``ccjax --help``, orders
searched in float32 found by float64 runs, and the quickstart's gain."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ccjax.cli import EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("CCJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "polish_mod.py").write_text(textwrap.dedent("""
        import jax.numpy as jnp

        def f(x, W):
            return jnp.tanh(W @ x).sum() * x
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("polish_mod", None)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _subprocess(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CCJAX_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


# -- argparse and target messages ---------------------------------------------------------------

def test_bad_budget_prints_the_search_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "g", "--budget", "-1"])
    err = capsys.readouterr().err
    assert e.value.code == EXIT_USAGE
    assert "usage: ccjax search" in err and "expected a positive number of seconds, got '-1'" in err


@pytest.mark.parametrize("typo", ["RoeFlux1d", "roeflux_1d", "Roeflux_1D", "roeflux-1d"])
def test_did_you_mean_beyond_case(capsys, typo):
    code, _, err = run(capsys, "search", typo)
    assert code == EXIT_USAGE and "did you mean RoeFlux_1d?" in err


def test_no_suggestion_for_a_far_name(capsys):
    code, _, err = run(capsys, "search", "NoSuchTask")
    assert code == EXIT_USAGE and "did you mean" not in err and "unknown target" in err


def test_train_config_help_says_file_and_inline_json_works(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "path to a JSON file" in help_text and "starting with { is read as that JSON object" in help_text
    code, _, err = run(capsys, "train", "--dir", "r", "--config", '{"no_such_setting": 1}')
    assert code == EXIT_USAGE and "the inline --config" in err and "no_such_setting" in err
    code, _, err = run(capsys, "train", "--dir", "r", "--config", "{not json")
    assert code == EXIT_USAGE and "cannot read the inline --config" in err
    code, _, err = run(capsys, "train", "--dir", "r", "--config", "missing.json")
    assert code == EXIT_USAGE and "cannot read --config missing.json" in err


def test_inline_config_is_read():
    from ccjax.cli.train import _config_file
    from ccjax.search.train import TrainConfig

    config = _config_file(' {"iterations": 3, "network": {"layers": 1}}', TrainConfig())
    assert config.iterations == 3 and config.network.layers == 1


def test_cache_list_prints_full_keys(capsys):
    code, _, err = run(capsys, "search", "polish_mod:f", "--args", "f32[3],f32[3,3]", "--argnums", "0,1",
                       "--budget", "0.3", "-q")
    assert code == EXIT_OK, err
    from ccjax.cache import OrderCache

    (entry,) = OrderCache().entries()
    code, out, _ = run(capsys, "cache", "list")
    header, row = out.splitlines()[1:]
    assert header.split() == ["key", "elim", "cost", "bound", "method", "label"]
    assert row.split()[0] == entry.key and row.split()[-1] == "polish_mod:f"


# -- ccjax --help without JAX --------------------------------------------------------------------

def test_cli_paths_do_not_import_jax(tmp_path):
    proc = _subprocess(textwrap.dedent("""
        import contextlib, io, sys
        import ccjax.cli
        ccjax.cli.make_parser()
        with contextlib.redirect_stdout(io.StringIO()):
            for argv in (["--help"], ["search", "--help"]):
                try:
                    ccjax.cli.main(argv)
                except SystemExit:
                    pass
            assert ccjax.cli.main(["cache", "list"]) == 0
        assert "jax" not in sys.modules, "importing ccjax.cli imported jax"
        assert "jacve" in dir(ccjax)
        print("ok")
    """), tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_lazy_public_names_survive_submodule_imports(tmp_path):
    """``ccjax.graph`` stays the function even when the submodule
    ``ccjax.graph`` is imported first (its import binds the package
    attribute of the same name)."""
    proc = _subprocess(textwrap.dedent("""
        import ccjax.graph, ccjax.cache
        import ccjax
        from ccjax.api import graph as api_graph
        assert ccjax.graph is api_graph, ccjax.graph
        from ccjax import jacve, graph, cost, cost_report, Graph, CostReport, OrderError, search_order, SearchResult
        assert graph is ccjax.graph and Graph.__module__ == "ccjax.graph"
        assert set(ccjax.__all__) <= set(dir(ccjax))
        from ccjax.graph import Graph as G2
        assert G2 is Graph
        try:
            ccjax.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        print("ok")
    """), tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# -- order messages ------------------------------------------------------------------------------

def test_invalid_explicit_order_is_concise(capsys):
    import ccjax
    from ccjax.tasks import TASKS

    fn, args = TASKS["RoeFlux_1d"].graph_fn_and_inputs(0)
    g = ccjax.graph(fn, *args, argnums=TASKS["RoeFlux_1d"].argnums)
    code, _, err = run(capsys, "cost", "RoeFlux_1d", "--order", "1,2,3,7,7,1000")
    assert code == EXIT_USAGE and err.startswith("ccjax: error: invalid elimination order")
    assert f"6 ids given, graph {g.fingerprint} has 88 eliminable vertices" in err
    assert "unknown 1 (1000)" in err and "duplicate 1 (7)" in err
    assert "not eliminable (inputs, outputs or pruned) 3 (1, 2, 3)" in err
    assert "missing 87 (6, 8, 9, 10, 11, ...)" in err
    assert len(err) < 400


def test_order_file_for_another_graph_names_both(capsys, tmp_path):
    code, _, err = run(capsys, "search", "g", "--budget", "0.3", "--no-cache", "-q", "--json", "g.json")
    assert code == EXIT_OK, err
    made_for = json.loads((tmp_path / "g.json").read_text())["fingerprint"]
    code, _, err = run(capsys, "cost", "RoeFlux_1d", "--order", "@g.json")
    assert code == EXIT_USAGE
    assert f"this order was made for graph {made_for} (target g" in err and "the target's graph is" in err
    assert "cannot be eliminated" not in err


def test_order_file_made_in_float32_serves_float64(capsys, tmp_path):
    spec = ("polish_mod:f", "--argnums", "0,1")
    code, _, err = run(capsys, "search", *spec, "--args", "f32[3],f32[3,3]", "--budget", "0.3", "--no-cache",
                       "--json", "r.json", "-q")
    assert code == EXIT_OK, err
    code, out, err = run(capsys, "cost", *spec, "--args", "f64[3],f64[3,3]", "--order", "@r.json", "-q")
    assert code == EXIT_OK, err
    assert int(out) == json.loads((tmp_path / "r.json").read_text())["cost"]


# -- the order cache ignores float dtypes; cost/show say what auto used ---------------------------

def test_float32_search_is_used_by_float64_auto(capsys):
    spec = ("polish_mod:f", "--argnums", "0,1")
    code, out, err = run(capsys, "cost", *spec, "--args", "f64[3],f64[3,3]")
    assert code == EXIT_OK, err
    assert out.startswith("auto: no cached order for key ") and "heuristic" in out
    code, out, err = run(capsys, "search", *spec, "--args", "f32[3],f32[3,3]", "--budget", "0.3", "-q")
    assert code == EXIT_OK, err
    searched = int(out)
    from ccjax.cache import OrderCache

    (entry,) = OrderCache().entries()
    code, out, err = run(capsys, "cost", *spec, "--args", "f64[3],f64[3,3]")
    assert code == EXIT_OK, err
    # the search started from every quick heuristic, so auto takes its order (ties go to the cache)
    assert out.splitlines()[0] == (f"auto: cached order {entry.key} (label polish_mod:f, method {entry.method}, "
                                   f"cost {searched})")
    assert f"order auto: {searched} multiplications" in out
    code, out, err = run(capsys, "show", *spec, "--args", "f64[3],f64[3,3]", "--no-picture")
    assert code == EXIT_OK and f"cached order {entry.key}" in out
    code, out, err = run(capsys, "show", *spec, "--args", "f64[3],f64[3,3]", "--no-picture", "--no-cache")
    assert code == EXIT_OK and "auto: order cache not used; heuristic " in out


def test_quickstart_shows_the_searched_gain(tmp_path):
    env = dict(os.environ, CCJAX_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "equal to jax.jacrev: True" in lines and "multiplications per elimination order:" in lines
    before, after = [int(line.split()[1]) for line in lines if line.startswith("  auto ")]
    assert after < before  # 5 s of annealing beat every heuristic on RoeFlux_1d (199 -> about 162)
    assert any(line.startswith("after a 5 s order search") for line in lines)
    assert "equal to jax.jacrev with the searched order: True" in lines
