"""In-memory FIFO replay: one ring buffer per worker, uniform window sampling.

Each worker (env) owns a ring of ``capacity // num_workers`` steps. A window is
``length`` consecutive steps of one worker's stream; windows may cross episode
boundaries (spec 7.2) and are drawn uniformly over all windows still stored.
``is_first`` of the first step of every window is set True (spec 7.1).
"""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np

from recall2imagine.util import atomic_write, fmt_bytes, physical_memory


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class ReplayError(ValueError):
    """A replay cannot be created, opened or restored; the message says why and
    what to change."""


# Helpers shared with DiskReplay (replay/disk.py).


def check_add(step: dict, workers, num_workers: int):
    """Validates one add() call; returns (workers int64 [N], step of arrays)."""
    workers = np.asarray(workers, np.int64).reshape(-1)
    step = {k: np.asarray(v) for k, v in step.items()}
    if len(np.unique(workers)) != len(workers):
        raise ValueError('workers of one add() call must be distinct')
    if np.any(workers < 0) or np.any(workers >= num_workers):
        raise ValueError(f'worker ids must lie in [0, {num_workers})')
    for key, value in step.items():
        if value.ndim == 0 or len(value) != len(workers):
            raise ValueError(f'{key}: leading dim {value.shape[:1]} != {len(workers)} workers')
    return workers, step


def draw_windows(rng, counts, stored, batch_size: int, length: int, num_steps: int):
    """Uniform windows over all stored windows of all workers.

    ``counts[w]``: steps ever written by worker w; ``stored[w]``: how many of
    its newest steps are still readable. Returns ``(worker [B], start [B])``
    with ``start`` the ever-written index of the window's first step.
    """
    windows = np.maximum(stored - length + 1, 0)
    total = int(windows.sum())
    if total == 0:
        raise ValueError(f'no window of length {length} stored yet ({num_steps} steps in replay)')
    flat = rng.integers(0, total, size=batch_size)
    cum = np.cumsum(windows)
    worker = np.searchsorted(cum, flat, side='right')
    offset = flat - (cum[worker] - windows[worker])
    start = counts[worker] - stored[worker] + offset
    return worker, start


class WindowSampler:
    """What both replay kinds share: per-worker rings of `per_worker` steps whose readable steps
    per worker are `stored()`, sampled as uniform windows of consecutive steps of one worker."""

    def __len__(self) -> int:
        return int(self.stored().sum())

    def num_windows(self, length: int) -> int:
        return int(np.maximum(self.stored() - length + 1, 0).sum())

    def info(self) -> dict:
        """Small JSON-able summary for checkpoint metadata."""
        return dict(
            kind=self.KIND,
            size=len(self),
            capacity=self.capacity,
            num_workers=self.num_workers,
            counts=[int(c) for c in self.counts],
        )

    def _draw(self, batch_size: int, length: int):
        """(worker [B], start [B]): start is the ever-written index of each window's first step."""
        if length > self.per_worker:
            raise ValueError(f'length {length} exceeds the per-worker ring size {self.per_worker}')
        return draw_windows(self.rng, self.counts, self.stored(), batch_size, length, len(self))


