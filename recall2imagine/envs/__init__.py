"""Environment construction from task strings.

Task strings:
  gym_popgym:<popgym id>             e.g. gym_popgym:popgym-RepeatPreviousEasy-v0
  bsuite:<experiment>/<setting>      e.g. bsuite:memory_len/0
  dm_bsuite_<experiment>/<setting>   upstream alias of the above
  gym_memory_maze:<id>               e.g. gym_memory_maze:MemoryMaze-9x9-v0
  dmc:<domain>_<task>                DeepMind Control, e.g. dmc:cartpole_balance (vector; an image too
                                     when the encoder reads `image`)
  atari:<game>                       Atari through ale-py (the atari extra), e.g. atari:pong
  gym:<gymnasium id>                 any registered Gymnasium env, e.g. gym:CartPole-v1 (register
                                     your own in a module named by --envs.import)

List the tasks with ``python -m recall2imagine.envs --list [suite]``.
"""

from __future__ import annotations

import difflib
import importlib

from recall2imagine.envs.base import ActSpace, Env, TimeLimit

__all__ = ['ActSpace', 'Env', 'make_env', 'list_tasks', 'memory_horizon', 'parse_task', 'SUITES']

# Canonical suite name -> task-string prefix.
SUITES = {
    'popgym': 'gym_popgym:',
    'bsuite': 'bsuite:',
    'memory_maze': 'gym_memory_maze:',
    'gym': 'gym:',
    'dmc': 'dmc:',
    'atari': 'atari:',
}
_ALIASES = {
    'popgym': 'popgym',
    'gym_popgym': 'popgym',
    'bsuite': 'bsuite',
    'dm_bsuite': 'bsuite',
    'memory_maze': 'memory_maze',
    'gym_memory_maze': 'memory_maze',
    'mmaze': 'memory_maze',
    'gym': 'gym',
    'gymnasium': 'gym',
    'dmc': 'dmc',
    'atari': 'atari',
}
_LABELS = {
    'popgym': 'POPGym',
    'bsuite': 'bsuite',
    'memory_maze': 'Memory Maze',
    'gym': 'Gymnasium',
    'dmc': 'DeepMind Control',
    'atari': 'Atari',
}
# Suites whose adapter takes make_env's options by name: suite -> (module, class, options it takes).
_ADAPTERS = {
    'gym': ('gym', 'GymEnv', {'size'}),
    'dmc': ('dmc', 'DMC', {'size', 'image', 'repeat'}),
    'atari': ('atari', 'Atari', {'size', 'sticky'}),
    'memory_maze': ('memory_maze', 'MemoryMaze', {'speedup', 'time_limit'}),
}
_FORMS = (
    'gym_popgym:<popgym id>, bsuite:<experiment>/<setting> '
    '(alias dm_bsuite_<experiment>/<setting>), '
    'gym_memory_maze:<memory-maze id>, gym:<gymnasium id>, dmc:<domain>_<task>, atari:<game>'
)


def _canonical_suite(suite: str) -> str:
    if suite not in _ALIASES:
        raise ValueError(f'unknown suite {suite!r}; valid suites: {", ".join(SUITES)}')
    return _ALIASES[suite]


def parse_task(task: str) -> tuple[str, str]:
    """Splits a task string into (canonical suite, id)."""
    if task.startswith('dm_bsuite_'):
        return 'bsuite', task[len('dm_bsuite_') :]
    for suite, prefix in SUITES.items():
        if task.startswith(prefix):
            return suite, task[len(prefix) :]
    raise ValueError(f'unknown suite in task {task!r}; valid forms: {_FORMS}')


def _ids(suite: str) -> list[str]:
    if suite == 'popgym':
        from recall2imagine.envs.popgym import popgym_ids

        return popgym_ids()
    if suite == 'bsuite':
        from recall2imagine.envs.bsuite import bsuite_ids

        return bsuite_ids()
    if suite == 'gym':
        from recall2imagine.envs.gym import gym_ids

        return gym_ids()
    if suite == 'dmc':
        from recall2imagine.envs.dmc import dmc_ids

        return dmc_ids()
    if suite == 'atari':
        from recall2imagine.envs.atari import atari_ids

        return atari_ids()
    from recall2imagine.envs.memory_maze import memory_maze_ids

    return memory_maze_ids()


def _memory_maze_available() -> bool:
    from recall2imagine.envs.memory_maze import available

    return available()


def list_tasks(suite: str | None = None) -> list[str]:
    """Full task strings (usable with make_env) of one suite, or of all."""
    if suite is None:
        tasks = list_tasks('popgym') + list_tasks('bsuite')
        if _memory_maze_available():
            tasks += list_tasks('memory_maze')
        return tasks
    suite = _canonical_suite(suite)
    return [SUITES[suite] + i for i in _ids(suite)]


