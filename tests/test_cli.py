"""The ``ccjax`` command line: commands, messages and exit codes."""
import json
import os
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



def test_search_forgets_auto_plans_and_runners(capsys):
    """A search that stores an order drops what ``order="auto"`` had planned
    and compiled for the graph (runners are keyed ``("auto", layout)``)."""
    import ccjax
    from ccjax.tasks import TASKS

    fn, args = TASKS["g"].graph_fn_and_inputs(0)
    g = ccjax.graph(fn, *args, argnums=TASKS["g"].argnums)
    g.plans["auto"], g.runners[("auto", "dense")], g.runners[("rev", "dense")] = object(), object(), object()
    try:
        code, _, err = run(capsys, "search", "g", "--budget", "0.5", "-q")
        assert code == EXIT_OK, err
        if ccjax.graph(fn, *args, argnums=TASKS["g"].argnums) is g:  # the CLI saw the same (cached) graph
            assert "auto" not in g.plans and ("auto", "dense") not in g.runners
            assert ("rev", "dense") in g.runners
    finally:
        g.plans.pop("auto", None)
        g.runners.pop(("auto", "dense"), None)
        g.runners.pop(("rev", "dense"), None)


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


def test_console_script_keeps_jax_compilations_in_the_ccjax_cache(tmp_path):
    """``python -m ccjax.cli`` (as the ``ccjax`` script) stores JAX's compiled
    programs under ``<cache root>/xla``; a user's own JAX cache directory or a
    disabled ccjax cache is respected."""
    command = [sys.executable, "-m", "ccjax.cli", "cost", "g", "--order", "learned", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
    root = tmp_path / "root"
    proc = subprocess.run(command, capture_output=True, text=True, env={**env, "CCJAX_CACHE_DIR": str(root)},
                          timeout=300)
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    assert int(proc.stdout) > 0 and any((root / "xla").iterdir())
    own = tmp_path / "own"
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**env, "CCJAX_CACHE_DIR": str(tmp_path / "second"),
                               "JAX_COMPILATION_CACHE_DIR": str(own)})
    assert proc.returncode == EXIT_OK and any(own.iterdir()) and not (tmp_path / "second" / "xla").exists()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**env, "CCJAX_CACHE_DIR": "off"})
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]


# -- ccjax train / the learned policy ------------------------------------------------------------

TINY_RUN = {"train_tasks": ["g"], "random_seeds": [], "num_vertices": 64, "num_structures": 64,
            "replay_capacity": 512, "batch_size": 8, "updates_per_iteration": 2, "warmup_steps": 1,
            "network": {"dim": 16, "heads": 2, "layers": 1, "edge_dim": 4},
            "search": {"num_simulations": 2, "max_num_considered_actions": 2}}


def test_train_runs_resumes_and_exports(capsys, tmp_path):
    from ccjax.search.policy import load_policy
    from ccjax.search.train import TrainConfig

    (tmp_path / "tiny.json").write_text(json.dumps(TINY_RUN))
    code, out, err = run(capsys, "train", "--dir", "run", "--config", "tiny.json", "--iterations", "1",
                         "--games", "2")
    assert code == EXIT_OK, err
    assert "iteration 1/1" in out and "1/1 iterations in run (1 this run" in out and "best cost" in out
    saved = TrainConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    assert saved.games_per_iteration == 2 and saved.network.dim == 16 and saved.train_tasks == ("g",)
    # Resume: the saved settings are used, only the remaining iteration runs.
    code, out, err = run(capsys, "train", "--dir", "run", "--iterations", "2", "--export", "p.msgpack")
    assert code == EXIT_OK, err
    assert "iteration 2/2" in out and "iteration 1/" not in out and "2/2 iterations in run (1 this run" in out
    pol = load_policy(str(tmp_path / "p.msgpack"))
    assert pol.network.dim == 16 and pol.info["iterations"] == 2
    # Each run's last iteration is scored; the better of iterations 1 and 2 is shipped.
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    scores = [r["selection_score"] for r in history["iterations"]]
    chosen = 1 if scores[0] <= scores[1] else 2
    assert pol.info["network_iteration"] == chosen and pol.info["selection_score"] == min(scores)
    assert f"wrote p.msgpack: the network of iteration {chosen} (the best greedy cost ratio" in out
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["iteration"] for r in history["iterations"]] == [1, 2]
    # Nothing left to do.
    code, out, _ = run(capsys, "train", "--dir", "run", "--iterations", "2", "-q")
    assert code == EXIT_OK and "2/2 iterations in run (0 this run" in out and "iteration 2/2" not in out
    # A resumed run refuses other settings, and a corrupt checkpoint is named.
    code, _, err = run(capsys, "train", "--dir", "run", "--games", "3")
    assert code == EXIT_USAGE and "games_per_iteration" in err and "only --iterations" in err
    (tmp_path / "run" / "state.msgpack").write_bytes(b"not msgpack")
    code, _, err = run(capsys, "train", "--dir", "run", "--iterations", "3")
    assert code == 1 and "state.msgpack" in err and err.startswith("ccjax: error:")


