"""Memory Maze env steps/s: raw package vs our adapter, and process workers through Driver.

  .venv/bin/python benchmarks/env_speed.py                 # ~15 s per row, about 3-4 minutes
  .venv/bin/python benchmarks/env_speed.py --seconds 5     # quicker, noisier
  .venv/bin/python benchmarks/env_speed.py --only memory   # resident memory per env only

Every row runs in a fresh Python process (the contact patch is process-wide), steps
uniformly random actions after one reset, and counts steps over ``--seconds`` of
stepping (construction, the first reset and worker start-up are not counted; later
resets are). Prints a Markdown table.

Rows: "raw" steps the memory-maze dm_env task directly with dm-control's original
contact check; "adapter" is ``make_env('gym_memory_maze:...')`` (patched unless
``speedup=False``); "workers N" are N ``ProcessEnv`` workers stepped concurrently by
``Driver`` (total steps/s over all workers). "contact patch only" is the adapter with
dm-control's own ``Physics.render`` put back (no render-camera cache), so the two
patches' shares can be told apart.

Memory table: VmRSS of one 9x9 env (fresh process) after construction, a reset and 300
random steps, with the package's 10 wall-texture variations built separately (as the
package does) and with our one shared texture provider (the default).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROWS = [
    # name, kind, size, extra
    ('raw package, unpatched', 'raw', '9x9', {}),
    ('adapter, patched', 'adapter', '9x9', {}),
    ('adapter, contact patch only (no render cache)', 'adapter_nocache', '9x9', {}),
    ('adapter, patched, LP_NUM_THREADS=1', 'adapter', '9x9', {'env': {'LP_NUM_THREADS': '1'}}),
    ('raw package, unpatched', 'raw', '15x15', {}),
    ('adapter, patched', 'adapter', '15x15', {}),
    ('ProcessEnv x1 + Driver, patched', 'workers', '9x9', {'n': 1}),
    ('ProcessEnv x2 + Driver, patched', 'workers', '9x9', {'n': 2}),
]
MEMORY_ROWS = [  # name, share_textures
    ('package as is: 10 wall variations, each its own textures', 0),
    ('ours: one wall-texture provider shared by the 10 variations (default)', 1),
]


def _rss_mb():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError('no VmRSS in /proc/self/status')


def _timed(step, seconds):
    for _ in range(3):  # warm-up
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += step()
    return n / (time.perf_counter() - t0)


def child(kind, size, seconds, n):
    import numpy as np

    rng = np.random.default_rng(0)
    task = f'MemoryMaze-{size}-v0'
    if kind == 'raw':
        from recall2imagine.envs import memory_maze as mm

        fn_name, kwargs = mm.task_kwargs(task)
        tasks = mm._tasks_module()  # selects MUJOCO_GL, imports memory_maze.tasks; no patch applied
        env = getattr(tasks, fn_name)(seed=0, **kwargs)
        env.reset()

        def step():
            ts = env.step(int(rng.integers(6)))
            if ts.last():
                env.reset()
            return 1

        rate = _timed(step, seconds)
        env.close()
        return rate
    if kind == 'memory':
        from recall2imagine.envs.memory_maze import MemoryMaze

        env = MemoryMaze(task, seed=0, share_textures=bool(n))
        env.reset()
        for _ in range(300):
            if env.step(int(rng.integers(6)))['is_last']:
                env.reset()
        rss = _rss_mb()
        env.close()
        return rss
    if kind in ('adapter', 'adapter_nocache'):
        from recall2imagine.envs import make_env

        env = make_env(f'gym_memory_maze:{task}', seed=0)
        if kind == 'adapter_nocache':  # keep the contact patch, put dm-control's render back
            from dm_control.mujoco import engine

            from recall2imagine.envs import mmaze_speedup

            engine.Physics.render = mmaze_speedup._ORIGINAL_RENDER[0]
        env.reset()

        def step():
            if env.step(int(rng.integers(6)))['is_last']:
                env.reset()
            return 1

        rate = _timed(step, seconds)
        env.close()
        return rate
    from recall2imagine.driver import Driver
    from recall2imagine.envs.memory_maze import select_gl_backend
    from recall2imagine.envs.parallel import ProcessEnv

    select_gl_backend()  # once here; workers inherit MUJOCO_GL
    envs = [ProcessEnv(f'gym_memory_maze:{task}', seed=i) for i in range(n)]
    driver = Driver(envs)

    def policy(obs, state):
        return {'action': np.eye(6, dtype=np.float32)[rng.integers(0, 6, len(envs))]}, state

    def step():
        driver(policy, steps=n)
        return n

    rate = _timed(step, seconds)
    for env in envs:
        env.close()
    return rate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--seconds', type=float, default=15.0, help='stepping time per row')
    parser.add_argument('--only', choices=('speed', 'memory'), help='one of the two tables')
    parser.add_argument('--child', nargs=3, metavar=('KIND', 'SIZE', 'N'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, size, n = args.child
        print(json.dumps({'rate': child(kind, size, args.seconds, int(n))}))
        return

    def run_child(name, kind, size, n, extra_env=None):
        env = dict(os.environ, **(extra_env or {}))
        cmd = [sys.executable, __file__, '--seconds', str(args.seconds), '--child', kind, size, str(n)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
        if proc.returncode != 0 or not lines:
            tail = proc.stderr.strip().splitlines()[-1:] or ['?']
            return f'failed: {tail[0]}'
        return f'{json.loads(lines[-1])["rate"]:,.1f}'

    if args.only != 'memory':
        print(
            f'Memory Maze steps/s, 64x64 image, random actions, {os.cpu_count()} CPUs, {args.seconds:g} s per row'
        )
        print()
        print('| setup | maze | steps/s |')
        print('|---|---|---|')
        for name, kind, size, extra in ROWS:
            print(
                f'| {name} | {size} | {run_child(name, kind, size, extra.get("n", 1), extra.get("env"))} |',
                flush=True,
            )
        print()
    if args.only != 'speed':
        print(
            f'Memory Maze resident memory per env (9x9, after a reset and 300 random steps, MUJOCO_GL='
            f'{os.environ.get("MUJOCO_GL", "auto")})'
        )
        print()
        print('| build | RSS MB |')
        print('|---|---:|')
        for name, share in MEMORY_ROWS:
            print(f'| {name} | {run_child(name, "memory", "9x9", share)} |', flush=True)


if __name__ == '__main__':
    main()
