"""DeepMind Control Suite (``dmc:<domain>_<task>``, e.g. ``dmc:cartpole_balance``, ``dmc:walker_walk``).

Observations: the proprioceptive arrays, flattened in the suite's order into one float32 ``vector``,
and with ``image=True`` a rendered ``image`` ([H, W, 3] uint8, camera 0; 2 for quadruped, as in
DreamerV3). Actions: continuous, normalised to [-1, 1] on the agent side and rescaled to the action
spec's bounds. Each agent step repeats the action ``repeat`` times (DreamerV3: 2) and sums the rewards.
Episodes end at the suite's time limit (1,000 physics steps, so 500 agent steps with repeat 2), a
truncation: ``is_last`` without ``is_terminal``.
"""

from __future__ import annotations

import numpy as np

from recall2imagine.envs.base import ActSpace, DmEnv


def _suite():
    from recall2imagine.envs.memory_maze import select_gl_backend

    select_gl_backend()  # MUJOCO_GL must be set before dm_control is imported
    from dm_control import suite

    return suite


def dmc_ids() -> list[str]:
    """`<domain>_<task>` of every task of the suite (its benchmarking and extra tasks)."""
    return sorted(f'{d}_{t}' for d, t in _suite().ALL_TASKS)


class DMC(DmEnv):
    """One DeepMind Control task behind the common ``Env`` interface (module docstring)."""

    def __init__(self, name: str, seed: int = 0, repeat: int = 2, image: bool = False, size=(64, 64)):
        suite = _suite()
        tasks = {f'{d}_{t}': (d, t) for d, t in suite.ALL_TASKS}
        domain, task = tasks[name]
        self.name, self.repeat, self._image, self._size = name, int(repeat), bool(image), tuple(size)
        self._camera = 2 if domain == 'quadruped' else 0
        self._env = suite.load(domain, task, task_kwargs={'random': seed})
        spec = self._env.action_spec()
        self._low = np.asarray(spec.minimum, np.float32).ravel()
        self._high = np.asarray(spec.maximum, np.float32).ravel()
        n = int(np.prod(spec.shape))
        self.act_space = ActSpace(False, n, (-1.0,) * n, (1.0,) * n)
        size = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.obs_space = {'vector': ((size,), np.dtype(np.float32))}
        if self._image:
            self.obs_space['image'] = (self._size + (3,), np.dtype(np.uint8))
        self._done = True

    def _obs(self, observation) -> dict:
        out = {'vector': np.concatenate([np.asarray(v, np.float32).ravel() for v in observation.values()])}
        if self._image:
            out['image'] = self._env.physics.render(*self._size, camera_id=self._camera)
        return out

    def _env_action(self, action):
        return self._continuous_action(action, self._low, self._high)
