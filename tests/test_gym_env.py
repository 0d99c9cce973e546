"""Any Gymnasium environment as `gym:<id>`: observation routing, actions, episode flags, training."""

import numpy as np
import pytest

from recall2imagine import train
from recall2imagine.envs import make_env
from recall2imagine.envs.base import check_obs


def test_cartpole_is_a_vector_env_with_discrete_actions():
    env = make_env("gym:CartPole-v1", seed=0)
    assert env.obs_space == {"vector": ((4,), np.dtype(np.float32))}
    assert env.act_space.discrete and env.act_space.n == 2
    obs = env.reset()
    check_obs(env, obs)
    assert obs["is_first"] and not obs["is_last"]
    for _ in range(600):  # a constant push ends the episode by termination, not the time limit
        obs = env.step(np.eye(2)[1])
        if obs["is_last"]:
            break
    assert obs["is_last"] and obs["is_terminal"]


def test_truncation_is_not_terminal():
    env = make_env("gym:R2ITarget-v0", seed=1, imports=["custom_gym_env"])
    env.reset()
    for _ in range(20):
        obs = env.step(np.zeros(1))
    assert obs["is_last"] and not obs["is_terminal"]


def test_user_env_images_are_resized_and_the_rest_is_a_vector():
    env = make_env("gym:R2ITarget-v0", seed=0, imports=["custom_gym_env"], size=(16, 16))
    assert env.obs_space == {
        "image": ((16, 16, 3), np.dtype(np.uint8)),
        "vector": ((2,), np.dtype(np.float32)),
    }
    assert not env.act_space.discrete and env.act_space.n == 1 and env.act_space.low == (-1.0,)
    obs = env.reset()
    check_obs(env, obs)
    assert obs["image"].shape == (16, 16, 3) and obs["image"].dtype == np.uint8


def test_box_actions_are_rescaled_to_the_envs_bounds():
    env = make_env("gym:R2ITarget-v0", seed=0, imports=["custom_gym_env"])
    env.reset()
    assert np.allclose(env._convert_action(np.array([1.0])), [2.0])
    assert np.allclose(env._convert_action(np.array([-0.5])), [-1.0])
    assert np.allclose(env._convert_action(np.array([7.0])), [2.0])  # clipped to [-1, 1] first


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--task", "gym:CartPol-v1"], "unknown Gymnasium task 'CartPol-v1'; did you mean 'CartPole-v1'"),
        (
            ["--task", "gym:R2ITarget-v0", "--envs.import", "no_such_module_r2i"],
            "--envs.import no_such_module_r2i",
        ),
    ],
)
def test_bad_gym_task_is_one_line(argv, needle, tmp_path, capsys):
    code = train.main(["--configs", "debug", "--logdir", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_user_registered_image_env_trains_through_the_cnn_and_the_continuous_actor(tmp_path, capsys):
    logdir = tmp_path / "run"
    code = train.main(
        [
            "--configs",
            "debug",
            "--task",
            "gym:R2ITarget-v0",
            "--envs.import",
            "custom_gym_env",
            "--envs.size",
            "16,16",
            "--logdir",
            str(logdir),
            "--run.steps",
            "240",
            "--run.eval_eps",
            "1",
            "--run.eval_every",
            "200",
            "--run.report_every",
            "0",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    import json

    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if r.get("train/image_loss") is not None]
    assert losses and all(
        np.isfinite(r["train/image_loss"]) and np.isfinite(r["train/vector_loss"]) for r in losses
    )
    assert any("eval/score" in r for r in rows)
