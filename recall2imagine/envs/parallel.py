"""Environments in worker processes.

``ProcessEnv(task, seed)`` builds ``make_env(task, seed)`` in its own process
(multiprocessing 'spawn' context, one pipe per worker) and forwards the ``Env``
interface to it. Besides ``reset``/``step`` it offers ``reset_async``/
``step_async`` + ``result``, which ``Driver`` uses to step all workers at once.

A worker that dies (crash, SIGKILL, OOM killer) is restarted transparently:
the call that found it dead returns the last observation with ``is_last=True``,
``is_terminal=False`` and reward 0, so the driver closes the episode and resets,
and the reset goes to a fresh worker (built with a different seed, so it does not
replay the first episodes). One warning per restart goes to stderr. Only a worker
that cannot even build its env, or ``max_restarts`` deaths in a row without a
completed call in between, raise.

Workers get ``OMP_NUM_THREADS=1`` (and the MKL/OpenBLAS equivalents) unless
these are set, and ignore SIGINT so that Ctrl-C reaches only the trainer.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import traceback
from typing import Any

import numpy as np

from recall2imagine.envs.base import Env

THREAD_VARS = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')
_SEED_STRIDE = 1_000_003  # seed offset per restart


def _worker(conn, task: str, seed: int, kwargs: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env = None
    try:
        from recall2imagine.envs import make_env

        env = make_env(task, seed=seed, **kwargs)
        conn.send(('ready', (env.obs_space, env.act_space)))
    except Exception:  # noqa: BLE001 - reported to the parent
        conn.send(('error', traceback.format_exc()))
        conn.close()
        return
    try:
        while True:
            try:
                cmd, arg = conn.recv()
            except (EOFError, OSError):  # parent gone
                break
            if cmd == 'close':
                break
            try:
                if cmd == 'reset':
                    out = env.reset()
                elif cmd == 'step':
                    out = env.step(arg)
                else:
                    raise ValueError(f'unknown command {cmd!r}')
                conn.send(('ok', out))
            except Exception:  # noqa: BLE001 - the parent re-raises it
                conn.send(('error', traceback.format_exc()))
    finally:
        try:
            env.close()
        except Exception:  # noqa: BLE001
            pass
        conn.close()


class WorkerError(RuntimeError):
    """The env inside a worker raised; the message holds its traceback."""


class ProcessEnv(Env):
    """``make_env(task, seed, **kwargs)`` running in a worker process.

    timeout: seconds to wait for one reply before the worker counts as dead
      (killed and restarted); None waits as long as the process lives.
    max_restarts: deaths in a row (no successful reply in between) before
      giving up with a RuntimeError.
    """

    def __init__(
        self,
        task: str,
        seed: int = 0,
        *,
        context: str = 'spawn',
        timeout: float | None = None,
        start_timeout: float = 600.0,
        max_restarts: int = 5,
        **kwargs,
    ):
        self.task = task
        self.seed = seed
        self._kwargs = {k: v for k, v in kwargs.items() if v is not None}
        self._ctx = mp.get_context(context)
        self._timeout = timeout
        self._start_timeout = start_timeout
        self._max_restarts = max_restarts
        self.restarts = 0
        self._deaths_in_row = 0
        self._proc = None
        self._conn = None
        self._pending = None  # 'reset' | 'step' | None
        self._last_obs = None
        self._closed = False
        self._start(seed)

    # Worker management.

    def _start(self, seed: int) -> None:
        parent, child = self._ctx.Pipe()
        saved = {k: os.environ.get(k) for k in THREAD_VARS}
        for k in THREAD_VARS:
            os.environ.setdefault(k, '1')
        try:
            proc = self._ctx.Process(
                target=_worker, args=(child, self.task, seed, self._kwargs), daemon=True, name='r2i-env'
            )
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self._proc, self._conn = proc, parent
        try:
            msg, payload = self._recv(self._start_timeout)
        except (EOFError, OSError, TimeoutError) as e:
            self._kill()
            raise RuntimeError(f'env worker for {self.task} died while starting ({e!r})') from None
        if msg == 'error':
            self._kill()
            raise WorkerError(f'env worker for {self.task} failed to start:\n{payload}')
        obs_space, act_space = payload
        if hasattr(self, 'obs_space') and (obs_space != self.obs_space or act_space != self.act_space):
            self._kill()
            raise RuntimeError(f'restarted env worker for {self.task} has different spaces')
        self.obs_space, self.act_space = obs_space, act_space

    def _recv(self, timeout):
        """One message; EOFError when the worker died, TimeoutError after ``timeout``."""
        waited = 0.0
        while True:
            if self._conn.poll(1.0 if timeout is None else min(1.0, max(timeout - waited, 0.0))):
                return self._conn.recv()
            waited += 1.0
            if not self._proc.is_alive() and not self._conn.poll(0):
                raise EOFError(f'worker exited with code {self._proc.exitcode}')
            if timeout is not None and waited >= timeout:
                raise TimeoutError(f'no reply within {timeout} s')

    def _kill(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=10)
            self._proc = None

    def _restart(self, reason: str) -> None:
        self._deaths_in_row += 1
        self.restarts += 1
        proc = self._proc
        self._kill()
        code = proc.exitcode if proc is not None else None
        if self._deaths_in_row > self._max_restarts:
            raise RuntimeError(
                f'env worker for {self.task} died {self._deaths_in_row} times in a row; giving up ({reason})'
            )
        print(
            f'warning: env worker for {self.task} (seed {self.seed}) died ({reason}, exit code {code}); '
            f'restarting it (restart {self.restarts}) and ending its current episode',
            file=sys.stderr,
            flush=True,
        )
        self._start(self.seed + self.restarts * _SEED_STRIDE)

    def _ended_obs(self) -> dict[str, Any]:
        if self._last_obs is not None:
            obs = {k: self._last_obs[k] for k in self.obs_space}
        else:
            obs = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.obs_space.items()}
        return self._pack(obs, 0.0, False, True, False)

    # Env interface.

    def reset_async(self) -> None:
        self._send('reset', None)

    def step_async(self, action) -> None:
        if self.act_space.discrete:
            action = self._discrete_action(action)
        else:
            action = np.asarray(action, np.float32)
        self._send('step', action)

    def _send(self, cmd, arg) -> None:
        if self._closed:
            raise RuntimeError('ProcessEnv is closed')
        if self._pending is not None:
            raise RuntimeError(f'result() of the previous {self._pending} call was not collected')
        self._pending = cmd
        try:
            self._conn.send((cmd, arg))
        except (OSError, EOFError, ValueError):
            pass  # dead worker: result() finds out and restarts it

    def result(self) -> dict[str, Any]:
        cmd, self._pending = self._pending, None
        if cmd is None:
            raise RuntimeError('result() without reset_async()/step_async()')
        while True:
            try:
                msg, payload = self._recv(self._timeout)
            except (EOFError, OSError, TimeoutError) as e:
                self._restart(str(e) or type(e).__name__)
                if cmd == 'step':
                    ended = self._ended_obs()
                    self._last_obs = None  # the next episode starts in the new worker
                    return ended
                # a reset: send it again to the new worker
                self._conn.send(('reset', None))
                continue
            if msg == 'error':
                raise WorkerError(f'env {self.task} raised in its worker:\n{payload}')
            self._deaths_in_row = 0
            self._last_obs = payload
            return payload

    def reset(self) -> dict[str, Any]:
        self.reset_async()
        return self.result()

    def step(self, action) -> dict[str, Any]:
        self.step_async(action)
        return self.result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._conn is not None:
            try:
                self._conn.send(('close', None))
            except (OSError, EOFError, ValueError):
                pass
        if self._proc is not None:
            self._proc.join(timeout=10)
        self._kill()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
