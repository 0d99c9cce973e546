"""Memory Maze adapter (memory-maze 1.0.x dm_env tasks; no gym).

Task ids are the package's own gym ids (``MemoryMaze-9x9-v0``,
``MemoryMaze-15x15-ExtraObs-v0``, ...). They are read from the registration
calls in ``memory_maze/__init__.py`` (parsed, not executed: that module needs the
old ``gym`` package), so each id maps to the dm_env task function and keyword
arguments the package registers for it; the dm_env task is wrapped directly.

Observations: ``image`` as uint8 (H, W, 3) (64x64, or 256x256 for -HD/-Top);
every other key (``target_color`` and the -ExtraObs/-Oracle-ExtraObs keys such as
``agent_pos``, ``targets_pos``, ``maze_layout``) as a flattened float32 vector.
Actions: Discrete(6) (noop, forward, left, right, forward+left, forward+right).

Episode ends: the package ends episodes only through the composer time limit
(250/500/750/1000 s at 4 Hz), which dm_env reports as a LAST step with discount 1.
We treat that as a truncation: ``is_last=True, is_terminal=False``;
``is_terminal`` is True only when the last step has discount 0. (Upstream R2I's
gym path counts the time-limit step as terminal, spec pitfall 12.11; here the
value bootstrap past the time limit is kept.)

Headless rendering: ``select_gl_backend`` picks ``MUJOCO_GL`` before MuJoCo is
imported (a user-set value wins; otherwise egl, then osmesa, each tried in a
subprocess). The contact-loop speed-up of ``mmaze_speedup`` is applied unless
``speedup=False`` or ``R2I_MMAZE_SPEEDUP=0``.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import io
import os
import subprocess
import sys
import types

import numpy as np

from recall2imagine.envs import mmaze_speedup
from recall2imagine.envs.base import ActSpace, DmEnv

DEBIAN_PACKAGES = 'libegl1 libgl1 libosmesa6 libglfw3 libgl1-mesa-dri'
GL_BACKENDS = ('egl', 'osmesa')

# A tiny offscreen render; run in a subprocess so a failing backend cannot break this process.
_GL_PROBE = """
import mujoco
m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size="1"/></worldbody></mujoco>')
d = mujoco.MjData(m)
r = mujoco.Renderer(m, 16, 16)
mujoco.mj_forward(m, d)
r.update_scene(d)
r.render()
r.close()
"""


def available() -> bool:
    """Whether the memory-maze and dm-control packages are installed (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in ('memory_maze', 'dm_control', 'mujoco'))


def select_gl_backend() -> str:
    """Sets MUJOCO_GL for headless rendering and returns it.

    A MUJOCO_GL already in the environment (set by the user, or by an earlier
    call: worker processes inherit it) is kept as is. Otherwise egl and then
    osmesa are tried with a small render in a subprocess.
    """
    current = os.environ.get('MUJOCO_GL')
    if current:
        return current
    if 'dm_control' in sys.modules or 'mujoco' in sys.modules:
        print(
            'warning: mujoco/dm_control were imported before MUJOCO_GL was chosen; '
            'rendering may use the wrong backend',
            file=sys.stderr,
        )
    errors = []
    for backend in GL_BACKENDS:
        env = dict(os.environ, MUJOCO_GL=backend)
        try:
            proc = subprocess.run(
                [sys.executable, '-c', _GL_PROBE], env=env, capture_output=True, text=True, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f'{backend}: {type(e).__name__}')
            continue
        if proc.returncode == 0:
            os.environ['MUJOCO_GL'] = backend
            return backend
        lines = [ln.strip() for ln in proc.stderr.strip().splitlines() if ln.strip()]
        errors.append(f'{backend}: {lines[-1] if lines else f"exit code {proc.returncode}"}')
    raise RuntimeError(
        'rendering MuJoCo (Memory Maze, DMC images) needs headless OpenGL but no backend works ('
        + '; '.join(errors)
        + f'): install the Debian packages {DEBIAN_PACKAGES} (apt-get install {DEBIAN_PACKAGES}) '
        'or set MUJOCO_GL yourself'
    )


