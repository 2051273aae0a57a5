"""The ``ccjax`` command line: commands, messages and exit codes."""
import json
import subprocess
import sys
import textwrap

import pytest

from ccjax.cli import EXIT_MISSING, EXIT_OK, EXIT_TRACE, EXIT_USAGE, CLIError, main, parse_args_spec


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("CCJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymod.py").write_text(textwrap.dedent("""
        import jax.numpy as jnp

        def f(x, W):
            return jnp.tanh(W @ x).sum() * x

        def boom(x):
            raise RuntimeError("boom")

        VALUE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mymod", None)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_args_spec():
    specs = parse_args_spec("f32[512], f32[3,3],f64[],bool[2], i32")
    assert [(s.dtype, s.shape) for s in specs] == [("float32", (512,)), ("float32", (3, 3)), ("float64", ()),
                                                    ("bool", (2,)), ("int32", ())]
    for bad in ("f32[3", "q8[2]", "f32[a]", "", "f32[2]]"):
        with pytest.raises(CLIError):
            parse_args_spec(bad)


def test_search_module_function_saves_cache_and_json(capsys, tmp_path):
    code, out, err = run(capsys, "search", "mymod:f", "--args", "f32[3],f32[3,3]", "--argnums", "0,1",
                         "--budget", "1", "--json", "r.json")
    assert code == EXIT_OK, err
    assert "searched" in out and "saved to cache" in out
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["cost"] > 0 and rec["order"]
    code, out, _ = run(capsys, "cost", "mymod:f", "--args", "f32[3],f32[3,3]", "--argnums", "0,1",
                       "--order", "@r.json", "-q")
    assert code == EXIT_OK and int(out) == rec["cost"]
    code, out, _ = run(capsys, "cost", "mymod:f", "--args", "f32[3],f32[3,3]", "--argnums", "0,1", "-q")
    assert code == EXIT_OK and int(out) == rec["cost"]  # auto uses the cache
    code, out, _ = run(capsys, "cache", "list")
    assert code == EXIT_OK and "1 cached order" in out and "mymod:f" in out
    code, out, _ = run(capsys, "cache", "clear")
    assert code == EXIT_OK and "removed 1" in out
    code, out, _ = run(capsys, "cache", "list")
    assert "0 cached orders" in out


def test_search_task_quiet(capsys):
    code, out, err = run(capsys, "search", "PropaneCombustion", "--budget", "0.5", "-q", "--no-cache")
    assert code == EXIT_OK, err
    assert int(out) > 0


def test_cost_named_orders(capsys):
    costs = {}
    for o in ("fwd", "rev", "markowitz"):
        code, out, _ = run(capsys, "cost", "RoeFlux_1d", "--order", o, "-q")
        assert code == EXIT_OK
        costs[o] = int(out)
    assert costs["rev"] < costs["fwd"]


@pytest.mark.parametrize("argv, code, message", [
    (["search", "NoSuchTask"], EXIT_USAGE, "unknown target"),
    (["search", "roeflux_1d"], EXIT_USAGE, "did you mean RoeFlux_1d"),
    (["search", "nomodule_xyz:f", "--args", "f32[3]"], EXIT_USAGE, "cannot import module"),
    (["search", "mymod:g", "--args", "f32[3]"], EXIT_USAGE, "no attribute"),
    (["search", "mymod:VALUE", "--args", "f32[3]"], EXIT_USAGE, "not callable"),
    (["search", "mymod:f"], EXIT_USAGE, "needs --args"),
    (["search", "mymod:f", "--args", "f32[3"], EXIT_USAGE, "bad --args"),
    (["search", "mymod:f", "--args", "x9[3]"], EXIT_USAGE, "unknown dtype"),
    (["search", "mymod:f", "--args", "f32[3],f32[4,4]"], EXIT_TRACE, "cannot trace"),
    (["search", "mymod:boom", "--args", "f32[3]"], EXIT_TRACE, "boom"),
    (["search", "mymod:f", "--args", "f32[3],f32[3,3]", "--argnums", "x"], EXIT_USAGE, "bad --argnums"),
    (["search", "mymod:f", "--args", "f32[3],f32[3,3]", "--argnums", "5"], EXIT_USAGE, "argnums"),
    (["search", "RoeFlux_1d", "--args", "f32[3]"], EXIT_USAGE, "fixed inputs"),
    (["cost", "RoeFlux_1d", "--order", "1,2,3"], EXIT_USAGE, "invalid elimination order"),
    (["cost", "RoeFlux_1d", "--order", "bogus"], EXIT_USAGE, "unknown order"),
    (["cost", "RoeFlux_1d", "--order", "@missing.json"], EXIT_USAGE, "cannot read order file"),
])
def test_bad_input_messages_and_exit_codes(capsys, argv, code, message):
    got, out, err = run(capsys, *argv)
    assert got == code
    assert message in err and err.startswith("ccjax: error:")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["search"])
    assert e.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as e:
        main(["search", "g", "--budget", "-1"])
    assert e.value.code == EXIT_USAGE


def test_show_writes_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "show", "PropaneCombustion", "-o", "p.png")
    assert code == EXIT_OK, err
    assert "Graph" in out and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_show_without_matplotlib(capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    code, out, err = run(capsys, "show", "g")
    assert code == EXIT_MISSING and "matplotlib" in err and "Graph" in out


def test_tasks_and_console_script(capsys):
    code, out, _ = run(capsys, "tasks")
    assert code == EXIT_OK and "RoeFlux_1d" in out and "Encoder" in out
    proc = subprocess.run([sys.executable, "-m", "ccjax.cli", "search", "NoSuchTask"], capture_output=True,
                          text=True)
    assert proc.returncode == EXIT_USAGE and "unknown target" in proc.stderr
