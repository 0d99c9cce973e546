"""r2i-eval, load_agent and --run.from_checkpoint on a finished debug run."""

import json

import jax
import numpy as np
import pytest

from recall2imagine import config as configlib
from recall2imagine import evaluate, load_agent, train
from helpers import run_argv


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("src") / "run"
    code = train.main(run_argv(logdir, "--configs popgym debug --run.steps 200"))
    assert code == 0
    return logdir


def test_r2i_eval_prints_returns_and_writes_eval_jsonl(run_dir, capsys):
    assert evaluate.main([str(run_dir), "--episodes", "3", "--sample"]) == 0
    out = capsys.readouterr().out
    assert "at step 200, sample: return" in out and "over 3 episodes" in out, out
    row = json.loads((run_dir / "eval.jsonl").read_text().splitlines()[-1])
    assert (
        row["step"] == 200 and row["episodes"] == 3 and len(row["returns"]) == 3 and row["mode"] == "sample"
    )
    assert np.isclose(row["mean"], np.mean(row["returns"]))


def test_r2i_eval_without_a_run_is_one_line(tmp_path, capsys):
    assert evaluate.main([str(tmp_path), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no config.yaml" in err and err.count("\n") == 1


def test_load_agent_is_a_policy_that_carries_its_state(run_dir):
    policy = load_agent(run_dir)
    env = policy.make_env(seed=3)
    obs, steps = env.reset(), 0
    while not obs["is_last"]:
        action = policy(obs)
        assert action.shape == (env.act_space.n,) and action.sum() == 1.0  # one-hot
        obs = env.step(action)
        steps += 1
    assert steps > 0 and policy._state is not None
    policy.reset()
    assert policy._state is None


def test_from_checkpoint_starts_from_the_source_runs_weights(run_dir, tmp_path, capsys):
    from recall2imagine.trainer import Trainer

    source = load_agent(run_dir).agent.state
    cfg = configlib.parse(
        [
            "--configs",
            "popgym",
            "debug",
            "--logdir",
            str(tmp_path / "new"),
            "--run.eval_eps",
            "0",
            "--run.from_checkpoint",
            str(run_dir),
        ]
    )
    trainer = Trainer(cfg, "cpu")
    try:
        assert trainer.counters["step"] == 0 and len(trainer.replay) == 0
        new = trainer.agent.state
        for a, b in zip(jax.tree.leaves(source), jax.tree.leaves(new)):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        assert "starting from the agent of" in capsys.readouterr().out
    finally:
        trainer.no_save = True
        trainer.close()


def test_from_checkpoint_that_does_not_fit_is_one_line(run_dir, tmp_path, capsys):
    code = train.main(
        [
            "--configs",
            "popgym",
            "debug",
            "--logdir",
            str(tmp_path / "new"),
            "--rssm.deter",
            "48",
            "--run.from_checkpoint",
            str(run_dir),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "does not fit the current model" in err and err.count("\n") == 1, err
