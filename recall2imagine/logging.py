"""Small metrics logger: metrics.jsonl (+ scores.jsonl) and one console line.

(The module name shadows the stdlib ``logging`` inside this package on
purpose; other modules use absolute imports.)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

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


class Logger:
    def __init__(self, logdir, outputs=('jsonl', 'console')):
        unknown = set(outputs) - {'jsonl', 'console'}
        if unknown:
            raise ValueError(f'unknown logger outputs {sorted(unknown)}')
        self.logdir = str(logdir)
        self.outputs = tuple(outputs)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._files = {}
        if 'jsonl' in self.outputs:
            os.makedirs(self.logdir, exist_ok=True)

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

    def _file(self, name):
        if name not in self._files:
            self._files[name] = open(os.path.join(self.logdir, name), 'a')
        return self._files[name]

    def write(self, step: int) -> dict[str, float]:
        """Writes the averages of everything added since the last write."""
        if not self._sums:
            return {}
        metrics = {k: self._sums[k] / self._counts[k] for k in sorted(self._sums)}
        self._sums.clear()
        self._counts.clear()
        if 'jsonl' in self.outputs:
            clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
            line = json.dumps({'step': int(step), **clean})
            f = self._file('metrics.jsonl')
            f.write(line + '\n')
            f.flush()
            scores = {k: v for k, v in clean.items() if k.endswith('episode/score')}
            if scores:
                f = self._file('scores.jsonl')
                f.write(json.dumps({'step': int(step), **scores}) + '\n')
                f.flush()
        if 'console' in self.outputs:
            print(self._console_line(step, metrics), file=sys.stdout, flush=True)
        return metrics

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

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
