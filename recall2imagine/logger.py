"""Metrics logger (metrics.jsonl + scores.jsonl, TensorBoard, Weights & Biases, console)
and a live one-line progress display.
"""

from __future__ import annotations

import collections
import io
import json
import math
import netrc
import os
import sys
import time

import numpy as np

from recall2imagine.util import atomic_write, backup_path, warn

# Metrics shown on the console line, in this order, when present.
_CONSOLE_KEYS = (
    'episode/score',
    'episode/length',
    'fps',
    'model_loss',
    'actor_loss',
    'critic_loss',
    'replay/size',
)

# Outputs a user can select (`--run.loggers`); 'console' is the plain periodic line.
LOGGERS = ('jsonl', 'tensorboard', 'wandb')
_OUTPUTS = LOGGERS + ('console',)


def check_outputs(outputs) -> tuple[str, ...]:
    """Returns `outputs` as a tuple; raises ValueError (one line) naming the valid names."""
    outputs = tuple(str(o).strip() for o in outputs if str(o).strip())
    unknown = [o for o in outputs if o not in _OUTPUTS]
    if unknown:
        raise ValueError(
            f'unknown logger {", ".join(map(repr, unknown))} in --run.loggers; valid: {", ".join(LOGGERS)}'
        )
    return outputs


def wandb_logged_in() -> bool:
    """Whether W&B has credentials here (WANDB_API_KEY or a netrc entry for api.wandb.ai)."""
    if os.environ.get('WANDB_API_KEY'):
        return True
    try:
        return netrc.netrc().authenticators('api.wandb.ai') is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _one_line(error: BaseException) -> str:
    text = ' '.join(str(error).split())
    return f'{type(error).__name__}: {text[:300]}' if text else type(error).__name__


def rewind_jsonl(path, step: int) -> bool:
    """Drops the rows of a jsonl log whose `step` is after `step` (and a line cut by a crash); the
    file as it was is kept as `<path>.<n>.bak`. Returns whether anything was dropped."""
    if not os.path.exists(path):
        return False
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and int(row.get('step', 0)) <= step:
            keep.append(line if line.endswith('\n') else line + '\n')
    if keep == lines:
        return False
    os.replace(path, backup_path(path))
    atomic_write(path, lambda f: f.write(''.join(keep).encode()))
    return True


