"""Memory Maze environment side: adapter, task table, time-limit semantics, contact speed-up."""

import collections

import numpy as np
import pytest

from recall2imagine.envs import list_tasks, make_env
from recall2imagine.envs import memory_maze as mm
from recall2imagine.envs import mmaze_speedup
from recall2imagine.envs.base import check_obs

pytestmark = pytest.mark.skipif(not mm.available(), reason='memory-maze / dm-control not installed')


def test_task_table_from_package():
    ids = mm.memory_maze_ids()
    assert len(ids) == 64 and len(set(ids)) == 64
    assert {'MemoryMaze-9x9-v0', 'MemoryMaze-15x15-ExtraObs-v0', 'MemoryMaze-11x11-Top-v0'} <= set(ids)
    assert mm.task_kwargs('MemoryMaze-9x9-v0') == ('memory_maze_9x9', {'image_only_obs': True})
    assert mm.task_kwargs('MemoryMaze-13x13-ExtraObs-v0') == (
        'memory_maze_13x13',
        {'global_observables': True},
    )
    tasks = list_tasks('memory_maze')
    assert 'gym_memory_maze:MemoryMaze-9x9-v0' in tasks
    assert set(tasks) <= set(list_tasks())


def test_unknown_id_suggests():
    with pytest.raises(ValueError, match="did you mean 'MemoryMaze-9x9-v0'"):
        make_env('gym_memory_maze:MemoryMaze-9x9-v1', seed=0)
    with pytest.raises(TypeError, match='unexpected kwargs'):
        make_env('gym_memory_maze:MemoryMaze-9x9-v0', seed=0, foo=1)


def test_gl_backend_is_chosen():
    assert mm.select_gl_backend() in ('egl', 'osmesa', 'glfw')


def test_9x9_steps_headless_and_time_limit_is_truncation():
    rng = np.random.default_rng(0)
    # 12.5 s at 4 Hz: the episode ends after exactly 50 steps, through the time limit.
    env = make_env('gym_memory_maze:MemoryMaze-9x9-v0', seed=1, time_limit=12.5)
    try:
        assert env.act_space.discrete and env.act_space.n == 6
        assert env.obs_space == {'image': ((64, 64, 3), np.dtype(np.uint8))}
        obs = env.reset()
        check_obs(env, obs)
        assert obs['is_first'] and obs['reward'] == 0.0
        for t in range(50):
            obs = env.step(int(rng.integers(6)))
            check_obs(env, obs)
            assert not obs['is_first']
            assert obs['is_last'] == (t == 49)
            assert not obs['is_terminal']  # time limit: truncation (discount 1), not a terminal
        assert obs['image'].std() > 0  # rendered something
        with pytest.raises(RuntimeError, match='reset'):
            env.step(0)
    finally:
        env.close()


def _planner(obs, n):
    """Shortest path on the maze layout to the current target, steered with agent_dir."""
    lay = obs['maze_layout'].reshape(n, n)
    pos, direc, target = obs['agent_pos'], obs['agent_dir'], obs['target_pos']
    start, goal = (int(pos[0]), int(pos[1])), (int(target[0]), int(target[1]))
    prev, queue = {start: None}, collections.deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nb = (cell[0] + dx, cell[1] + dy)
            if 0 <= nb[0] < n and 0 <= nb[1] < n and lay[nb[1], nb[0]] and nb not in prev:
                prev[nb] = cell
                queue.append(nb)
    path = [goal]
    while prev.get(path[-1]) is not None:
        path.append(prev[path[-1]])
    way = np.array(path[-2]) + 0.5 if len(path) > 1 else target
    v = way - pos
    angle = np.arctan2(direc[0] * v[1] - direc[1] * v[0], direc @ v)
    if angle > 0.35:
        return 4 if angle < 0.9 else 2  # forward+left / left
    if angle < -0.35:
        return 5 if angle > -0.9 else 3  # forward+right / right
    return 1  # forward


def _run(actions=None, speedup=True, steps=60):
    env = make_env('gym_memory_maze:MemoryMaze-9x9-ExtraObs-v0', seed=0, speedup=speedup)
    try:
        assert mmaze_speedup.is_applied() == speedup
        obs = env.reset()
        check_obs(env, obs)
        assert obs['maze_layout'].shape == (81,) and obs['maze_layout'].dtype == np.float32
        trace, taken = [obs], []
        for t in range(steps):
            a = _planner(obs, 9) if actions is None else actions[t]
            taken.append(a)
            obs = env.step(a)
            trace.append(obs)
        return trace, taken
    finally:
        env.close()


def test_speedup_gives_identical_rollouts():
    try:
        fast, actions = _run(speedup=True)
        slow, _ = _run(actions, speedup=False)
    finally:
        mmaze_speedup.apply(force=True)
    rewards = np.array([o['reward'] for o in fast])
    assert (
        rewards.sum() >= 1
    )  # the planner reaches a target (step 48 for this seed), so activation is exercised
    for f, s in zip(fast, slow):
        assert set(f) == set(s)
        for k in f:
            np.testing.assert_array_equal(f[k], s[k], err_msg=k)