@functools.lru_cache(maxsize=None)
def _registrations() -> dict[str, tuple[str, dict]]:
    """id -> (task function name in memory_maze.tasks, kwargs), from the package's register() calls."""
    spec = importlib.util.find_spec('memory_maze')
    if spec is None or spec.origin is None or not available():
        raise ValueError(
            'Memory Maze tasks need the mmaze extra: pip install -c constraints.txt -e ".[mmaze]" '
            '(or make install)'
        )
    with open(spec.origin, encoding='utf-8') as f:
        tree = ast.parse(f.read())

    sizes = {}  # '9x9' -> 'memory_maze_9x9'
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Dict)
        ):
            entries = {}
            for k, v in zip(node.value.keys, node.value.values):
                if isinstance(k, ast.Constant) and isinstance(v, ast.Attribute):
                    entries[k.value] = v.attr
            if entries and all(v.startswith('memory_maze_') for v in entries.values()):
                sizes = entries

    table: dict[str, tuple[str, dict]] = {}
    for loop in ast.walk(tree):
        if not isinstance(loop, ast.For):
            continue
        # for key, dm_task in sizes.items(): register(id=f'MemoryMaze-{key}-...', entry_point=f(_, dm_task, **kw))
        if not (isinstance(loop.target, ast.Tuple) and len(loop.target.elts) == 2):
            continue
        key_name = loop.target.elts[0].id
        for call in ast.walk(loop):
            if not (isinstance(call, ast.Call) and getattr(call.func, 'id', None) == 'register'):
                continue
            kw = {k.arg: k.value for k in call.keywords}
            id_node, entry = kw.get('id'), kw.get('entry_point')
            if not isinstance(id_node, ast.JoinedStr) or not isinstance(entry, ast.Call):
                continue
            task_kwargs = {k.arg: ast.literal_eval(k.value) for k in entry.keywords}
            for size, fn_name in sizes.items():
                parts = []
                for value in id_node.values:
                    if isinstance(value, ast.Constant):
                        parts.append(str(value.value))
                    elif (
                        isinstance(value, ast.FormattedValue) and getattr(value.value, 'id', None) == key_name
                    ):
                        parts.append(size)
                    else:
                        raise ValueError('unexpected id expression')
                table[''.join(parts)] = (fn_name, task_kwargs)
    if not table:
        raise RuntimeError(f'could not read the Memory Maze task table from {spec.origin}')
    return table


def memory_maze_ids() -> list[str]:
    """All task ids the memory-maze package registers (64 for memory-maze 1.0.3)."""
    return sorted(_registrations(), key=_id_sort_key)


def _id_sort_key(task_id: str):
    size = task_id.split('-')[1]
    return (int(size.split('x')[0]) if 'x' in size else 0, task_id)


def task_kwargs(task_id: str) -> tuple[str, dict]:
    """(task function name, kwargs) that the package registers for ``task_id``."""
    fn_name, kwargs = _registrations()[task_id]
    return fn_name, dict(kwargs)


# Episode seconds of each maze size, as the package's task functions set them (4 Hz control unless
# the id says HiFreq, 40 Hz).
_EPISODE_SECONDS = {9: 250, 11: 500, 13: 750, 15: 1000}


def memory_maze_horizon(task_id: str) -> tuple[int, str]:
    """(steps, what): a maze keeps its layout and targets for the whole episode, so what was seen
    at its start can matter at its end."""
    fn_name, kwargs = task_kwargs(task_id)
    size = int(fn_name.rsplit('x', 1)[-1])
    steps = int(round(_EPISODE_SECONDS[size] * float(kwargs.get('control_freq', 4.0))))
    return steps, f'recalls over its whole {steps}-step episode'


@functools.lru_cache(maxsize=None)
def _tasks_module():
    """Imports memory_maze.tasks without the old gym package.

    ``import memory_maze`` imports ``memory_maze.tasks`` and then re-raises the
    ImportError of ``import gym`` (after printing a note); the tasks module stays
    importable, so it is taken from sys.modules.
    """
    select_gl_backend()
    from absl import logging as absl_logging

    # dm_control warns "Cannot set velocity on Entity with no free joint" on every reset
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import memory_maze  # noqa: F401
    except ImportError:
        if 'memory_maze.tasks' not in sys.modules:
            raise
    return sys.modules['memory_maze.tasks']


def _unwrap(env):
    """The innermost dm_control composer Environment under memory-maze's wrappers."""
    wrapper_cls = sys.modules['memory_maze.wrappers'].Wrapper
    while isinstance(env, wrapper_cls):
        env = env.env
    return env