class Logger:
    """Averages scalars between writes and writes them to the selected outputs.

    outputs: any of 'jsonl' (metrics.jsonl and scores.jsonl in `logdir`; always written by
      train.py), 'tensorboard' (event files in `<logdir>/tb`), 'wandb' (a W&B run named
      `wandb_name`, offline unless credentials exist, files under $WANDB_DIR or `logdir`) and
      'console' (one line per write, through `console` when given, else print).
    A backend that fails to start or to write prints a one-line warning and is switched off;
    the other outputs go on.
    """

    def __init__(
        self,
        logdir,
        outputs=('jsonl', 'console'),
        wandb_name: str = '',
        config=None,
        console=None,
        resume_step: int | None = None,
    ):
        """resume_step: the step of the checkpoint a run resumed from. Rows logged after it (by the
        segment that crashed or was killed after its last checkpoint) are dropped from the jsonl
        files, kept in `<name>.<n>.bak`, and TensorBoard purges them, so the logged step never
        goes back."""
        self.outputs = check_outputs(outputs)
        self.resume_step = resume_step
        self._last_step = None  # of the newest row in metrics.jsonl (set below once rewound)
        self.logdir = str(logdir)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._files = {}
        self._console = console
        self._tb = None
        self._wandb = None
        self.tb_dir = None
        self.wandb_dir = None  # the run's folder (offline-run-* / run-*) once started
        self.wandb_offline = False
        os.makedirs(self.logdir, exist_ok=True)
        if resume_step is not None:
            for name in ('metrics.jsonl', 'scores.jsonl'):
                rewind_jsonl(os.path.join(self.logdir, name), resume_step)
        self._last_step = _last_step(os.path.join(self.logdir, 'metrics.jsonl'))
        if 'tensorboard' in self.outputs:
            self._start_tensorboard()
        if 'wandb' in self.outputs:
            self._start_wandb(wandb_name or os.path.basename(os.path.normpath(self.logdir)), config)

    def _start_tensorboard(self):
        tb_dir = os.path.join(self.logdir, 'tb')
        try:
            from tensorboardX import SummaryWriter

            purge = None if self.resume_step is None else int(self.resume_step) + 1
            self._tb = SummaryWriter(tb_dir, flush_secs=30, purge_step=purge)
            self.tb_dir = tb_dir
        except Exception as e:  # noqa: BLE001 - any failure only disables this output
            warn(f'TensorBoard logging is off ({_one_line(e)})')

    def _start_wandb(self, name, config):
        if 'WANDB_MODE' not in os.environ and not wandb_logged_in():
            os.environ['WANDB_MODE'] = 'offline'
        os.environ.setdefault('WANDB_DIR', self.logdir)
        try:
            import wandb  # lazily: only runs that ask for W&B pay for the import

            os.makedirs(os.environ['WANDB_DIR'], exist_ok=True)
            settings = wandb.Settings(console='off', quiet=True, x_disable_stats=True)
            run = wandb.init(
                project=os.environ.get('WANDB_PROJECT', 'recall2imagine'),
                name=name,
                config=dict(config or {}),
                dir=os.environ['WANDB_DIR'],
                settings=settings,
            )
            self._wandb = run
            self.wandb_dir = os.path.dirname(run.dir.rstrip(os.sep)) if run.dir else os.environ['WANDB_DIR']
            mode = getattr(run.settings, 'mode', None) or os.environ.get('WANDB_MODE')
            self.wandb_offline = mode in ('offline', 'dryrun')
            try:  # the run id, as upstream writes it
                with open(os.path.join(os.environ['WANDB_DIR'], 'wandb', 'wandb_runid.txt'), 'w') as f:
                    f.write(run.id + '\n')
            except OSError:
                pass
        except Exception as e:  # noqa: BLE001 - ImportError, init timeouts, bad settings, ...
            warn(f'W&B logging is off ({_one_line(e)})')
            self._wandb = None

    def scalar(self, name: str, value) -> None:
        value = float(np.asarray(value, np.float64).reshape(()))
        self._sums[name] = self._sums.get(name, 0.0) + value
        self._counts[name] = self._counts.get(name, 0) + 1

    def add(self, mapping, prefix: str | None = None) -> None:
        """Adds numeric entries; arrays with more than one element are averaged."""
        for key, value in mapping.items():
            name = f'{prefix}/{key}' if prefix else str(key)
            if isinstance(value, (str, bytes)):
                continue
            arr = np.asarray(value)
            if arr.dtype.kind not in 'biuf' or arr.size == 0:
                continue
            self.scalar(name, arr.astype(np.float64).mean())

    def episode(self, step: int, score: float, length: int, prefix: str = 'episode') -> None:
        """One line per finished episode in scores.jsonl, written at once (survives a crash)."""
        if 'jsonl' in self.outputs:
            f = self._file('scores.jsonl')
            f.write(
                json.dumps(
                    {'step': int(step), f'{prefix}/score': float(score), f'{prefix}/length': int(length)}
                )
                + '\n'
            )
            f.flush()

    def _file(self, name):
        if name not in self._files:
            self._files[name] = open(os.path.join(self.logdir, name), 'a')
        return self._files[name]

    def write(self, step: int) -> dict[str, float]:
        """Writes the averages of everything added since the last write. A step not after the last
        one written (or resumed from) writes nothing: its values go into the next row, so the
        logged steps only increase."""
        if not self._sums or (self._last_step is not None and step <= self._last_step):
            return {}
        self._last_step = int(step)
        metrics = {k: self._sums[k] / self._counts[k] for k in sorted(self._sums)}
        self._sums.clear()
        self._counts.clear()
        if 'jsonl' in self.outputs:
            clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
            line = json.dumps({'step': int(step), **clean})
            f = self._file('metrics.jsonl')
            f.write(line + '\n')
            f.flush()
        if self._tb is not None:
            try:
                for name, value in metrics.items():
                    self._tb.add_scalar(name, value, int(step))
                self._tb.flush()
            except Exception as e:  # noqa: BLE001
                warn(f'TensorBoard logging stopped ({_one_line(e)})')
                self._close_tb()
        if self._wandb is not None:
            try:
                self._wandb.log(metrics, step=int(step))
            except Exception as e:  # noqa: BLE001
                warn(f'W&B logging stopped ({_one_line(e)})')
                self._close_wandb()
        if 'console' in self.outputs:
            line = self._console_line(step, metrics)
            if self._console is not None:
                self._console(line)
            else:
                print(line, file=sys.stdout, flush=True)
        return metrics

    def video(self, name: str, gif: bytes, path: str, step: int) -> None:
        """An animated GIF (already written to `path`) to TensorBoard (image plugin) and W&B."""
        self._media(name, gif, path, step, 'Video')

    def image(self, name: str, png: bytes, path: str, step: int) -> None:
        """A PNG (already written to `path`) to TensorBoard and W&B."""
        self._media(name, png, path, step, 'Image')

    def _media(self, name, data, path, step, kind):
        if self._tb is not None:
            try:
                from PIL import Image
                from tensorboardX.proto.summary_pb2 import Summary

                width, height = Image.open(io.BytesIO(data)).size
                image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
                self._tb._get_file_writer().add_summary(
                    Summary(value=[Summary.Value(tag=name, image=image)]), int(step)
                )
                self._tb.flush()
            except Exception as e:  # noqa: BLE001
                warn(f'TensorBoard {kind.lower()} {name} not written ({_one_line(e)})')
        if self._wandb is not None:
            try:
                import wandb

                media = wandb.Video(path, format='gif') if kind == 'Video' else wandb.Image(path)
                self._wandb.log({name: media}, step=int(step))
            except Exception as e:  # noqa: BLE001
                warn(f'W&B {kind.lower()} {name} not written ({_one_line(e)})')

    @staticmethod
    def _console_line(step, metrics) -> str:
        shown = []
        for key in _CONSOLE_KEYS:
            for name, value in metrics.items():
                if key in name and name not in (n for n, _ in shown):
                    shown.append((name, value))
                    break
        if not shown:
            shown = list(metrics.items())[:6]
        parts = ' | '.join(f'{n} {v:.4g}' for n, v in shown)
        bad = [n for n, v in metrics.items() if not math.isfinite(v)]
        if bad:
            parts += ' | non-finite: ' + ', '.join(bad[:5]) + (f' (+{len(bad) - 5})' if len(bad) > 5 else '')
        return f'[{time.strftime("%H:%M:%S")}] step {int(step)} | {parts}'

    def summary(self) -> str:
        """One line saying where the logs are and how to view them."""
        parts = []
        if 'jsonl' in self.outputs:
            parts.append(f'metrics {os.path.join(self.logdir, "metrics.jsonl")}')
        if self.tb_dir:
            parts.append(f'TensorBoard: tensorboard --logdir {self.tb_dir}')
        if self.wandb_dir:
            if self.wandb_offline:
                parts.append(f'W&B (offline): wandb sync {self.wandb_dir}')
            else:
                url = getattr(self._wandb, 'url', None) if self._wandb is not None else None
                parts.append(f'W&B: {url or self.wandb_dir}')
        return 'logs: ' + (' | '.join(parts) if parts else self.logdir)

    def _close_tb(self):
        tb, self._tb = self._tb, None
        if tb is not None:
            try:
                tb.close()
            except Exception:  # noqa: BLE001
                pass

    def _close_wandb(self):
        run, self._wandb = self._wandb, None
        if run is not None:
            try:
                run.finish()
            except Exception as e:  # noqa: BLE001
                warn(f'W&B run did not finish cleanly ({_one_line(e)})')

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._close_tb()
        self._close_wandb()


