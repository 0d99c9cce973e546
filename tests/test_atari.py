"""Atari games as `atari:<game>` (the atari extra; skipped without ale-py)."""

import json

import numpy as np
import pytest

pytest.importorskip("ale_py", reason="ale-py is not installed (pip install -e .[atari])")

from recall2imagine import train  # noqa: E402
from recall2imagine.envs import make_env  # noqa: E402
from recall2imagine.envs.base import check_obs  # noqa: E402
from helpers import run_argv  # noqa: E402


def test_pong_spaces_and_frames():
    env = make_env("atari:pong", seed=0, size=(64, 64), sticky=False)
    assert env.obs_space == {"image": ((64, 64, 3), np.dtype(np.uint8))}
    assert env.act_space.discrete and env.act_space.n == 6  # the minimal action set
    obs = env.reset()
    check_obs(env, obs)
    obs = env.step(np.eye(6)[0])
    assert not obs["is_first"] and obs["image"].std() > 0


def test_unknown_game_suggests_a_name(tmp_path, capsys):
    code = train.main(
        ["--configs", "atari100k", "debug", "--task", "atari:pongg", "--logdir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unknown Atari task 'pongg'; did you mean 'pong'" in err, err


def test_pong_debug_run(tmp_path):
    logdir = tmp_path / "run"
    code = train.main(run_argv(logdir, "--configs atari100k debug --envs.size 16,16 --run.steps 200"))
    assert code == 0
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("train/image_loss") is not None for r in rows)
