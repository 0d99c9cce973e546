"""Crash safety: SIGKILL a training run at a random moment after a checkpoint, restart it with the
same logdir, and check that it continues from the last checkpoint with its replay and metrics."""

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _committed(ckpt_dir):
    return sorted(
        int(p.name.split("-")[1]) for p in pathlib.Path(ckpt_dir).glob("ckpt-*") if (p / "COMMIT").exists()
    )


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _start(logdir, steps, *flags):
    cmd = [
        sys.executable,
        "-m",
        "recall2imagine.train",
        "--configs",
        "popgym",
        "debug",
        "--logdir",
        str(logdir),
        "--run.steps",
        str(steps),
        "--run.save_every",
        "3",
        "--run.log_every",
        "1",
        "--replay_size",
        "100000",
        *flags,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _losses(logdir):
    rows = []
    with open(pathlib.Path(logdir) / "metrics.jsonl") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the line being written when the process was killed
                pass
    return [(r["step"], r["train/model_loss"]) for r in rows if r.get("train/model_loss") is not None]


def test_sigkill_and_resume_repeatedly(tmp_path):
    rng = random.Random(0)
    logdir = tmp_path / "run"
    ckpt_dir = logdir / "checkpoints"
    rss_before = []
    for attempt in range(2):  # a kill after the first checkpoint, then one after a resume
        proc = _start(logdir, 1_000_000)
        known = _committed(ckpt_dir)
        deadline = time.time() + 150
        while time.time() < deadline and len(_committed(ckpt_dir)) <= len(known) + (attempt == 0):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 2.0))  # a random moment after a new checkpoint
        rss_before.append(_rss_mb(proc.pid))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        last = _committed(ckpt_dir)[-1]
        if attempt:
            assert f"resumed from {ckpt_dir}/ckpt-{known[-1]:012d}" in out, out[-2000:]
        # what was on disk at the kill: the newest committed checkpoint is intact and holds every step
        meta = json.loads((ckpt_dir / f"ckpt-{last:012d}" / "meta.json").read_text())
        assert meta["counters"]["step"] == last and meta["replay"]["size"] == last

    # final restart runs to completion from the last checkpoint
    last = _committed(ckpt_dir)[-1]
    proc = _start(logdir, last + 200)
    out, _ = proc.communicate(timeout=200)
    assert proc.returncode == 0, out[-3000:]
    m = re.search(r"resumed from \S+ at step (\d+) \((\d+) replay steps\)", out)
    assert m and int(m.group(1)) == last and int(m.group(2)) == last, out[-2000:]
    assert _committed(ckpt_dir)[-1] >= last + 200
    assert len(_committed(ckpt_dir)) <= 3  # keep_checkpoints

    # the logged step never goes back: rows written after a checkpoint by a killed segment were dropped
    steps = [json.loads(line)["step"] for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert all(a < b for a, b in zip(steps, steps[1:])), steps
    scores = [json.loads(line)["step"] for line in (logdir / "scores.jsonl").read_text().splitlines()]
    assert all(a <= b for a, b in zip(scores, scores[1:])), scores
    assert list(logdir.glob("metrics.jsonl.*.bak"))  # what was dropped is kept

    # training continues smoothly: losses logged after the resume stay within 2x of those before it
    losses = _losses(logdir)
    before = [v for s, v in losses if s <= last][-5:]
    after = [v for s, v in losses if s > last][:5]
    assert before and after
    assert max(after) <= 2.0 * max(before), (before, after)
    # resident memory after resumes does not grow from one restart to the next
    assert rss_before[-1] <= 1.25 * rss_before[0] + 100, rss_before


def test_sigterm_saves_a_checkpoint_and_the_logs(tmp_path):
    logdir = tmp_path / "run"
    proc = _start(logdir, 1_000_000)
    deadline = time.time() + 150
    while time.time() < deadline and not _committed(logdir / "checkpoints"):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert "interrupted: saving a checkpoint" in out and "stopped:" in out
    final = _committed(logdir / "checkpoints")[-1]
    step = int(re.search(r"stopped: (\d+) env steps", out).group(1))
    assert final == step  # the checkpoint written on the way out holds every step taken


def _durable_steps(lfs_dir):
    """Steps in the LFS chunk files, read from their headers (magic, uint32 length, JSON)."""
    import struct

    total = {}
    for path in pathlib.Path(lfs_dir).glob("w*.chunk"):
        data = path.read_bytes()
        (n,) = struct.unpack("<I", data[8:12])
        header = json.loads(data[12 : 12 + n])
        w = header["worker"]
        total[w] = max(total.get(w, 0), header["start"] + header["steps"])
    return sum(total.values())


def test_sigkill_with_lfs_loses_no_durable_env_steps(tmp_path):
    """With --use_lfs the steps flushed after the last checkpoint survive a SIGKILL: the restart's step
    counter starts at least at them, and the logged steps still never go back."""
    logdir, lfs = tmp_path / "run", tmp_path / "lfs"
    flags = ("--use_lfs", "True", "--lfs_dir", str(lfs), "--run.save_every", "30")
    proc = _start(logdir, 1_000_000, *flags)
    ckpt_dir = lfs / "checkpoints"
    deadline = time.time() + 200
    while time.time() < deadline and not _committed(ckpt_dir):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    last = _committed(ckpt_dir)[-1]
    while time.time() < deadline and _durable_steps(lfs) < last + 64:  # chunks flushed after the checkpoint
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    durable = _durable_steps(lfs)
    assert _committed(ckpt_dir)[-1] == last and durable >= last + 64

    proc = _start(logdir, durable + 100, *flags)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    m = re.search(r"the env-step counter continues from ([\d,]+)", out)
    assert m and int(m.group(1).replace(",", "")) >= durable, out[-2000:]
    steps = [json.loads(line)["step"] for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert all(a < b for a, b in zip(steps, steps[1:])), steps
