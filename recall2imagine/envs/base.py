"""Common environment interface: one (non-vectorised) environment, numpy in/out.

Every observation dict returned by ``reset``/``step`` holds the keys of
``obs_space`` plus ``reward`` (float32), ``is_first``, ``is_last`` and
``is_terminal`` (bool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FLAG_KEYS = ('reward', 'is_first', 'is_last', 'is_terminal')


@dataclass(frozen=True)
class ActSpace:
    """Action space seen by the agent.

    discrete: True for a categorical action; the agent sends one-hot vectors of
      size ``n`` (the driver converts them to ints) or the int itself.
    n: number of discrete actions, or dimension of a continuous action.
    low/high: per-dimension bounds of a continuous action (None if discrete).
      Adapters expose normalised bounds [-1, 1] and rescale to the env's own.
    """

    discrete: bool
    n: int
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @property
    def shape(self) -> tuple[int]:
        """Shape of the agent-side action vector (one-hot or continuous)."""
        return (self.n,)


class Env:
    """Base class of all environment adapters."""

    obs_space: dict[str, tuple[tuple[int, ...], np.dtype]]
    act_space: ActSpace

    def reset(self) -> dict[str, Any]:
        raise NotImplementedError

    def step(self, action) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # Helpers for subclasses.

    @staticmethod
    def _pack(
        obs: dict[str, np.ndarray], reward: float, is_first: bool, is_last: bool, is_terminal: bool
    ) -> dict[str, Any]:
        out = dict(obs)
        out['reward'] = np.float32(reward)
        out['is_first'] = bool(is_first)
        out['is_last'] = bool(is_last)
        out['is_terminal'] = bool(is_terminal)
        return out

    def _discrete_action(self, action) -> int:
        """Accepts an int (numpy integer ok) or a one-hot/logit vector."""
        a = np.asarray(action)
        if a.ndim == 0:
            if not np.issubdtype(a.dtype, np.integer):
                if float(a) != int(a):
                    raise ValueError(f'discrete action must be an integer, got {action!r}')
            idx = int(a)
        elif a.shape == (self.act_space.n,):
            idx = int(np.argmax(a))
        else:
            raise ValueError(
                f'discrete action must be an int or a vector of size {self.act_space.n}, got shape {a.shape}'
            )
        if not 0 <= idx < self.act_space.n:
            raise ValueError(f'action {idx} out of range [0, {self.act_space.n})')
        return idx

    def _continuous_action(self, action, env_low: np.ndarray, env_high: np.ndarray) -> np.ndarray:
        """Clips a normalised action in [-1, 1] and rescales it to env bounds."""
        a = np.asarray(action, np.float32).reshape(self.act_space.n)
        a = np.clip(a, -1.0, 1.0)
        return (env_low + (a + 1.0) * 0.5 * (env_high - env_low)).astype(np.float32)


class DmEnv(Env):
    """An Env over a dm_env environment ``self._env``. Subclasses convert observations with ``_obs``
    and actions with ``_env_action`` (default: one discrete action spec, offset ``self._act_min``).
    Each agent step repeats the action ``repeat`` times and sums the rewards. An episode ends at the
    dm_env LAST step: terminal when its discount is 0, else a truncation (e.g. a time limit)."""

    _done = True
    repeat = 1

    def _obs(self, observation) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _env_action(self, action):
        return self._discrete_action(action) + self._act_min

    def reset(self):
        ts = self._env.reset()
        self._done = False
        return self._pack(self._obs(ts.observation), 0.0, True, False, False)

    def step(self, action):
        if self._done:
            raise RuntimeError('episode is over: call reset() before step()')
        action, reward = self._env_action(action), 0.0
        for _ in range(self.repeat):
            ts = self._env.step(action)
            reward += 0.0 if ts.reward is None else float(ts.reward)
            if ts.last():
                break
        last = bool(ts.last())
        self._done = last
        terminal = last and ts.discount is not None and float(ts.discount) == 0.0
        return self._pack(self._obs(ts.observation), reward, False, last, terminal)


class TimeLimit(Env):
    """Ends an episode after `length` steps as a truncation (is_last, not is_terminal)."""

    def __init__(self, env: Env, length: int):
        if length < 1:
            raise ValueError(f'time limit must be >= 1 step, got {length}')
        self.env, self.length = env, length
        self.obs_space, self.act_space = env.obs_space, env.act_space
        self._steps = 0

    def reset(self):
        self._steps = 0
        return self.env.reset()

    def step(self, action):
        obs = self.env.step(action)
        self._steps += 1
        if self._steps >= self.length and not obs['is_last']:
            obs = dict(obs, is_last=True, is_terminal=False)
        return obs

    def close(self):
        self.env.close()


def check_obs(env: Env, obs: dict[str, Any]) -> None:
    """Raises AssertionError if ``obs`` does not match ``env.obs_space``."""
    for key, (shape, dtype) in env.obs_space.items():
        value = np.asarray(obs[key])
        assert value.shape == tuple(shape), (key, value.shape, shape)
        assert value.dtype == np.dtype(dtype), (key, value.dtype, dtype)
    for key in FLAG_KEYS:
        assert key in obs, key
    assert set(obs) == set(env.obs_space) | set(FLAG_KEYS), sorted(obs)
