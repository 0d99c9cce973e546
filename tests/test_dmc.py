"""DeepMind Control tasks as `dmc:<domain>_<task>`: spaces, action repeat, truncation, a short run."""

import json

import numpy as np
import pytest

from recall2imagine import config as configlib
from recall2imagine import train
from recall2imagine.envs import env_options, make_env
from recall2imagine.envs import memory_maze as mm
from recall2imagine.envs.base import check_obs
from helpers import run_argv

pytestmark = pytest.mark.skipif(
    not mm.available(), reason="dm-control / mujoco not installed (the mmaze extra)"
)


def test_cartpole_balance_proprio_spaces_and_truncation():
    env = make_env("dmc:cartpole_balance", seed=0)
    assert env.obs_space == {"vector": ((5,), np.dtype(np.float32))}
    assert not env.act_space.discrete and env.act_space.n == 1
    obs, steps = env.reset(), 0
    check_obs(env, obs)
    while not obs["is_last"]:
        obs = env.step(np.zeros(1))
        steps += 1
    assert steps == 500 and not obs["is_terminal"]  # 1,000 physics steps at action repeat 2, a time limit


def test_images_only_when_the_encoder_reads_them():
    proprio = configlib.parse(["--configs", "dmc_proprio", "--task", "dmc:cartpole_balance"])
    vision = configlib.parse(
        ["--configs", "dmc_vision", "--task", "dmc:cartpole_balance", "--envs.size", "32,32"]
    )
    assert env_options(proprio)["image"] is False and env_options(vision)["image"] is True
    env = make_env("dmc:cartpole_balance", seed=0, **env_options(vision))
    obs = env.reset()
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8 and obs["image"].std() > 0


def test_unknown_dmc_task_is_one_line(tmp_path, capsys):
    code = train.main(
        [
            "--configs",
            "dmc_proprio",
            "debug",
            "--task",
            "dmc:cartpole_balanse",
            "--logdir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "unknown DeepMind Control task 'cartpole_balanse'" in err and "cartpole_balance" in err
    ), err


def test_dmc_cartpole_balance_trains_through_the_continuous_actor(tmp_path):
    logdir = tmp_path / "run"
    code = train.main(
        run_argv(logdir, "--configs dmc_proprio debug --task dmc:cartpole_balance --run.steps 300")
    )
    assert code == 0
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    actor = [r["train/actor_loss"] for r in rows if r.get("train/actor_loss") is not None]
    assert actor and np.all(np.isfinite(actor))
