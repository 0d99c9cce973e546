"""Multi-process training (jax.distributed, CPU collectives over gloo): two processes on this machine,
each with one CPU device, against one process. Every check runs in subprocesses (a process joins a
distributed run before JAX starts its backends)."""

import json
import re
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args):
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _flags(n, i, port, *more):
    flags = ["--jax.num_processes", str(n), "--jax.process_id", str(i), *more]
    return flags + (
        ["--jax.coordinator", f"127.0.0.1:{port}", "--jax.coordinator_timeout", "60"] if n > 1 else []
    )


# One update with the global batch split over two processes equals one in a single process with the
# whole batch, the same key and the same initial state (only the float summation order differs, as in
# tests/test_multidevice.py: rtol 1e-4, atol 1e-5).
UPDATE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, "tests")
    flags, out = json.loads(sys.argv[1]), sys.argv[2]
    from recall2imagine import config as configlib, train
    cfg = configlib.parse(["--configs", "popgym", "debug", *flags])
    train.setup_jax(cfg)
    import equinox as eqx, jax, numpy as np
    from helpers import random_batch
    from recall2imagine.agent import Agent
    from recall2imagine.envs import make_env
    env = make_env(cfg.task, seed=0)
    agent = Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(0))
    batch = random_batch(cfg, env, agent.act_dim)  # the global batch, the same in every process
    n, i = jax.process_count(), jax.process_index()
    share = cfg.batch_size // n
    metrics = jax.device_get(agent.train({k: v[i * share:(i + 1) * share] for k, v in batch.items()},
                                         jax.random.PRNGKey(3)))
    leaves = [np.asarray(x) for x in jax.tree.leaves(eqx.filter(agent.state, eqx.is_array))]
    if i == 0:
        np.savez(out, *leaves)
        with open(out + ".json", "w") as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f)
    print("ok", n, i, flush=True)
""")


def test_two_processes_compute_the_single_process_update(tmp_path):
    port = _port()
    one = _start(["-c", UPDATE, json.dumps(_flags(1, 0, port)), str(tmp_path / "one.npz")])
    two = [_start(["-c", UPDATE, json.dumps(_flags(2, i, port)), str(tmp_path / "two.npz")]) for i in (0, 1)]
    for proc in [one, *two]:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert len(a.files) == len(b.files) > 50
    for name in a.files:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)
    m1, m2 = (json.loads((tmp_path / f"{n}.npz.json").read_text()) for n in ("one", "two"))
    assert set(m1) == set(m2)
    for k in m1:
        np.testing.assert_allclose(m2[k], m1[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_two_process_run_writes_one_checkpoint_and_one_log(tmp_path):
    port, logdir = _port(), tmp_path / "run"
    cmd = ["-m", "recall2imagine.train", "--configs", "popgym", "debug", "--logdir", str(logdir)]
    cmd += ["--run.steps", "400", "--run.loggers", "jsonl", "--run.log_every", "1"]
    procs = [_start(cmd + _flags(2, i, port)) for i in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "done: " in outs[0] and "logs: written by process 0" in outs[1]
    assert [p.name for p in logdir.rglob("metrics.jsonl")] == ["metrics.jsonl"]
    committed = [p.parent.name for p in (logdir / "checkpoints").glob("ckpt-*/COMMIT")]
    assert committed, "no checkpoint"
    steps = [json.loads(line)["step"] for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] >= 400  # env steps of both processes
    assert "process_id: 0" in (logdir / "config.yaml").read_text()


def test_mismatched_configs_and_a_missing_coordinator_are_one_line_errors(tmp_path):
    port = _port()
    cmd = ["-m", "recall2imagine.train", "--configs", "popgym", "debug", "--logdir", str(tmp_path / "x")]
    procs = [_start(cmd + _flags(2, i, port, *(["--batch_length", "32"] if i else []))) for i in (0, 1)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 2, out[-3000:]
        assert "process 1 of 2 runs another config than process 0" in out and "Traceback" not in out
    alone = _start(cmd + _flags(2, 1, _port())[:-1] + ["3"])  # process 1 waits 3 s for a process 0
    out, _ = alone.communicate(timeout=300)
    assert alone.returncode == 2 and "could not join within 3 s" in out and "Traceback" not in out, out[
        -3000:
    ]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_and_both_resume(tmp_path):
    """SIGTERM to process 1 alone: both stop at the same step and process 0 saves; the same two
    commands again resume both from that checkpoint."""
    import signal
    import time

    logdir = tmp_path / "run"
    cmd = ["-m", "recall2imagine.train", "--configs", "popgym", "debug", "--logdir", str(logdir)]
    cmd += ["--run.loggers", "jsonl", "--run.log_every", "1", "--run.save_every", "1000"]
    port = _port()
    procs = [_start(cmd + ["--run.steps", "100000"] + _flags(2, i, port)) for i in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and not (logdir / "metrics.jsonl").exists():
        assert all(p.poll() is None for p in procs)
        time.sleep(0.5)
    time.sleep(2)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert all("stopped: " in out for out in outs)
    steps = [re.search(r"stopped: (\d+) env steps", out).group(1) for out in outs]
    assert steps[0] == steps[1]  # the same step on both
    assert (logdir / "checkpoints" / f"ckpt-{int(steps[0]):012d}" / "COMMIT").exists()
    port = _port()
    procs = [_start(cmd + ["--run.steps", str(int(steps[0]) + 64)] + _flags(2, i, port)) for i in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert all(f"at step {steps[0]}" in out for out in outs)  # "resumed from ... at step N" on both
