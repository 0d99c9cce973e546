import csv
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from recall2imagine import sweep


def test_expand_tasks():
    assert sweep.expand_tasks(["bsuite:memory_len/2-4", "gym_popgym:popgym-RepeatPreviousEasy-v0"]) == [
        "bsuite:memory_len/2",
        "bsuite:memory_len/3",
        "bsuite:memory_len/4",
        "gym_popgym:popgym-RepeatPreviousEasy-v0",
    ]
    with pytest.raises(ValueError):
        sweep.expand_tasks(["bsuite:memory_len/4-2"])


def _tiny_argv(logdir, *backend):
    return [
        "--configs",
        "bsuite",
        "debug",
        "--tasks",
        "bsuite:memory_len/0-1",
        "--seeds",
        "1",
        *backend,
        "--logdir",
        str(logdir),
        "--run.steps",
        "150",
        "--run.loggers",
        "jsonl",
        "--last",
        "10",
    ]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """Two tiny bsuite runs with the local backend: (logdir, argv, exit code)."""
    tmp_path = tmp_path_factory.mktemp("local")
    argv = _tiny_argv(tmp_path, "--workers", "2")
    return tmp_path, argv, sweep.main(argv)


def _rows(logdir):
    with open(pathlib.Path(logdir) / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_two_tiny_runs_and_summary(local_sweep, capsys):
    tmp_path, argv, code = local_sweep
    assert code == 0
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["bsuite:memory_len/0", "bsuite:memory_len/1"]
    for r in rows:
        assert r["status"] == "done" and int(r["episodes"]) > 10
        assert -1.0 <= float(r["score"]) <= 1.0
    md = (tmp_path / "summary.md").read_text()
    assert "bsuite:memory_len/1" in md and "mean return" in md
    # bsuite's own CSV is there for its analysis code
    assert list((tmp_path / "bsuite_memory_len_0" / "seed0" / "bsuite").glob("*.csv"))
    # ... and the summary has bsuite's score of it (tests/test_bsuite_score.py checks the numbers)
    assert (
        "| memory_len | " in md and "2 of 23 (partial)" in md and "| memory_len/1 | memory_length=2 |" in md
    )
    assert all(int(r["bsuite_episodes"]) > 0 for r in rows)
    assert (tmp_path / "summary_bsuite.csv").exists()
    # a second call skips finished runs
    capsys.readouterr()
    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.count(": done (skipped)") == 2


def test_ray_backend_gives_the_local_summary(local_sweep, tmp_path, capsys):
    """The same two runs as Ray tasks: the same scores and episode counts (same seeds), and a second
    call skips them."""
    pytest.importorskip("ray")
    argv = _tiny_argv(tmp_path, "--backend", "ray", "--cpus_per_run", "1")
    assert sweep.main(argv) == 0
    key = lambda r: (r["task"], r["seed"], r["score"], r["episodes"], r["bsuite_setting_score"])
    assert [key(r) for r in _rows(tmp_path)] == [key(r) for r in _rows(local_sweep[0])]
    assert {r["status"] for r in _rows(tmp_path)} == {"done"}
    capsys.readouterr()
    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.count(": done (skipped)") == 2


def test_backend_options_are_checked(tmp_path, capsys):
    assert sweep.main(_tiny_argv(tmp_path, "--address", "auto")) == 2
    assert "--address is for --backend ray" in capsys.readouterr().err
    if importlib.util.find_spec("ray") is not None:
        assert sweep.main(_tiny_argv(tmp_path, "--backend", "ray", "--cpus_per_run", "0")) == 2
        assert "--cpus_per_run must be > 0" in capsys.readouterr().err


def test_interrupted_sweep_keeps_its_episodes_and_continues(tmp_path):
    """SIGINT to a sweep started in the background (SIGINT inherited as ignored, as `cmd &` does):
    the running run saves and stops (no orphan), its episodes stay in the logs, and the same
    command with a reachable step budget finishes it and the run not yet started."""
    root = pathlib.Path(__file__).resolve().parent.parent
    argv = [
        sys.executable,
        "-m",
        "recall2imagine.sweep",
        "--configs",
        "bsuite",
        "debug",
        "--tasks",
        "bsuite:memory_len/0-1",
        "--seeds",
        "1",
        "--workers",
        "1",
        "--logdir",
        str(tmp_path),
        "--run.loggers",
        "jsonl",
        "--run.log_every",
        "1",
        "--last",
        "5",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        argv + ["--run.steps", "1000000"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    first = tmp_path / "bsuite_memory_len_0" / "seed0"
    deadline = time.time() + 180
    while time.time() < deadline and sweep.final_return(first)[1] < 20:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-2000:]
    assert "interrupted: stopping runs" in out
    with open(tmp_path / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["interrupted", "not started"]
    log = (first / "sweep.log").read_text()
    assert "stopped:" in log  # the run itself stopped cleanly (saved), it was not killed
    assert not subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).stdout  # no orphan
    before = sweep.final_return(first)[1]
    assert before >= 20
    step = max(json.loads(line).get("step", 0) for line in open(first / "metrics.jsonl"))
    rerun = subprocess.run(
        argv + ["--run.steps", str(step + 100)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    with open(tmp_path / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["done", "done"]
    assert sweep.final_return(first)[1] > before  # resumed: the old episodes plus new ones
    assert "resum" in (first / "sweep.log").read_text().lower()


@pytest.mark.slow
def test_ray_retries_a_killed_run_from_its_checkpoint(tmp_path):
    """SIGKILL the training process of a Ray run after its first checkpoint: Ray starts it again, it
    resumes from the checkpoint and finishes, and the summary says it took two attempts."""
    pytest.importorskip("ray")
    root = pathlib.Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-m", "recall2imagine.sweep", *_tiny_argv(tmp_path, "--backend", "ray")]
    argv[argv.index("bsuite:memory_len/0-1")] = "bsuite:memory_len/0"
    argv[argv.index("150")] = "3000"
    argv += ["--run.save_every", "2"]
    proc = subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "bsuite_memory_len_0" / "seed0"
    deadline = time.time() + 300
    while time.time() < deadline and not list((run / "checkpoints").glob("ckpt-*/COMMIT")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    pids = subprocess.run(["pgrep", "-f", f"recall2imagine.train.*{run}"], capture_output=True, text=True)
    assert pids.stdout.split(), "the run's training process was not found"
    for pid in pids.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert _rows(tmp_path)[0]["status"] == "done after 2 attempts"
    assert "resumed from" in (run / "sweep.log").read_text()