def _unknown_id(suite: str, name: str, ids: list[str]) -> ValueError:
    label = _LABELS[suite]
    close = difflib.get_close_matches(name, ids, n=3, cutoff=0.5)
    if suite == 'bsuite' and '/' in name:
        exp = name.split('/')[0]
        settings = [i for i in ids if i.split('/')[0] == exp]
        if settings:  # known experiment, bad setting
            close = [settings[0], settings[-1]]
            hint = f'; {exp} has settings {close[0]} .. {close[1]}'
            return ValueError(
                f'unknown bsuite task {name!r}{hint} '
                f'({len(ids)} tasks: python -m recall2imagine.envs --list {suite})'
            )
    hint = '; did you mean ' + ' or '.join(repr(c) for c in close) + '?' if close else ''
    return ValueError(
        f'unknown {label} task {name!r}{hint} '
        f'({len(ids)} tasks: python -m recall2imagine.envs --list {suite})'
    )


def memory_horizon(task: str, length: int = 0) -> tuple[int, str] | None:
    """How many steps the task's longest dependency spans, and a few words on what it is, or None
    when the task does not say (no memory task).

    A replayed training window starts from the initial state, so the world model can only learn a
    dependency that lies inside one window (README, "Training windows and memory"). ``length``
    (``--envs.length``) caps the horizon: no dependency crosses an episode's end.
    """
    suite, name = parse_task(task)
    if suite in ('popgym', 'bsuite', 'memory_maze'):
        ids = _ids(suite)
        if name not in ids:
            raise _unknown_id(suite, name, ids)
    if suite in ('gym', 'dmc', 'atari'):  # unknown for a user's env; DMC and Atari need little memory
        return None
    if suite == 'popgym':
        from recall2imagine.envs.popgym import popgym_horizon as horizon
    elif suite == 'bsuite':
        from recall2imagine.envs.bsuite import bsuite_horizon as horizon
    else:
        from recall2imagine.envs.memory_maze import memory_maze_horizon as horizon
    found = horizon(name)
    if found is not None and length and 0 < length < found[0]:
        return int(length), f'{found[1]}, cut at the {length}-step time limit'
    return found


def env_options(cfg) -> dict:
    """make_env's options from a run config: the time limit, user imports (``--envs.import``), and for
    Gymnasium and DMC tasks the image size (``--envs.size``); DMC renders images only when the
    encoder or decoder reads an ``image`` key."""
    import re

    suite = parse_task(cfg.task)[0]
    options = dict(length=cfg.envs.length, imports=cfg.envs['import'])
    if suite in ('gym', 'dmc', 'atari'):
        options['size'] = cfg.envs.size
    if suite == 'atari':
        options['sticky'] = cfg.envs.sticky
    if suite == 'dmc':
        options['image'] = any(re.fullmatch(p, 'image') for p in (cfg.encoder.cnn_keys, cfg.decoder.cnn_keys))
    return options


def make_env(task: str, seed: int = 0, length: int = 0, imports=(), **kwargs) -> Env:
    """Builds one environment from a task string.

    imports: modules to import first (``--envs.import``), e.g. ones that register Gymnasium envs.

    length: if > 0, episodes end (truncated: is_last without is_terminal) after this many steps
      (``--envs.length``), unless the env ends them earlier.

    kwargs: ``bsuite_logdir`` (bsuite only): record bsuite's scoring CSV there.
      Memory Maze: ``speedup`` (numpy contact check, default on) and
      ``time_limit`` (episode seconds, for tests).
    """
    from recall2imagine.envs.gym import import_modules

    import_modules(imports)
    env = _make(task, seed, **kwargs)
    if length and length > 0:
        env = TimeLimit(env, int(length))
    return env


def _make(task: str, seed: int, **kwargs) -> Env:
    suite, name = parse_task(task)
    # None means "not set", so callers can pass suite-specific options blindly.
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    ids = _ids(suite)
    if name not in ids:
        raise _unknown_id(suite, name, ids)
    if suite in _ADAPTERS:
        module, cls, allowed = _ADAPTERS[suite]
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f'unexpected kwargs for {_LABELS[suite]}: {sorted(unknown)}')
        return getattr(importlib.import_module(f'recall2imagine.envs.{module}'), cls)(
            name, seed=seed, **kwargs
        )
    if suite == 'popgym':
        from recall2imagine.envs.popgym import PopGym

        if kwargs:
            raise TypeError(f'unexpected kwargs for POPGym: {sorted(kwargs)}')
        return PopGym(name, seed=seed)
    from recall2imagine.envs.bsuite import BSuite

    unknown = set(kwargs) - {'bsuite_logdir', 'quiet'}
    if unknown:
        raise TypeError(f'unexpected kwargs for bsuite: {sorted(unknown)}')
    return BSuite(name, seed=seed, **kwargs)
