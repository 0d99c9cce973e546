"""POPGym adapter (gymnasium API, popgym 1.0.x).

Observations: Discrete, MultiDiscrete and Tuple/Dict-of-Discrete parts become
concatenated float32 one-hots; Box (and MultiBinary) parts are passed through
as float32 values. Everything is concatenated, in space order, into one vector
under key ``vector``.

Actions: Discrete stays Discrete; MultiDiscrete(n_1..n_k) becomes one Discrete
of size prod(n_i), decoded mixed radix with the last component fastest; Box
actions are continuous, normalised to [-1, 1] on the agent side.

``terminated or truncated`` ends the episode and counts as terminal (R2I
treats the time limit as terminal, spec 12.11).
"""

from __future__ import annotations

import numpy as np

from recall2imagine.envs.base import ActSpace, Env


def popgym_ids() -> list[str]:
    """All registered POPGym ids (``popgym-<Name><Easy|Medium|Hard>-v0``)."""
    import gymnasium
    import popgym  # noqa: F401  (registers the ids)

    return sorted(k for k in gymnasium.registry if k.startswith('popgym-'))


def popgym_horizon(env_id: str) -> tuple[int, str] | None:
    """(steps, what) of the longest dependency of a POPGym task: RepeatPrevious acts on the card
    ``k`` steps back; every other POPGym task is a memory task over its whole (bounded) episode."""
    import gymnasium
    import popgym  # noqa: F401

    env = gymnasium.make(env_id, disable_env_checker=True).unwrapped
    if hasattr(env, 'k'):
        return int(env.k), f'repeats the card {int(env.k)} steps back'
    for attr in ('max_episode_length', 'episode_length', 'deck_size'):
        if hasattr(env, attr):
            n = int(getattr(env, attr))
            return n, f'recalls over its whole {n}-step episode'
    return None


class _Flattener:
    """Maps a (nested) gymnasium observation to one float32 vector."""

    def __init__(self, space):
        from gymnasium import spaces

        self._spaces = spaces
        self.space = space
        self.size = self._size(space)

    def _size(self, space) -> int:
        s = self._spaces
        if isinstance(space, s.Discrete):
            return int(space.n)
        if isinstance(space, s.MultiDiscrete):
            return int(np.sum(space.nvec))
        if isinstance(space, (s.Box, s.MultiBinary)):
            return int(np.prod(space.shape))
        if isinstance(space, s.Tuple):
            return sum(self._size(sub) for sub in space.spaces)
        if isinstance(space, s.Dict):
            return sum(self._size(sub) for sub in space.spaces.values())
        raise NotImplementedError(f'unsupported POPGym observation space {space}')

    def __call__(self, obs) -> np.ndarray:
        out = np.zeros(self.size, np.float32)
        end = self._fill(self.space, obs, out, 0)
        assert end == self.size
        return out

    def _fill(self, space, obs, out, offset) -> int:
        s = self._spaces
        if isinstance(space, s.Discrete):
            idx = int(obs) - int(space.start)
            if not 0 <= idx < space.n:
                raise ValueError(f'observation {obs} outside {space}')
            out[offset + idx] = 1.0
            return offset + int(space.n)
        if isinstance(space, s.MultiDiscrete):
            nvec = np.asarray(space.nvec).ravel()
            vals = np.asarray(obs).ravel() - np.asarray(space.start).ravel()
            if np.any(vals < 0) or np.any(vals >= nvec):
                raise ValueError(f'observation {obs} outside {space}')
            starts = offset + np.concatenate([[0], np.cumsum(nvec)[:-1]])
            out[starts + vals] = 1.0
            return offset + int(nvec.sum())
        if isinstance(space, (s.Box, s.MultiBinary)):
            n = int(np.prod(space.shape))
            out[offset : offset + n] = np.asarray(obs, np.float32).ravel()
            return offset + n
        if isinstance(space, s.Tuple):
            for sub, value in zip(space.spaces, obs):
                offset = self._fill(sub, value, out, offset)
            return offset
        if isinstance(space, s.Dict):
            for key, sub in space.spaces.items():
                offset = self._fill(sub, obs[key], out, offset)
            return offset
        raise NotImplementedError(space)


def unflatten_multidiscrete(index: int, nvec) -> np.ndarray:
    """Mixed-radix decoding of a flat action; the last component is fastest."""
    return np.array(np.unravel_index(int(index), tuple(int(n) for n in nvec)), np.int64)


def flatten_multidiscrete(components, nvec) -> int:
    """Inverse of ``unflatten_multidiscrete``."""
    return int(np.ravel_multi_index(tuple(int(c) for c in components), tuple(int(n) for n in nvec)))


class PopGym(Env):
    """One POPGym environment behind the common ``Env`` interface."""

    def __init__(self, env_id: str, seed: int = 0):
        import gymnasium
        from gymnasium import spaces
        import popgym  # noqa: F401

        self.env_id = env_id
        # The passive checker only emits warnings about POPGym's shared info dicts.
        self._env = gymnasium.make(env_id, disable_env_checker=True)
        self._seed = seed
        self._seeded = False
        self._done = True
        self._flat = _Flattener(self._env.observation_space)
        self.obs_space = {'vector': ((self._flat.size,), np.dtype(np.float32))}

        space = self._env.action_space
        self._act_kind = None
        if isinstance(space, spaces.Discrete):
            self._act_kind = 'discrete'
            self._act_start = int(space.start)
            self.act_space = ActSpace(True, int(space.n))
        elif isinstance(space, spaces.MultiDiscrete):
            self._act_kind = 'multidiscrete'
            self._nvec = np.asarray(space.nvec).ravel()
            self._act_start = np.asarray(space.start).ravel()
            self._act_shape = space.shape
            self.act_space = ActSpace(True, int(np.prod(self._nvec)))
        elif isinstance(space, spaces.Box):
            self._act_kind = 'box'
            self._act_shape = space.shape
            self._low = np.asarray(space.low, np.float32).ravel()
            self._high = np.asarray(space.high, np.float32).ravel()
            if not (np.all(np.isfinite(self._low)) and np.all(np.isfinite(self._high))):
                raise NotImplementedError(f'{env_id}: unbounded Box action space')
            n = int(np.prod(space.shape))
            self.act_space = ActSpace(False, n, (-1.0,) * n, (1.0,) * n)
        else:
            raise NotImplementedError(f'{env_id}: unsupported action space {space}')

    def _convert_action(self, action):
        if self._act_kind == 'discrete':
            return self._discrete_action(action) + self._act_start
        if self._act_kind == 'multidiscrete':
            idx = self._discrete_action(action)
            comp = unflatten_multidiscrete(idx, self._nvec) + self._act_start
            return comp.reshape(self._act_shape)
        a = self._continuous_action(action, self._low, self._high)
        return a.reshape(self._act_shape)

    def reset(self):
        if not self._seeded:
            obs, _ = self._env.reset(seed=self._seed)
            self._seeded = True
        else:
            obs, _ = self._env.reset()
        self._done = False
        return self._pack({'vector': self._flat(obs)}, 0.0, True, False, False)

    def step(self, action):
        if self._done:
            raise RuntimeError('episode is over: call reset() before step()')
        obs, reward, terminated, truncated, _ = self._env.step(self._convert_action(action))
        done = bool(terminated or truncated)
        self._done = done
        return self._pack({'vector': self._flat(obs)}, float(reward), False, done, done)

    def close(self):
        self._env.close()