class MemoryReplay(WindowSampler):
    def __init__(self, capacity: int, num_workers: int, seed: int = 0):
        capacity, num_workers = int(capacity), int(num_workers)
        if num_workers < 1:
            raise ValueError('num_workers must be >= 1')
        if capacity // num_workers < 1:
            raise ValueError(f'capacity {capacity} < num_workers {num_workers}')
        self.capacity = capacity
        self.num_workers = num_workers
        self.per_worker = capacity // num_workers
        self.rng = np.random.default_rng(seed)
        # Total steps ever written per worker; ring position = count % per_worker.
        self.counts = np.zeros(num_workers, np.int64)
        self.data: dict[str, np.ndarray] | None = None  # key -> [W, C, ...]
        self._chunks: dict[tuple, str] = {}  # (worker, start, length) -> shared file holding those steps

    # Insertion.

    def _allocate(self, step: dict[str, np.ndarray]):
        """The rings, zeroed lazily by the OS (pages cost memory once written), refused up front
        when the whole capacity would not fit in this machine's memory."""
        step = {k: np.asarray(v) for k, v in step.items()}
        per_step = sum(v.dtype.itemsize * int(np.prod(v.shape[1:])) for v in step.values())
        needed, ram = per_step * self.num_workers * self.per_worker, physical_memory()
        fits = f' (N <= {int(ram // 2 // per_step):,} takes half of its {fmt_bytes(ram)})' if ram else ''
        message = (
            f'the memory replay of {self.capacity:,} steps needs {fmt_bytes(needed)} ({fmt_bytes(per_step)} '
            f"per step), more than this machine's memory; shrink it with --replay_size N{fits} or use "
            '--replay disk'
        )
        if ram and needed > ram:
            raise ReplayError(message)
        try:
            self.data = {
                k: np.zeros((self.num_workers, self.per_worker) + v.shape[1:], v.dtype)
                for k, v in step.items()
            }
        except MemoryError:
            self.data = None
            raise ReplayError(message) from None

    def add(self, step: dict, workers) -> None:
        """Adds one step per worker: every ``step[key]`` has leading dim N."""
        workers, step = check_add(step, workers, self.num_workers)
        if self.data is None:
            self._allocate(step)
        if set(step) != set(self.data):
            raise KeyError(f'step keys {sorted(step)} differ from the stored keys {sorted(self.data)}')
        pos = self.counts[workers] % self.per_worker
        for key, value in step.items():
            self.data[key][workers, pos] = value
        self.counts[workers] += 1

    def extend(self, worker: int, steps: dict) -> None:
        """Appends ``n`` consecutive steps of one worker (every ``steps[key]``
        has leading dim n); the same as n add() calls for that worker alone."""
        steps = {k: np.asarray(v) for k, v in steps.items()}
        n = len(next(iter(steps.values())))
        if self.data is None:
            self._allocate(steps)
        if set(steps) != set(self.data):
            raise KeyError(f'step keys {sorted(steps)} differ from the stored keys {sorted(self.data)}')
        skip = max(0, n - self.per_worker)  # rows that would be overwritten at once
        pos = (self.counts[worker] + np.arange(skip, n)) % self.per_worker
        for key, value in steps.items():
            self.data[key][worker, pos] = value[skip:]
        self.counts[worker] += n

    # Sampling.

    def stored(self) -> np.ndarray:
        """Steps currently stored per worker."""
        return np.minimum(self.counts, self.per_worker)

    def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        """Returns ``{key: [batch_size, length, ...]}`` of uniform windows."""
        worker, start = self._draw(batch_size, length)
        # Ever-written index of each window start -> ring positions.
        pos = (start[:, None] + np.arange(length)[None]) % self.per_worker
        w = worker[:, None]
        batch = {key: arr[w, pos] for key, arr in self.data.items()}
        if 'is_first' in batch:
            batch['is_first'][:, 0] = True
        return batch

    # Checkpointing.

    def state_dict(self) -> dict:
        """Arrays under 'data' are the live buffers (no copy): serialise the
        result before adding more steps."""
        return {
            'capacity': self.capacity,
            'num_workers': self.num_workers,
            'counts': self.counts.copy(),
            'data': ({} if self.data is None else dict(self.data)),
            'rng': self.rng.bit_generator.state,  # nested dict of ints
        }

    def load_state_dict(self, d: dict) -> None:
        if (int(d['capacity']), int(d['num_workers'])) != (self.capacity, self.num_workers):
            raise ValueError(
                f'replay state has capacity {d["capacity"]} and '
                f'{d["num_workers"]} workers; this replay has {self.capacity} and '
                f'{self.num_workers}'
            )
        self.counts = np.asarray(d['counts'], np.int64).copy()
        self.data = {k: np.array(v) for k, v in d['data'].items()} if len(d['data']) else None
        self.rng.bit_generator.state = d['rng']

    # Saving to / loading from a directory (the interface DiskReplay shares).

    KIND = 'memory'
    FILENAME = 'replay.npz'
    CHUNK = 4096  # steps of one worker per shared chunk file

    def _chunk(self) -> int:
        return max(1, min(self.CHUNK, self.per_worker // 4))

    def save(self, directory, shared=None) -> dict:
        """Writes ``<directory>/replay.npz`` atomically (temp file, fsync, rename). With
        ``shared`` (checkpoint.SharedFiles), every full chunk of ``_chunk()`` steps of one
        worker goes there once and later checkpoints re-use it, so kept checkpoints hold
        the replay about once; the folder keeps only the steps outside such chunks.
        Returns a small JSON-able summary for checkpoint metadata."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keys = [] if self.data is None else list(self.data)
        chunk, chunks, loose = self._chunk(), [], []
        stored = self.stored()
        for w in range(self.num_workers):
            lo, hi = int(self.counts[w] - stored[w]), int(self.counts[w])
            covered = np.zeros(hi - lo, bool)
            for k in range(lo // chunk, hi // chunk):
                begin = k * chunk
                if shared is None:
                    break
                name = self._chunks.get((w, begin, chunk))
                if name is not None and not shared.use(name):  # deleted by hand: store it again if we can
                    name = None
                if name is None and begin >= lo:  # full and still in the ring
                    rows = self._rows(w, np.arange(begin, begin + chunk))
                    name = shared.put(
                        f'replay-w{w}-{begin}',
                        _npz_bytes(
                            dict(rows, header=np.array(json.dumps(dict(keys=keys, worker=w, start=begin))))
                        ),
                    )
                    self._chunks[(w, begin, chunk)] = name
                if name is not None:
                    chunks.append(dict(name=name, worker=w, start=begin, length=chunk))
                    covered[max(begin, lo) - lo : begin + chunk - lo] = True
            loose.append((w, lo + np.flatnonzero(~covered)))
        header = dict(
            kind='memory',
            version=2,
            capacity=self.capacity,
            num_workers=self.num_workers,
            keys=keys,
            rng=self.rng.bit_generator.state,
            chunks=chunks,
        )
        worker = np.concatenate([np.full(len(i), w) for w, i in loose])
        index = np.concatenate([i for _, i in loose])
        arrays = {
            'header': np.array(json.dumps(header)),
            'counts': self.counts,
            'worker': worker,
            'index': index,
        }
        if keys:
            pos = index % self.per_worker
            arrays.update({f'data{i}': self.data[key][worker, pos] for i, key in enumerate(keys)})
        atomic_write(directory / self.FILENAME, lambda f: np.savez(f, **arrays))
        return self.info()

    def _rows(self, worker: int, index) -> dict[str, np.ndarray]:
        """``{data<i>: [N, ...]}``: the steps of one worker with ever-written indices ``index``."""
        return {f'data{i}': arr[worker, index % self.per_worker] for i, arr in enumerate(self.data.values())}

    def load(self, directory, shared=None) -> bool:
        """Restores from ``save(directory, shared)``; False when there is nothing there.
        Raises ReplayError when the file belongs to another replay shape."""
        path = pathlib.Path(directory) / self.FILENAME
        if not path.exists():
            return False
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(str(f['header']))
            if header.get('kind') != 'memory':
                raise ReplayError(f'{path} holds a {header.get("kind")} replay, not a memory replay')
            if (header['capacity'], header['num_workers']) != (self.capacity, self.num_workers):
                raise ReplayError(
                    f'{path} holds a replay of capacity {header["capacity"]} with '
                    f'{header["num_workers"]} workers; this run asks for capacity '
                    f'{self.capacity} with {self.num_workers}: use the same '
                    '--replay_size and envs.amount'
                )
            counts = np.asarray(f['counts'], np.int64)
            keys = header['keys']
            data = {}
            for i, key in enumerate(keys):
                saved = f[f'data{i}']
                data[key] = np.zeros((self.num_workers, self.per_worker) + saved.shape[1:], saved.dtype)
                if header.get('version', 1) == 1:  # [W, filled, ...]: ring slots as they were
                    data[key][:, : saved.shape[1]] = saved
                else:
                    data[key][f['worker'], f['index'] % self.per_worker] = saved
        self._chunks = {}
        lo = counts - np.minimum(counts, self.per_worker)
        for c in header.get('chunks', []):
            if shared is None:
                raise ReplayError(f'{path} uses shared chunk files: load it through its Checkpointer')
            w, begin = c['worker'], c['start']
            with np.load(shared.path(c['name']), allow_pickle=False) as f:
                index = np.arange(max(begin, lo[w]), begin + c['length'])
                for i, key in enumerate(keys):
                    data[key][w, index % self.per_worker] = f[f'data{i}'][index - begin]
            self._chunks[(w, begin, c['length'])] = c['name']
        self.counts = counts
        self.data = data or None
        self.rng.bit_generator.state = header['rng']
        return True
