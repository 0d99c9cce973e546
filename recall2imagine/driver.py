"""Steps N environments together in this process and feeds a batched policy."""

from __future__ import annotations

from typing import Callable

import numpy as np

from recall2imagine.envs.base import Env


class Driver:
    """Batched acting loop over a list of ``Env``.

    Each batched step: every env whose previous observation was ``is_last`` (or
    that has not started yet) is reset, the others step with their pending
    action; the stacked observations go to ``policy(obs, state) -> (act,
    state)``; ``on_step`` receives the observations together with the action
    chosen at them (the action at an ``is_last`` observation is never executed
    but is stored). The policy state starts as None and is carried across calls
    until ``reset_state``.
    """

    def __init__(self, envs: list[Env]):
        if not envs:
            raise ValueError('Driver needs at least one env')
        self.envs = list(envs)
        self.act_space = envs[0].act_space
        self.obs_space = envs[0].obs_space
        for env in envs[1:]:
            if env.act_space != self.act_space or env.obs_space != self.obs_space:
                raise ValueError('all envs of a Driver must have the same spaces')
        self.worker_ids = np.arange(len(self.envs))
        self.reset_state()

    def reset_policy_state(self):
        """Forget the policy state only (e.g. when the policy changes); episodes in flight go on."""
        self._state = None

    def reset_state(self):
        n = len(self.envs)
        self._state = None
        self._actions = None  # pending actions, [N, ...]
        self._needs_reset = np.ones(n, bool)  # reset instead of step
        self._score = np.zeros(n, np.float64)
        self._length = np.zeros(n, np.int64)

    def __call__(
        self,
        policy: Callable,
        steps: int = 0,
        on_step: Callable | None = None,
        on_episode: Callable | None = None,
    ) -> None:
        """Runs until at least ``steps`` env steps (summed over envs) are done."""
        done = 0
        while done < steps:
            self._step(policy, on_step, on_episode)
            done += len(self.envs)

    def _env_action(self, i: int):
        act = self._actions[i]
        if self.act_space.discrete:
            return int(np.argmax(act)) if np.ndim(act) else int(act)
        return act

    def _step(self, policy, on_step, on_episode):
        # Envs with reset_async/step_async + result (ProcessEnv) first all get their command, then
        # their results are collected, so worker processes step concurrently.
        obs_list = [None] * len(self.envs)
        for i, env in enumerate(self.envs):
            is_async = hasattr(env, 'result')
            if self._needs_reset[i]:
                if is_async:
                    env.reset_async()
                else:
                    obs_list[i] = env.reset()
            elif is_async:
                env.step_async(self._env_action(i))
            else:
                obs_list[i] = env.step(self._env_action(i))
        for i, env in enumerate(self.envs):
            if obs_list[i] is None:
                obs_list[i] = env.result()
        obs = {k: np.stack([np.asarray(o[k]) for o in obs_list]) for k in obs_list[0]}
        obs['reward'] = obs['reward'].astype(np.float32)
        for key in ('is_first', 'is_last', 'is_terminal'):
            obs[key] = obs[key].astype(bool)

        act, self._state = policy(obs, self._state)
        act = {k: np.asarray(v) for k, v in act.items() if not k.startswith('log_')}
        if 'action' not in act:
            raise KeyError("policy must return a dict with key 'action'")
        self._actions = act['action']
        if len(self._actions) != len(self.envs):
            raise ValueError(f'policy returned {len(self._actions)} actions for {len(self.envs)} envs')

        if on_step is not None:
            on_step({**obs, **act}, self.worker_ids)

        first, last = obs['is_first'], obs['is_last']
        self._score[first] = 0.0
        self._length[first] = 0
        self._score += obs['reward']
        self._length += ~first
        self._needs_reset = last.copy()
        if on_episode is not None:
            for i in np.flatnonzero(last):
                on_episode(
                    {
                        'score': float(self._score[i]),
                        'length': int(self._length[i]),
                        'worker': int(self.worker_ids[i]),
                    }
                )
