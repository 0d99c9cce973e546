"""Shared builders for the agent tests."""

import jax
import numpy as np

from recall2imagine import config as configlib
from recall2imagine.agent import Agent
from recall2imagine.envs import make_env


def debug_agent(*overrides):
    """(cfg, env, agent) for `--configs popgym debug` plus overrides."""
    cfg = configlib.parse(["--configs", "popgym", "debug", *overrides])
    env = make_env(cfg.task, seed=0)
    return cfg, env, Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(0))


def random_batch(cfg, env, act_dim, seed=0, resets=True, terminal_rate=0.1):
    """A replay-like batch [B, T] of random one-hot observations, rewards, actions and flags."""
    rng = np.random.default_rng(seed)
    B, T = cfg.batch_size, cfg.batch_length
    batch = {
        "vector": rng.integers(0, 2, (B, T) + env.obs_space["vector"][0]).astype(np.float32),
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": np.zeros((B, T), bool),
        "is_last": np.zeros((B, T), bool),
        "is_terminal": rng.random((B, T)) < terminal_rate,
        "action": np.eye(act_dim, dtype=np.float32)[rng.integers(0, act_dim, (B, T))],
    }
    batch["is_first"][:, 0] = True
    if resets:
        batch["is_first"][0, T // 3] = batch["is_first"][-1, T // 2] = True
    return batch


def run_argv(logdir, flags):
    """`train.main` arguments: `flags` (one string, split at spaces) of a run without evaluation
    episodes or reports, writing to `logdir`."""
    return [*flags.split(), "--run.eval_eps", "0", "--run.report_every", "0", "--logdir", str(logdir)]
