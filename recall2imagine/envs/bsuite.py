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

import numpy as np

from recall2imagine.envs.base import ActSpace, DmEnv


def bsuite_ids() -> list[str]:
    from bsuite import sweep

    return list(sweep.SWEEP)


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


def _keep_old_csv(results_dir, bsuite_id):
    """bsuite's CSV logger overwrites its file; a restarted run moves the old one aside instead
    (as `<name>.csv.<n>.bak`, which bsuite's loaders ignore) so no recorded episode is lost."""
    from bsuite.logging import csv_logging
    from bsuite.sweep import SEPARATOR

    name = f'{csv_logging.BSUITE_PREFIX}{bsuite_id.replace(SEPARATOR, csv_logging.SAFE_SEPARATOR)}.csv'
    path = pathlib.Path(results_dir) / name
    if path.exists():
        n = 1
        while path.with_name(f'{name}.{n}.bak').exists():
            n += 1
        path.rename(path.with_name(f'{name}.{n}.bak'))


class BSuite(DmEnv):
    """One bsuite environment behind the common ``Env`` interface.

    bsuite_logdir: when given, bsuite's own CSV logging records the results
      there (``bsuite_id=<experiment>-<setting>.csv``, overwritten), so that
      ``bsuite.logging.csv_load.load_bsuite(bsuite_logdir)`` and bsuite's
      analysis can score the run. Use it for one env per bsuite id only.
    """

    def __init__(self, bsuite_id: str, seed: int = 0, bsuite_logdir=None, quiet: bool = True):
        import bsuite

        self.bsuite_id = bsuite_id
        self._seed = seed  # unused, see module docstring
        ctx = contextlib.redirect_stdout(io.StringIO()) if quiet else (contextlib.nullcontext())
        try:
            with ctx:
                if bsuite_logdir is not None:
                    _keep_old_csv(bsuite_logdir, bsuite_id)
                    self._env = bsuite.load_and_record_to_csv(
                        bsuite_id, results_dir=str(bsuite_logdir), overwrite=True
                    )
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
        # Number of episodes bsuite's protocol runs this setting for.
        self.num_episodes = int(getattr(self._env, 'bsuite_num_episodes', 0))
        self._done = True

    def _obs(self, observation):
        return {'vector': _flatten(observation)}

    def close(self):
        if hasattr(self._env, 'flush'):
            self._env.flush()
        close = getattr(self._env, 'close', None)
        if close is not None:
            close()
