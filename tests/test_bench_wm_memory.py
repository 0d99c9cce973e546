"""benchmarks/wm_memory.py: the AUC against brute force, the replay-like stream, a tiny end-to-end run."""

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "wm_memory.py"


def _module():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports probe_memory beside it
    spec = importlib.util.spec_from_file_location("bench_wm_memory", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_roc_auc_matches_counting_pairs():
    rng = np.random.default_rng(0)
    score = np.round(rng.normal(size=300), 1)  # rounded: many ties
    positive = rng.random(300) < 0.3
    pairs = [(p > n) + 0.5 * (p == n) for p in score[positive] for n in score[~positive]]
    assert _module().roc_auc(score, positive) == pytest.approx(np.mean(pairs))


def test_stream_rows_follow_the_replay_layout():
    from recall2imagine.envs import make_env

    mod = _module()
    env = make_env("gym_popgym:popgym-RepeatPreviousEasy-v0", seed=0)
    data = mod.stream(env, 4, 3, np.random.default_rng(0), bias=1.0)
    n = len(data["reward"])
    assert n == 3 * 52 and all(len(v) == n for v in data.values())
    assert np.flatnonzero(data["is_first"]).tolist() == [0, 52, 104]
    assert np.flatnonzero(data["is_last"]).tolist() == [51, 103, 155]
    assert (data["action"].argmax(-1) == 0).all()  # bias 1: always action 0
    # the reward that comes with obs t+1 is for the action after obs t: +-1/48 from the 4th step on,
    # positive exactly when that action (0) equals the suit 3 observations before obs t
    suit = data["vector"].argmax(-1)
    for start in (0, 52, 104):
        r, s = data["reward"][start : start + 52], suit[start : start + 52]
        assert (r[:4] == 0).all()
        assert ((r[4:] > 0) == (s[:48] == 0)).all() and np.allclose(np.abs(r[4:]), 1 / 48)


@pytest.mark.parametrize(
    "task, lags",
    [("RepeatPreviousEasy", {3}), ("RepeatPreviousMedium", {31}), ("AutoencodeEasy", set(range(0, 103, 2)))],
)
def test_answers_are_what_the_env_rewards(task, lags):
    """Playing probe_memory.answers' target gets every judged step's positive reward, any other action
    a negative one; and every rewarded step is a judged one."""
    sys.path.insert(0, str(SCRIPT.parent))
    from probe_memory import answers

    from recall2imagine.envs import make_env

    env, rng, seen = make_env(f"gym_popgym:popgym-{task}-v0", seed=3), np.random.default_rng(0), set()
    for _ in range(3):
        obs, rows = env.reset(), []
        while not obs["is_last"]:
            rows.append(obs["vector"])
            target, lag = answers(task, np.stack(rows)[None], 4)
            t, lag_t = target[0, -1], lag[0, -1]
            a = rng.integers(4) if t < 0 else (t if rng.random() < 0.5 else (t + rng.integers(1, 4)) % 4)
            obs = env.step(np.eye(4, dtype=np.float32)[a])
            assert (obs["reward"] == 0) == (t < 0) and (t < 0 or (obs["reward"] > 0) == (a == t))
            seen.add(int(lag_t))
    assert seen - {-1} == lags


def test_tiny_run_reports_onset_line():
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--configs",
            "popgym",
            "debug",
            "--updates",
            "4",
            "--eval_every",
            "2",
            "--data_episodes",
            "4",
            "--eval_episodes",
            "3",
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("update")]
    assert len(lines) == 2 and "action-0 AUC" in lines[-1] and "answer probe from hidden" in lines[-1]
    assert "of 4 updates: reward-head accuracy >= 0.5 at" in out.stdout


def test_rejects_a_task_without_a_lag():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--configs", "bsuite", "debug"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "RepeatPrevious or Autoencode" in out.stderr


def test_by_lag_buckets():
    mod = _module()
    lags = np.array([0, 2, 10, 28, 30, 102])
    right = np.array([1, 0, 1, 1, 0, 1], bool)
    text = mod.by_lag(lambda m: np.mean(right[m]), lags)
    assert text == " (by lag 0-9 0.50, 10-29 1.00, 30-59 0.00, 60-102 1.00)"
    assert mod.by_lag(lambda m: 1.0, np.full(4, 3)) == ""


@pytest.mark.parametrize(
    "task", [pytest.param("RepeatPreviousEasy", marks=pytest.mark.slow), "AutoencodeEasy"]
)
def test_probe_memory_runs_on_a_trained_run(tmp_path, task):
    """benchmarks/probe_memory.py on a tiny run's checkpoint: both task kinds print their scores,
    how often each suit is answered (shares summing to 1) and the reward head's check."""
    from helpers import run_argv

    from recall2imagine import train

    flags = f"--configs popgym debug --task gym_popgym:popgym-{task}-v0 --run.steps 300 --run.loggers jsonl"
    assert train.main(run_argv(tmp_path / "run", flags)) == 0
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "probe_memory.py"), str(tmp_path / "run")]
        + ["--episodes", "2", "--probe_episodes", "6"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for mode in ("greedy", "sampled"):
        (line,) = [line for line in lines if line.startswith(f"{mode}: score")]
        shares = [float(s) for s in line.split("answers by suit ")[1].split()]
        assert len(shares) == 4 and sum(shares) == pytest.approx(1.0, abs=0.02)
    assert any(line.startswith("one imagined step") for line in lines)
    assert any(line.startswith("linear probe") for line in lines)
