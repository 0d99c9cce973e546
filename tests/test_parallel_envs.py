"""ProcessEnv: same results as the in-process env, restart after a killed worker, clean close."""

import os
import signal

import numpy as np
import pytest

from recall2imagine.driver import Driver
from recall2imagine.envs import make_env
from recall2imagine.envs.base import check_obs
from recall2imagine.envs.parallel import ProcessEnv

TASK = 'gym_popgym:popgym-RepeatPreviousEasy-v0'


def _rollout(env, actions):
    out = [env.reset()]
    for a in actions:
        obs = env.step(a)
        out.append(obs)
        if obs['is_last']:
            out.append(env.reset())
    return out


def test_process_env_matches_in_process_env():
    actions = np.random.default_rng(0).integers(0, 4, 120)  # > 2 episodes of 51 steps
    local = make_env(TASK, seed=5)
    with ProcessEnv(TASK, seed=5) as remote:
        assert remote.obs_space == local.obs_space and remote.act_space == local.act_space
        got = _rollout(remote, actions)
    want = _rollout(local, actions)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        check_obs(local, g)
        assert set(g) == set(w)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def test_driver_steps_process_envs_concurrently():
    envs = [ProcessEnv(TASK, seed=i) for i in range(2)]
    ref = [make_env(TASK, seed=i) for i in range(2)]
    try:
        rng = np.random.default_rng(1)
        acts = [np.eye(4, dtype=np.float32)[rng.integers(0, 4, 2)] for _ in range(60)]

        def record(drv):
            seen, it = [], iter(acts)

            def policy(obs, state):
                seen.append({k: v.copy() for k, v in obs.items()})
                return {'action': next(it)}, state

            drv(policy, steps=2 * len(acts))
            return seen

        got, want = record(Driver(envs)), record(Driver(ref))
        for g, w in zip(got, want):
            for k in w:
                np.testing.assert_array_equal(g[k], w[k], err_msg=k)
    finally:
        for env in envs:
            env.close()


def test_killed_worker_is_restarted(capfd):
    with ProcessEnv(TASK, seed=0) as env:
        first = env.reset()
        mid = env.step(0)
        assert first['is_first'] and not mid['is_last']
        os.kill(env._proc.pid, signal.SIGKILL)
        env._proc.join(10)
        ended = env.step(1)
        assert ended['is_last'] and not ended['is_terminal'] and not ended['is_first']
        assert ended['reward'] == 0.0
        check_obs(env, ended)
        fresh = env.reset()
        assert fresh['is_first'] and not fresh['is_last']
        steps = 0
        while not env.step(steps % 4)['is_last']:
            steps += 1
        assert steps > 10  # a whole new episode ran in the new worker
        assert env.restarts == 1
    err = capfd.readouterr().err
    assert err.count('warning: env worker') == 1


def test_worker_killed_between_episodes_resets_in_new_worker(capfd):
    with ProcessEnv(TASK, seed=0) as env:
        env.reset()
        os.kill(env._proc.pid, signal.SIGKILL)
        env._proc.join(10)
        obs = env.reset()
        assert obs['is_first']
        assert not env.step(0)['is_first']
    assert 'restarting' in capfd.readouterr().err


def test_close_terminates_worker():
    env = ProcessEnv(TASK, seed=0)
    proc = env._proc
    env.reset()
    env.close()
    assert not proc.is_alive()
    env.close()  # idempotent
    with pytest.raises(RuntimeError, match='closed'):
        env.reset()


def test_env_error_in_worker_is_reported():
    with pytest.raises(Exception, match='unknown POPGym task'):
        ProcessEnv('gym_popgym:popgym-NoSuchEnv-v0', seed=0)