@contextlib.contextmanager
def _shared_wall_textures(tasks):
    """While a task is built, `labmaze_textures.WallTextures(style)` returns one instance per style.

    memory-maze gives each of its 10 wall variations its own `WallTextures('style_01')`, so the
    model holds 10 copies of the same 8 wall images (266 MB of texture data of 88 textures per env,
    ~1.3 GB resident with the rendering context). dm-control's maze arena attaches each distinct
    provider once and draws each variation's texture with its own `random_state.choice` from the
    provider's list, so sharing one provider keeps the random stream and the rendered images as they
    were (tests/test_memory_maze.py) at a fraction of the memory."""
    original = tasks.labmaze_textures
    cache = {}

    def wall_textures(style, *args, **kwargs):
        key = (style, args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original.WallTextures(style, *args, **kwargs)
        return cache[key]

    shim = types.SimpleNamespace(**{k: getattr(original, k) for k in dir(original) if not k.startswith('__')})
    shim.WallTextures = wall_textures
    tasks.labmaze_textures = shim
    try:
        yield
    finally:
        tasks.labmaze_textures = original


# Resident memory of one Memory Maze env (9x9, 64x64, shared wall textures, EGL or OSMesa): 531-578 MB
# measured on the 2-core CPU machine (BENCHMARKS.md); larger mazes and renders need somewhat more.
ENV_BYTES = 600 * 2**20


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where unknown)."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(count: int, available: int | None = None) -> None:
    """Raises MemoryError (one line, says what to do) when `count` envs would not fit in RAM."""
    available = available_memory() if available is None else available
    need = count * ENV_BYTES
    if available is not None and need > available:
        fits = max(int(available // ENV_BYTES) - 1, 1)
        raise MemoryError(
            f'{count} Memory Maze envs need about {need / 2**30:.1f} GiB of RAM (~{ENV_BYTES / 2**20:.0f} MiB '
            f'each) but {available / 2**30:.1f} GiB is available: use --envs.amount {fits} or fewer'
        )


class MemoryMaze(DmEnv):
    """One Memory Maze task behind the common ``Env`` interface.

    seed: seeds the maze layouts, target placement and spawn sequence.
    speedup: apply the numpy contact check (process-wide; False removes it);
      None follows ``R2I_MMAZE_SPEEDUP`` (default on).
    share_textures: build the 10 wall variations from one texture provider (identical images,
      ~4x less memory per env); False builds the package's 10 copies.
    time_limit: optional episode length in seconds (steps / 4 for the 4 Hz
      tasks) replacing the package's; meant for tests.
    """

    def __init__(
        self,
        task_id: str,
        seed: int | None = 0,
        speedup: bool | None = None,
        time_limit=None,
        share_textures: bool = True,
    ):
        fn_name, kwargs = task_kwargs(task_id)
        self.task_id = task_id
        tasks = _tasks_module()
        if speedup is None:
            speedup = mmaze_speedup.enabled_by_env()
        if speedup:
            mmaze_speedup.apply(force=True)
        else:
            mmaze_speedup.remove()
        self.speedup = bool(speedup)
        with _shared_wall_textures(tasks) if share_textures else contextlib.nullcontext():
            self._env = getattr(tasks, fn_name)(seed=seed, **kwargs)
        if time_limit is not None:
            inner = _unwrap(self._env)
            if not hasattr(inner, '_time_limit'):
                raise RuntimeError('cannot override the time limit of this dm_control version')
            inner._time_limit = float(time_limit) - 1e-3  # as the package: exactly time_limit * freq steps

        act_spec = self._env.action_spec()
        self.act_space = ActSpace(True, int(act_spec.num_values))
        self._act_min = int(getattr(act_spec, 'minimum', 0))
        obs_spec = self._env.observation_spec()
        self._single = not isinstance(obs_spec, dict)  # image-only tasks return a bare array
        if self._single:
            obs_spec = {'image': obs_spec}
        self.obs_space = {}
        for key, spec in obs_spec.items():
            if key == 'image':
                self.obs_space[key] = (tuple(spec.shape), np.dtype(np.uint8))
            else:
                self.obs_space[key] = ((int(np.prod(spec.shape)),), np.dtype(np.float32))
        self._done = True

    def _obs(self, observation) -> dict[str, np.ndarray]:
        if self._single:
            observation = {'image': observation}
        out = {}
        for key in self.obs_space:
            if key == 'image':
                out[key] = np.array(observation[key], np.uint8, copy=True)
            else:
                out[key] = np.asarray(observation[key], np.float32).ravel().copy()
        return out

    @property
    def dm_env(self):
        """The wrapped dm_env environment (for tests and inspection)."""
        return self._env

    def close(self):
        env, self._env = getattr(self, '_env', None), None
        if env is not None:
            env.close()
