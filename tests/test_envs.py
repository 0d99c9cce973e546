import os

import numpy as np
import pytest

from recall2imagine.envs import list_tasks, make_env, parse_task
from recall2imagine.envs.base import check_obs
from recall2imagine.envs.popgym import flatten_multidiscrete, unflatten_multidiscrete

POPGYM = list_tasks('popgym')


def _random_action(env, rng):
    space = env.act_space
    if space.discrete:
        return int(rng.integers(space.n))
    return rng.uniform(-1, 1, space.n).astype(np.float32)


def _onehot_layout(env_id):
    """Expected one-hot block sizes (None for a Box part) of a POPGym obs."""
    import gymnasium
    from gymnasium import spaces

    space = gymnasium.make(env_id, disable_env_checker=True).observation_space
    parts = space.spaces if isinstance(space, spaces.Tuple) else (space,)
    blocks = []
    for p in parts:
        if isinstance(p, spaces.Discrete):
            blocks.append(int(p.n))
        elif isinstance(p, spaces.MultiDiscrete):
            blocks += [int(n) for n in np.ravel(p.nvec)]
        elif isinstance(p, spaces.Box):
            blocks += [None] * int(np.prod(p.shape))
        else:
            raise AssertionError(p)
    return blocks


def test_popgym_count():
    assert len(POPGYM) == 42
    assert parse_task(POPGYM[0])[0] == 'popgym'


@pytest.mark.parametrize('task', POPGYM)
def test_popgym_all_envs(task):
    env = make_env(task, seed=1)
    blocks = _onehot_layout(parse_task(task)[1])
    rng = np.random.default_rng(0)
    obs = env.reset()
    check_obs(env, obs)
    assert obs['is_first'] and not obs['is_last'] and obs['reward'] == 0
    for t in range(30):
        if t:
            if obs['is_last']:
                obs = env.reset()
                assert obs['is_first']
            else:
                obs = env.step(_random_action(env, rng))
                assert not obs['is_first']
                assert obs['is_last'] == obs['is_terminal']
        check_obs(env, obs)
        vec, i = obs['vector'], 0
        for size in blocks:
            if size is None:
                assert np.isfinite(vec[i])
                i += 1
            else:
                chunk = vec[i : i + size]
                assert chunk.sum() == 1 and set(np.unique(chunk)) <= {0.0, 1.0}
                i += size
        assert i == len(vec)
    env.close()


def test_popgym_seeded_reproducible():
    task = 'gym_popgym:popgym-ConcentrationEasy-v0'
    a, b = make_env(task, 3), make_env(task, 3)
    oa, ob = a.reset(), b.reset()
    for t in range(20):
        oa, ob = a.step(t % 52), b.step(t % 52)
    assert np.array_equal(oa['vector'], ob['vector'])
    assert oa['reward'] == ob['reward']


def _slow_unflatten(index, nvec):
    comps = []
    for n in reversed(list(nvec)):  # last component fastest
        comps.append(index % n)
        index //= n
    return list(reversed(comps))


def test_multidiscrete_roundtrip():
    for nvec in [(8, 8), (3, 5, 2), (12, 12), (7,)]:
        for idx in range(int(np.prod(nvec))):
            comps = unflatten_multidiscrete(idx, nvec)
            assert list(comps) == _slow_unflatten(idx, nvec)
            assert flatten_multidiscrete(comps, nvec) == idx


def test_multidiscrete_action_reaches_env():
    env = make_env('gym_popgym:popgym-BattleshipEasy-v0', seed=0)
    assert env.act_space.discrete and env.act_space.n == 64
    env.reset()
    sent = []
    inner_step = env._env.step
    env._env.step = lambda a: (sent.append(np.array(a)), inner_step(a))[1]
    env.step(np.int64(8 * 3 + 5))
    onehot = np.zeros(64, np.float32)
    onehot[8 * 6 + 1] = 1
    env.step(onehot)
    assert sent[0].tolist() == [3, 5] and sent[1].tolist() == [6, 1]


def test_popgym_continuous_action():
    env = make_env('gym_popgym:popgym-PositionOnlyPendulumEasy-v0', seed=0)
    space = env.act_space
    assert not space.discrete and space.n == 1
    assert space.low == (-1.0,) and space.high == (1.0,)
    env.reset()
    sent = []
    inner_step = env._env.step
    env._env.step = lambda a: (sent.append(np.array(a)), inner_step(a))[1]
    env.step(np.array([1.0]))
    env.step(np.array([-5.0]))  # clipped
    env.step(np.array([0.25]))
    np.testing.assert_allclose(np.ravel(sent), [2.0, -2.0, 0.5])