def test_speedup_apply_is_idempotent_and_reversible(monkeypatch):
    from dm_control.locomotion.props import target_sphere

    cls = target_sphere.TargetSphere
    try:
        mmaze_speedup.remove()
        original = cls._update_activation
        assert mmaze_speedup.apply(force=True) and mmaze_speedup.apply(force=True)
        assert cls._update_activation is mmaze_speedup._update_activation
        mmaze_speedup.remove()
        assert cls._update_activation is original
        monkeypatch.setenv(mmaze_speedup.ENV_VAR, '0')
        assert not mmaze_speedup.apply()
        assert cls._update_activation is original
    finally:
        mmaze_speedup.apply(force=True)


def test_mmaze_small_trains_and_writes_openloop_video(tmp_path):
    """`--configs mmaze mmaze_small` on the 9x9 maze: a few updates, finite losses, and an
    open-loop GIF with one frame per sequence step, truth | model | error side by side."""
    import json
    import math

    from PIL import Image

    from recall2imagine import train

    logdir = tmp_path / 'mm'
    code = train.main(
        [
            '--configs',
            'mmaze',
            'mmaze_small',
            '--logdir',
            str(logdir),
            '--envs.amount',
            '1',
            '--envs.parallel',
            'none',
            '--batch_size',
            '4',
            '--batch_length',
            '16',
            '--run.steps',
            '120',
            '--run.train_fill',
            '64',
            '--run.eval_eps',
            '1',
            '--run.eval_every',
            '100',
            '--envs.length',
            '40',
            '--run.log_every',
            '0',
            '--run.report_every',
            '100',
            '--run.report_context',
            '8',
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in open(logdir / 'metrics.jsonl')]
    losses = [r['train/image_loss'] for r in rows if 'train/image_loss' in r]
    assert losses and all(v is not None and math.isfinite(v) for v in losses)
    gifs = sorted((logdir / 'videos').glob('openloop_image_*.gif'))
    assert gifs
    with Image.open(gifs[-1]) as gif:
        assert gif.n_frames == 16  # batch_length
        assert gif.size == (3 * 64, 4 * 64 + 4)  # (truth | model | error) x batch_size rows, context bar
    assert any('openloop/image_mse' in r for r in rows)
    # the evaluation episode (40 steps with --envs.length 40: the reset frame + 40) as a GIF
    assert any(r.get('eval/length') == 40 for r in rows)
    with Image.open(next((logdir / 'videos').glob('eval_*.gif'))) as gif:
        assert gif.n_frames == 41 and gif.size == (128, 128)


def test_shared_wall_textures_render_identically_with_less_memory():
    """One texture provider for the 10 wall variations: same images over several short episodes
    (new layouts and wall textures at each reset), 16 textures instead of 88."""
    rollouts, ntex = [], []
    for share in (True, False):
        env = mm.MemoryMaze('MemoryMaze-9x9-v0', seed=5, share_textures=share, time_limit=5)
        rng = np.random.default_rng(0)
        images = [env.reset()['image']]
        for _ in range(3 * 20):
            obs = env.step(int(rng.integers(0, 6)))
            images.append(obs['image'])
            if obs['is_last']:
                images.append(env.reset()['image'])
        rollouts.append(np.stack(images))
        ntex.append(mm._unwrap(env._env).physics.model.ntex)
        env.close()
    assert ntex == [16, 88]
    np.testing.assert_array_equal(rollouts[0], rollouts[1])


def test_memory_check_says_how_many_envs_fit():
    mm.check_memory(2, available=10 * 2**30)
    with pytest.raises(MemoryError, match='use --envs.amount 16 or fewer'):
        mm.check_memory(40, available=10 * 2**30)


def test_render_cache_gives_identical_frames_across_episodes():
    """The cached camera renders what dm-control's fresh camera per frame renders, over episodes
    with new maze models, and every frame is its own array."""
    from dm_control.mujoco import engine

    def rollout():
        env = mm.MemoryMaze('MemoryMaze-9x9-v0', seed=2, time_limit=5)  # 20 steps per episode
        rng = np.random.default_rng(0)
        frames = [env.reset()['image']]
        for _ in range(50):
            obs = env.step(int(rng.integers(0, 6)))
            frames.append(obs['image'])
            if obs['is_last']:
                frames.append(env.reset()['image'])
        env.close()
        return frames

    mmaze_speedup.apply(force=True)
    cached = rollout()
    assert engine.Physics.render is mmaze_speedup._render
    try:
        engine.Physics.render = mmaze_speedup._ORIGINAL_RENDER[0]
        fresh = rollout()
    finally:
        assert mmaze_speedup.apply(force=True) and engine.Physics.render is mmaze_speedup._render
    assert len(cached) == len(fresh) == 53
    np.testing.assert_array_equal(np.stack(cached), np.stack(fresh))
    assert not any(np.shares_memory(a, b) for a, b in zip(cached[:-1], cached[1:]))