def _last_step(path):
    """The step of the last complete row of a jsonl log, or None (no file, no row)."""
    try:
        with open(path, 'rb') as f:
            f.seek(max(0, os.path.getsize(path) - 65536))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)['step'])
        except (ValueError, KeyError, TypeError):
            continue
    return None


class NullLogger:
    """The logger of processes other than process 0 in a multi-process run: writes nothing."""

    def add(self, mapping, prefix=None) -> None:
        pass

    def episode(self, step, score, length, prefix='episode') -> None:
        pass

    def write(self, step) -> dict:
        return {}

    def summary(self) -> str:
        return 'logs: written by process 0'

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return '?'
    seconds = int(seconds)
    if seconds >= 86400:
        return f'{seconds // 86400}d{seconds % 86400 // 3600:02d}h'
    if seconds >= 3600:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    if seconds >= 60:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds}s'


class Progress:
    """A live status line on a terminal: env steps / total, fps, train updates/s, recent mean
    return and ETA, redrawn with a carriage return at most every `interval` seconds.

    On a stream that is not a TTY (a file, a pipe, CI) it writes nothing; the periodic
    Logger lines are the progress there. `update` is cheap enough to call every env step.
    """

    def __init__(
        self, total: int, stream=None, interval: float = 0.5, window: float = 10.0, clock=time.monotonic
    ):
        self.total = int(total)
        self.stream = sys.stdout if stream is None else stream
        self.interval = float(interval)
        self.window = float(window)
        self._clock = clock
        try:
            self.enabled = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.enabled = False
        self._next = 0.0
        self._samples = collections.deque()  # (time, step, updates) over the last `window` s
        self._last = None  # the latest (step, updates, recent_return)
        self._width = 0  # length of the line on screen; 0 when none is shown

    def update(self, step: int, updates: int = 0, recent_return=None) -> None:
        """recent_return: a number, or a sequence of recent episode returns (averaged only
        when the line is drawn)."""
        if not self.enabled:
            return
        self._last = (step, updates, recent_return)
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self.interval
        self._samples.append((now, int(step), int(updates)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        self._draw(self.line(step, updates, recent_return))

    def line(self, step, updates, recent_return) -> str:
        fps = ups = float('nan')
        if len(self._samples) >= 2:
            (t0, s0, u0), (t1, s1, u1) = self._samples[0], self._samples[-1]
            dt = max(t1 - t0, 1e-9)
            fps, ups = (s1 - s0) / dt, (u1 - u0) / dt
        if recent_return is not None and not isinstance(recent_return, (int, float, np.number)):
            values = list(recent_return)
            recent_return = float(np.mean(values)) if values else None
        pct = f' ({100 * step / self.total:.0f}%)' if self.total > 0 else ''
        parts = [
            f'step {int(step):,}/{self.total:,}{pct}',
            f'{fps:,.0f} fps' if math.isfinite(fps) else '- fps',
            f'{ups:.2f} upd/s' if math.isfinite(ups) else '- upd/s',
            f'return {recent_return:.3f}' if recent_return is not None else 'return -',
            f'ETA {_duration((self.total - step) / fps) if fps > 0 else "?"}',
        ]
        return ' | '.join(parts)

    def _draw(self, text: str) -> None:
        pad = ' ' * max(self._width - len(text), 0)
        self.stream.write('\r' + text + pad)
        self.stream.flush()
        self._width = len(text)

    def _clear(self) -> None:
        if self._width:
            self.stream.write('\r' + ' ' * self._width + '\r')
            self._width = 0

    def println(self, text: str) -> None:
        """Prints a full line (e.g. a Logger console line) above the status line."""
        if self.enabled:
            self._clear()
            self.stream.write(text + '\n')
            self.stream.flush()
            self._next = 0.0  # redraw the status on the next update
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Leaves the last status on its own line (TTY only)."""
        if self.enabled and self._last is not None:
            self._draw(self.line(*self._last))
            self.stream.write('\n')
            self.stream.flush()
            self._width = 0
        self._last = None