def test_repeat_previous_random_return():
    env = make_env('gym_popgym:popgym-RepeatPreviousEasy-v0', seed=0)
    rng = np.random.default_rng(0)
    returns = []
    for _ in range(40):
        obs, ret, length = env.reset(), 0.0, 0
        while not obs['is_last']:
            obs = env.step(int(rng.integers(4)))
            ret += float(obs['reward'])
            length += 1
        assert obs['is_terminal'] and length == 51
        returns.append(ret)
    assert -0.6 < np.mean(returns) < -0.38, np.mean(returns)


@pytest.mark.parametrize(
    'task,length,n_act',
    [
        ('bsuite:memory_len/0', 2, 2),
        ('dm_bsuite_memory_len/5', 7, 2),
        ('bsuite:discounting_chain/0', 100, 5),
    ],
)
def test_bsuite_episodes(task, length, n_act):
    env = make_env(task, seed=0)
    assert env.act_space.discrete and env.act_space.n == n_act
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(3):
        obs = env.reset()
        check_obs(env, obs)
        assert obs['is_first'] and obs['reward'] == 0
        steps, total = 0, 0.0
        while not obs['is_last']:
            obs = env.step(int(rng.integers(n_act)))
            check_obs(env, obs)
            assert not obs['is_first']
            steps += 1
            total += float(obs['reward'])
            if not obs['is_last']:
                assert not obs['is_terminal']
        assert obs['is_terminal'] and steps == length
        rewards.append(float(obs['reward']))
    if 'memory_len' in task:
        assert all(r in (-1.0, 1.0) for r in rewards)  # reward at the last step
    env.close()


def test_bsuite_csv_logging(tmp_path):
    env = make_env('bsuite:memory_len/0', seed=0, bsuite_logdir=str(tmp_path))
    for _ in range(3):
        obs = env.reset()
        while not obs['is_last']:
            obs = env.step(0)
    env.close()
    files = os.listdir(tmp_path)
    assert files == ['bsuite_id_-_memory_len-0.csv'], files
    from bsuite.logging import csv_load

    df, _ = csv_load.load_bsuite(str(tmp_path))
    assert df['episode'].max() >= 2


def test_none_kwargs_ignored():
    env = make_env('gym_popgym:popgym-RepeatPreviousEasy-v0', 0, bsuite_logdir=None)
    assert env.obs_space['vector'][0] == (4,)


@pytest.mark.parametrize(
    'task,needle',
    [
        ('gym_popgym:popgym-RepeatPrevEasy-v0', "did you mean 'popgym-RepeatPreviousEasy-v0'"),
        ('bsuite:memroy_len/3', "did you mean 'memory_len/3'"),
        ('bsuite:memory_len/99', 'memory_len/0 .. memory_len/22'),
        ('atari_pong', 'gym_popgym:<popgym id>'),
    ],
)
def test_unknown_task_messages(task, needle):
    with pytest.raises(ValueError) as info:
        make_env(task, 0)
    msg = str(info.value)
    assert needle in msg and '\n' not in msg
    if 'did you mean' in needle:
        assert 'python -m recall2imagine.envs --list' in msg


def test_list_cli(capsys):
    from recall2imagine.envs.__main__ import main

    assert main(['--list', 'bsuite']) == 0
    out = capsys.readouterr().out.split()
    assert 'bsuite:memory_len/0' in out and 'bsuite:discounting_chain/19' in out
    assert main(['--list', 'nope']) == 2


def test_bsuite_csv_of_a_restarted_run_continues(tmp_path):
    import glob

    import pandas as pd

    def episodes(n):
        env = make_env('bsuite:memory_len/0', bsuite_logdir=str(tmp_path))
        for _ in range(n):
            obs = env.reset()
            while not obs['is_last']:
                obs = env.step(0)
        env.close()

    episodes(3)  # bsuite logs every episode up to 10
    episodes(2)  # a resumed run: the log goes on at episode 4
    csvs = sorted(glob.glob(str(tmp_path / '*.csv')))
    baks = sorted(glob.glob(str(tmp_path / '*.bak')))
    assert len(csvs) == 1 and len(baks) == 1, (csvs, baks)
    df = pd.read_csv(csvs[0])
    assert df['episode'].tolist() == [1, 2, 3, 4, 5]
    assert df['steps'].is_monotonic_increasing and df['steps'].iloc[-1] == 5 * df['steps'].iloc[0]
    assert len(pd.read_csv(baks[0])) == 3


def test_time_limit_truncates():
    env = make_env('gym_popgym:popgym-RepeatPreviousEasy-v0', seed=0, length=5)
    obs = env.reset()
    flags = []
    while not obs['is_last']:
        obs = env.step(0)
        flags.append((obs['is_last'], obs['is_terminal']))
    assert flags == [(False, False)] * 4 + [(True, False)]
    assert env.reset()['is_first']
