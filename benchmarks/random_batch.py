"""A seeded random replay batch [B, T] for the update benchmarks (`train_step.py`, `update_trace.py`).

numpy only, no `recall2imagine` import: `update_trace.py --code` runs it beside another checkout's package.
"""

import numpy as np


def vector_obs(rng, obs, B, T):
    """{key: normal float32 [B, T, ...]} for each observation key of `obs` (one env step's dict) but the
    flags, `log_*` keys and the reward."""
    return {
        k: rng.normal(size=(B, T) + np.shape(v)).astype(np.float32)
        for k, v in obs.items()
        if not k.startswith(("is_", "log_")) and k != "reward"
    }


def rewards_flags_actions(rng, B, T, A):
    """reward (normal), is_first and is_terminal (each step with probability 0.01), is_last (never) and
    one-hot actions of A choices, all [B, T, ...]; drawn after the observations, in this order."""
    return dict(
        reward=rng.normal(size=(B, T)).astype(np.float32),
        is_first=rng.random((B, T)) < 0.01,
        is_last=np.zeros((B, T), bool),
        is_terminal=rng.random((B, T)) < 0.01,
        action=np.eye(A, dtype=np.float32)[rng.integers(0, A, (B, T))],
    )
