"""End-to-end runs of the CLI on the debug config, and its one-line errors on bad input."""

import json
import math
import os
import subprocess
import sys

import pytest

from recall2imagine import train
from helpers import run_argv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_metrics(logdir):
    with open(os.path.join(logdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize(
    "configs,task",
    [
        (["popgym", "debug"], "gym_popgym:popgym-RepeatPreviousEasy-v0"),
        (["bsuite", "debug"], "bsuite:memory_len/0"),
    ],
)
def test_debug_run_writes_finite_metrics(tmp_path, configs, task, capsys):
    logdir = str(tmp_path / "run")
    code = train.main(["--configs", *configs, "--task", task, "--logdir", logdir, "--run.log_every", "5"])
    assert code == 0
    rows = _read_metrics(logdir)
    losses = [r for r in rows if "train/model_loss" in r]
    assert losses, "no training metrics written"
    for r in losses:
        for k in ("train/model_loss", "train/actor_loss", "train/critic_loss", "train/reward_loss"):
            assert r[k] is not None and math.isfinite(r[k]), (k, r)
    assert any("episode/score" in r for r in rows)
    evals = [r for r in rows if "eval/score" in r]  # debug: 2 greedy episodes every 300 env steps
    assert evals and all(-1.0 <= r["eval/score"] <= 1.0 for r in evals)
    assert rows[-1]["step"] >= 600
    assert os.path.exists(os.path.join(logdir, "config.yaml"))
    out = capsys.readouterr().out
    assert "mean return over last" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--configs", "popgim"], "did you mean 'popgym'"),
        (["--rssm.deterr", "3"], "did you mean 'rssm.deter'"),
        (["--rssm.deter", "abc"], "rssm.deter"),
        (["--ssm.conj_sym", "yes"], "True or False"),
        (
            ["--configs", "debug", "--task", "gym_popgym:popgym-RepeatPrevEasy-v0"],
            "popgym-RepeatPreviousEasy-v0",
        ),
        (["--configs", "debug", "--task", "arcade:pong"], "suite"),
        (["--configs", "debug", "--jax.precision", "float8"], "float32"),
        (["--configs", "debug", "--jax.train_devices", "7"], "no such device; available on cpu: 0"),
        (
            ["--configs", "mmaze", "--envs.amount", "100000", "--replay_size", "1e12"],
            "Memory Maze envs need about",
        ),
        (["--configs", "debug", "--reward_head.bin_max", "0"], "--reward_head.bin_max 0.0 is out of range"),
    ],
)
def test_bad_input_one_line_error(argv, needle, tmp_path, capsys):
    code = train.main([*argv, "--logdir", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle in err, err


def test_script_entry_point_runs_as_file(tmp_path):
    """`python recall2imagine/train.py --help` works without installing the package path."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "recall2imagine", "train.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "rssm.deter" in out.stdout


def test_device_out_of_memory_is_one_line(monkeypatch, capsys):
    def oom(cfg):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 50131546216 bytes.\nmore")

    monkeypatch.setattr(train, "run", oom)
    assert train.main(["--configs", "debug"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory on the device (one buffer of 46.7 GiB)") and "\n" not in err
    monkeypatch.setattr(train, "run", lambda cfg: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):
        train.main(["--configs", "debug"])


def test_jax_jit_flag_switches_jit_off_and_on():
    import jax
    from recall2imagine import config as configlib

    try:
        train.setup_jax(configlib.parse(["--configs", "debug", "--jax.jit", "False"]))
        assert jax.config.jax_disable_jit
        train.setup_jax(configlib.parse(["--configs", "debug"]))
        assert not jax.config.jax_disable_jit
    finally:
        jax.config.update("jax_disable_jit", False)


def test_compile_cache_keeps_the_update_and_a_warm_run_computes_the_same(tmp_path):
    """`--jax.compile_cache DIR`: a first run writes its compiled update there; a second run of the
    same config (compiled programs read back instead of compiled) logs the same losses."""
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=ROOT)
    rows = []
    for name in ("cold", "warm"):
        flags = f"--configs popgym debug --run.steps 200 --run.loggers jsonl --jax.compile_cache {cache}"
        out = subprocess.run(
            [sys.executable, "-m", "recall2imagine.train", *run_argv(tmp_path / name, flags)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        entries = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.glob("jit__train_impl-*")}
        if name == "cold":
            assert any(n.endswith("-cache") for n in entries), list(cache.iterdir())
            cold = entries
        else:  # read back, not compiled and written again: the entry is the same, its access time newer
            assert entries.keys() == cold.keys()
            for n, (mtime, data) in entries.items():
                assert (mtime == cold[n][0]) if n.endswith("-cache") else (data != cold[n][1]), n
        rows.append([r for r in _read_metrics(tmp_path / name) if "train/model_loss" in r])
    losses = lambda rs: [(r["step"], r["train/model_loss"], r["train/actor_loss"]) for r in rs]
    assert rows[0] and losses(rows[0]) == losses(rows[1])


def test_compile_cache_folder_that_cannot_be_made_warns_and_runs_without(tmp_path, capsys):
    import jax
    from recall2imagine import config as configlib

    blocker = tmp_path / "file"
    blocker.write_text("")
    before = jax.config.jax_compilation_cache_dir
    train.setup_jax(configlib.parse(["--configs", "debug", "--jax.compile_cache", str(blocker / "jax")]))
    err = capsys.readouterr().err
    assert err.startswith(f"warning: --jax.compile_cache {blocker / 'jax'}: ") and err.count("\n") == 1
    assert "compiling without a cache" in err and jax.config.jax_compilation_cache_dir == before
    assert train.compile_cache_dir("off") is None
    assert train.compile_cache_dir("~/c") == train.pathlib.Path.home() / "c"


def test_reward_outside_the_reward_heads_range_warns_once(tmp_path, capsys):
    """RepeatPreviousEasy's rewards are +-1/48; bins over symlog [-0.01, 0.01] cover |r| <= 0.01005."""
    code = train.main(
        [
            "--configs",
            "popgym",
            "debug",
            "--logdir",
            str(tmp_path / "run"),
            "--run.steps",
            "200",
            "--run.eval_eps",
            "0",
            "--reward_head.bin_max",
            "0.01",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("outside the reward head's range (|r| <= 0.01005)") == 1, err


def test_non_finite_updates_in_a_row_stop_with_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """Every update skipped as non-finite: after MAX_BAD_UPDATES in a row the run stops with one line
    naming the last checkpoint, and writes no new one."""
    import numpy as np

    from recall2imagine import trainer
    from recall2imagine.agent import Agent

    monkeypatch.setattr(trainer, "MAX_BAD_UPDATES", 5)
    monkeypatch.setattr(Agent, "train", lambda self, batch, key: {"model_opt_skipped": np.float32(1.0)})
    logdir = tmp_path / "run"
    code = train.main(run_argv(logdir, "--configs popgym debug --run.steps 2000"))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: the last ") and err.count("\n") == 1, err
    assert "world-model updates had non-finite gradients" in err and "no checkpoint was written yet" in err, (
        err
    )
    assert not list((logdir / "checkpoints").glob("ckpt-*"))


def test_compile_cache_write_errors_are_one_line(tmp_path):
    """JAX's own warning for a cache entry it cannot write (here a full disk, raised where JAX writes
    the entry), program after program, reaches the user as one line; other warnings pass unchanged."""
    code = f"""
import warnings, jax, jax.numpy as jnp
from jax._src import compilation_cache
from recall2imagine import config as configlib, train
train.setup_jax(configlib.parse(['--configs', 'debug', '--jax.compile_cache', {str(tmp_path)!r}]))
def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')
compilation_cache.put_executable_and_time = full
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
for i in range(3):
    jax.jit(lambda x: x * (i + 2.0) + 1.0)(jnp.ones(3 + i)).block_until_ready()
warnings.warn('another warning')
print('ran')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ran", out.stderr
    lines = [
        line for line in out.stderr.splitlines() if "compile_cache" in line or "compilation cache" in line
    ]
    assert lines == [
        f"warning: --jax.compile_cache {tmp_path}: writing a compiled program failed "
        "(OSError: [Errno 28] No space left on device); the run goes on (--jax.compile_cache off skips the cache)"
    ], out.stderr
    assert "UserWarning: another warning" in out.stderr
