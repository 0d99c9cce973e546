"""What a resumed run reproduces: with the same seed, a run stopped at step M and resumed to N matches
an uninterrupted run to N exactly up to M (same losses, same replayed steps), and not after: on
resume the envs are created and reset again, so the episodes in flight restart from their seeds
(env state, the policy's latent state and the driver's pending actions are not checkpointed)."""

import json

import numpy as np
import pytest

from recall2imagine import train

M, N = 96, 160  # env steps: checkpoint, end (debug: 2 envs, prefill 64, 32 steps per driver call)


def _run(logdir, steps):
    argv = [
        "--configs",
        "popgym",
        "debug",
        "--task",
        "gym_popgym:popgym-RepeatPreviousEasy-v0",
        "--logdir",
        str(logdir),
        "--run.steps",
        str(steps),
        "--run.eval_eps",
        "0",
        "--seed",
        "3",
    ]
    assert train.main(argv) == 0


def _losses(logdir):
    rows = [json.loads(line) for line in open(logdir / "metrics.jsonl")]
    return {r["step"]: r["train/model_loss"] for r in rows if r.get("train/model_loss") is not None}


def _replay(logdir):
    ckpt = sorted((logdir / "checkpoints").glob("ckpt-*"))[-1]
    with np.load(ckpt / "replay.npz") as f:
        header = json.loads(str(f["header"]))
        return {k: f[f"data{i}"] for i, k in enumerate(header["keys"])}, f["counts"]


@pytest.mark.slow  # three short training runs: about 2.5 min on 2 shared cores
def test_resume_matches_an_uninterrupted_run_up_to_the_checkpoint(tmp_path, capsys):
    _run(tmp_path / "A", N)  # uninterrupted
    _run(tmp_path / "B", M)  # stopped at M (checkpoint at the end) ...
    _run(tmp_path / "B", N)  # ... and resumed to N
    assert "resumed from" in capsys.readouterr().out
    a, b = _losses(tmp_path / "A"), _losses(tmp_path / "B")
    before = [s for s in a if s <= M]
    assert before and all(a[s] == b[s] for s in before)  # bitwise: same params up to M
    assert any(a[s] != b[s] for s in a if s > M)  # then the runs diverge
    (ra, ca), (rb, cb) = _replay(tmp_path / "A"), _replay(tmp_path / "B")
    assert ca.tolist() == cb.tolist() == [N // 2, N // 2]
    k = M // 2  # per-worker index of the first step after the checkpoint
    for key in ra:
        np.testing.assert_array_equal(ra[key][:, :k], rb[key][:, :k], err_msg=key)
    # The resumed run's envs start new episodes at the checkpoint; the uninterrupted ones went on.
    assert rb["is_first"][:, k].all() and not ra["is_first"][:, k].any()
    assert any(not np.array_equal(ra[key][:, k:], rb[key][:, k:]) for key in ("vector", "action"))