@pytest.mark.parametrize("argv", [
    ["train"], ["train", "--dir", "r", "--iterations", "0"], ["train", "--dir", "r", "--iterations", "x"],
    ["train", "--dir", "r", "--max-minutes", "-1"], ["train", "--dir", "r", "--max-minutes", "nan"],
    ["train", "--dir", "r", "--games", "0"], ["train", "--dir", "r", "--simulations", "-2"],
    ["search", "g", "--method", "mcts2"]])
def test_train_bad_arguments_exit_2(capsys, argv, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == EXIT_USAGE
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("config, message", [
    ('{"no_such_setting": 1}', "unknown settings no_such_setting"), ("[1, 2]", "JSON object"),
    ("{not json", "cannot read --config"), ('{"network": {"width": 3}}', "--config"),
    ("[" * 100000, "cannot read --config"), ('{"iterations": "many"}', "iterations")])
def test_train_bad_config_file(capsys, tmp_path, config, message):
    (tmp_path / "c.json").write_text(config)
    code, _, err = run(capsys, "train", "--dir", "r", "--config", "c.json")
    assert code == EXIT_USAGE and message in err
    assert not (tmp_path / "r").exists()


def test_train_unreadable_saved_config_is_named(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_bytes(b"[" * 100000)
    code, _, err = run(capsys, "train", "--dir", "run", "--iterations", "1")
    assert code == 1 and "config.json" in err and err.startswith("ccjax: error:")


def test_export_of_a_bad_checkpoint_is_named(capsys, tmp_path, monkeypatch):
    from ccjax.search import train as train_lib

    monkeypatch.setattr(train_lib, "train", lambda *a, **k: {"iterations": [{}], "elapsed": 0.0})
    code, _, err = run(capsys, "train", "--dir", "run", "--iterations", "1", "--export", "p.msgpack", "-q")
    assert code == 1 and err.startswith("ccjax: error:") and not (tmp_path / "p.msgpack").exists()


@pytest.fixture
def tiny_policy(tmp_path):
    import jax

    from ccjax.search import game
    from ccjax.search.corpus import task_graph
    from ccjax.search.mcts import MCTSConfig
    from ccjax.search.network import NetworkConfig, PolicyValueNet
    from ccjax.search.policy import save_policy
    from ccjax.search.tables import encode

    net = NetworkConfig(dim=16, heads=2, layers=1, edge_dim=4)
    tables = encode(task_graph("g"), 64, 64).tables
    params = jax.jit(PolicyValueNet(net).init)(jax.random.PRNGKey(0), game.observe(tables,
                                                                                    game.initial_state(tables)))
    path = tmp_path / "tiny.msgpack"
    save_policy(str(path), net, params, MCTSConfig(num_simulations=2, max_num_considered_actions=2))
    return path


def test_search_mcts_with_policy_file(capsys, tiny_policy, tmp_path):
    from ccjax.search import policy as policy_lib

    shipped = policy_lib.SHIPPED_POLICY
    code, out, err = run(capsys, "search", "g", "--method", "mcts", "--policy", str(tiny_policy), "--budget", "3",
                         "--no-cache", "--json", "r.json")
    assert code == EXIT_OK, err
    assert policy_lib.SHIPPED_POLICY == shipped  # restored
    rec = json.loads((tmp_path / "r.json").read_text())
    code, out, _ = run(capsys, "cost", "g", "--order", "@r.json", "-q")
    assert code == EXIT_OK and int(out) == rec["cost"] > 0
    (tmp_path / "bad.msgpack").write_bytes(b"\x00garbage")
    for policy, message in ((tmp_path / "bad.msgpack", "not a readable ccjax policy"),
                            (tmp_path / "missing.msgpack", "no policy file")):
        code, _, err = run(capsys, "search", "g", "--method", "mcts", "--policy", str(policy), "--no-cache")
        assert code == EXIT_USAGE and message in err
    code, _, err = run(capsys, "search", "g", "--policy", str(tiny_policy), "--no-cache")
    assert code == EXIT_USAGE and "--policy is only used by --method mcts and by --learned-start" in err
    code, _, err = run(capsys, "search", "g", "--method", "beam", "--learned-start", "--no-cache")
    assert code == EXIT_USAGE and "--learned-start is only used by --method auto and anneal" in err
    code, out, err = run(capsys, "search", "g", "--method", "anneal", "--learned-start", "--policy", str(tiny_policy),
                         "--budget", "2", "--no-cache", "--json", "s.json")
    assert code == EXIT_OK, err
    rec = json.loads((tmp_path / "s.json").read_text())
    assert set(rec["starts"]) == {"learned"} and rec["cost"] <= rec["starts"]["learned"]
    assert f'learned {rec["starts"]["learned"]}' in out


def test_cost_learned_order(capsys, tiny_policy, tmp_path, monkeypatch):
    import ccjax
    from ccjax.eliminate import plan_elimination
    from ccjax.search import policy as policy_lib
    from ccjax.search.api import learned_order
    from ccjax.tasks import TASKS

    fn, args = TASKS["g"].graph_fn_and_inputs(0)
    g = ccjax.graph(fn, *args, argnums=TASKS["g"].argnums)
    monkeypatch.setattr(policy_lib, "SHIPPED_POLICY", str(tmp_path / "missing.msgpack"))
    code, _, err = run(capsys, "cost", "g", "--order", "learned")
    assert code == EXIT_USAGE and "no policy file" in err
    monkeypatch.setattr(policy_lib, "SHIPPED_POLICY", str(tiny_policy))
    try:
        code, out, err = run(capsys, "cost", "g", "--order", "learned", "-q")
        assert code == EXIT_OK, err
        from ccjax.orders.search import quick_order

        learned = plan_elimination(g, learned_order(g, policy_lib.load_policy(str(tiny_policy)))).report.mults
        assert int(out) == min(learned, quick_order(g)[1])  # never worse than the quick heuristics
    finally:  # the plan of "learned" is kept with the (cached) graph; it depends on the policy
        g.plans.pop("learned", None)


def test_tune_times_the_programs_stores_the_choice_and_cache_clear_drops_it(capsys, tmp_path):
    code, out, err = run(capsys, "tune", "mymod:f", "--args", "f32[3],f32[3,3]", "--argnums", "0,1",
                         "--rounds", "1", "--json", "t.json")
    assert code == EXIT_OK, err
    rec = json.loads((tmp_path / "t.json").read_text())
    assert rec["choice"] in rec["times"] and rec["counted"] in rec["times"]
    assert f'order="auto" runs {rec["choice"]}' in out and "us/call" in out
    record = tmp_path / "cache" / "tuned" / os.path.basename(rec["path"])
    assert record.exists() and json.loads(record.read_text())["choice"] == rec["choice"]
    code, out, _ = run(capsys, "tune", "mymod:f", "--args", "f32[3],f32[3,3]", "--rounds", "1", "-q")
    assert code == EXIT_OK and out.strip() in ("eliminate", "jax-rev", "jax-fwd")
    code, out, _ = run(capsys, "cache", "clear")
    assert code == EXIT_OK and "2 tuning records" in out and not record.exists()


def test_tune_refuses_bad_input(capsys):
    for argv in (["tune", "mymod:f", "--args", "f32[3],f32[3,3]", "--margin", "1.5"],
                 ["tune", "mymod:f", "--args", "f32[3],f32[3,3]", "--rounds", "0"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == EXIT_USAGE
    got, _, err = run(capsys, "tune", "mymod:boom", "--args", "f32[3]")
    assert got == EXIT_TRACE and "boom" in err
