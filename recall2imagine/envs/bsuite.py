"""BSuite adapter (dm_env API, bsuite 0.3.x; bsuite's gym wrapper is not used).

The observation is flattened to float32 under key ``vector``; the first-step
reward is 0; ``is_terminal`` means the last step has discount 0. Each bsuite
setting fixes its own seed (it is part of the bsuite id), so the ``seed``
argument is not used: that keeps runs comparable with bsuite's scoring.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import sys

import numpy as np

from recall2imagine.envs.base import ActSpace, DmEnv
from recall2imagine.util import backup_path


def bsuite_ids() -> list[str]:
    from bsuite import sweep

    return list(sweep.SWEEP)


def bsuite_horizon(bsuite_id: str) -> tuple[int, str] | None:
    """(steps, what) of the dependency of a bsuite memory experiment (memory_len, memory_size: the
    context shown at the first step decides the reward at the last); None for the others (e.g.
    discounting_chain keeps its context in the observation: credit assignment, not memory)."""
    if bsuite_id.split('/')[0] not in ('memory_len', 'memory_size'):
        return None
    import bsuite

    with contextlib.redirect_stdout(io.StringIO()):  # bsuite prints "Loaded bsuite_id"
        n = int(bsuite.load_from_id(bsuite_id)._memory_length)
    return n, f'recalls its first observation {n} steps later'


def _flatten(obs) -> np.ndarray:
    if isinstance(obs, dict):
        return np.concatenate([_flatten(obs[k]) for k in sorted(obs)])
    if isinstance(obs, (tuple, list)):
        return np.concatenate([_flatten(o) for o in obs])
    return np.asarray(obs, np.float32).ravel()


def _spec_size(spec) -> int:
    if isinstance(spec, dict):
        return sum(_spec_size(spec[k]) for k in spec)
    if isinstance(spec, (tuple, list)):
        return sum(_spec_size(s) for s in spec)
    return int(np.prod(spec.shape))


def _csv_path(results_dir, bsuite_id) -> pathlib.Path:
    from bsuite.logging import csv_logging
    from bsuite.sweep import SEPARATOR

    name = f'{csv_logging.BSUITE_PREFIX}{bsuite_id.replace(SEPARATOR, csv_logging.SAFE_SEPARATOR)}.csv'
    return pathlib.Path(results_dir) / name


def _keep_old_csv(path: pathlib.Path):
    """bsuite's CSV logger overwrites its file: keep a copy of an earlier run segment's file as
    `<name>.csv.<n>.bak` (bsuite's loaders ignore it) before the log is continued."""
    backup = backup_path(path)
    backup.write_bytes(path.read_bytes())
    return backup


def _continue_log(env, rows):
    """Continue bsuite's logging wrapper from the rows an earlier run segment wrote: the episode,
    step and return counters go on from the last row, so bsuite's analysis sees one run. (Episodes
    that ended after the last logged row of the earlier segment are not counted: bsuite logs at
    logarithmically spaced episodes.)"""
    last = rows[-1]
    env._steps = int(last['steps'])
    env._episode = int(last['episode'])
    env._total_return = float(last['total_return'])
    env._logger._data = list(rows)


class BSuite(DmEnv):
    """One bsuite environment behind the common ``Env`` interface.

    bsuite_logdir: when given, bsuite's own CSV logging records the results
      there (``bsuite_id=<experiment>-<setting>.csv``), so that
      ``bsuite.logging.csv_load.load_bsuite(bsuite_logdir)`` and bsuite's
      analysis can score the run. A file from an earlier segment of the run
      (a resume) is continued: its counters go on. Use it for one env per
      bsuite id only.
    """

    def __init__(self, bsuite_id: str, seed: int = 0, bsuite_logdir=None, quiet: bool = True):
        import bsuite

        self.bsuite_id = bsuite_id
        self._seed = seed  # unused, see module docstring
        ctx = contextlib.redirect_stdout(io.StringIO()) if quiet else (contextlib.nullcontext())
        try:
            with ctx:
                if bsuite_logdir is not None:
                    rows = self._earlier_rows(_csv_path(bsuite_logdir, bsuite_id))
                    self._env = bsuite.load_and_record_to_csv(
                        bsuite_id, results_dir=str(bsuite_logdir), overwrite=True
                    )
                    if rows:
                        _continue_log(self._env, rows)
                else:
                    self._env = bsuite.load_from_id(bsuite_id)
        except OSError as e:  # mnist* download their data set on construction
            raise RuntimeError(
                f'bsuite:{bsuite_id} could not be built ({e}); the mnist experiments need to download MNIST'
            ) from e
        spec = self._env.action_spec()
        self.act_space = ActSpace(True, int(spec.num_values))
        self._act_min = int(getattr(spec, 'minimum', 0))
        size = _spec_size(self._env.observation_spec())
        self.obs_space = {'vector': ((size,), np.dtype(np.float32))}
        self._done = True

    @staticmethod
    def _earlier_rows(path: pathlib.Path):
        """Rows of an earlier run segment's CSV (kept as a .bak copy too), or [] if none/unreadable."""
        if not path.exists():
            return []
        _keep_old_csv(path)
        try:
            import pandas as pd

            rows = pd.read_csv(path).to_dict('records')
        except Exception as e:  # noqa: BLE001 - a damaged log must not stop the run
            print(
                f'warning: bsuite log {path} unreadable ({type(e).__name__}); starting a new one '
                f'(the old one is kept as .bak)',
                file=sys.stderr,
                flush=True,
            )
            return []
        return rows if rows and {'steps', 'episode', 'total_return'} <= set(rows[0]) else []

    def _obs(self, observation):
        return {'vector': _flatten(observation)}

    def close(self):
        if hasattr(self._env, 'flush'):
            self._env.flush()
        close = getattr(self._env, 'close', None)
        if close is not None:
            close()
