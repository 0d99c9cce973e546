"""Disk replay: the MemoryReplay rings, kept in preallocated sparse files.

Layout of ``directory`` (one directory per replay, e.g. ``--replay_dir``):

  ``NN_<key>.npy``       one file per step key, a ``.npy`` array of shape
                         ``[num_workers, capacity // num_workers, *shape]`` with
                         the step's own dtype (uint8 images stay uint8).
  ``stamps.npy``         int64 ``[num_workers, per_worker]``: 1 + the
                         ever-written index of the step in each slot, 0 when
                         empty or being written.
  ``replay_index.json``  counts, oldest readable step per worker, key / shape /
                         dtype schema, RNG state; rewritten atomically by
                         ``save()``.

The files are created at the first ``add()`` from its shapes and dtypes after
checking the free space, with ``ftruncate``: they are sparse, and blocks are
only allocated as steps are written (``du`` grows with the data, ``ls -l``
shows the full size at once). Steps are written with ``pwrite`` and windows
read with ``preadv`` straight into the batch arrays, so no page of the files is
ever mapped into this process: resident memory is the batch being built,
whatever the capacity (the kernel's page cache holds recently used file pages
and gives them back under memory pressure). The files are plain ``.npy``, so
``np.load(path, mmap_mode='r')`` (or the ``data`` property) opens them for
inspection.

Persistence: ``save()`` fsyncs the files and then rewrites the index (temp
file, fsync, rename). Re-opening the directory restores every step written
before the last ``save()``. Steps written after it are ignored: the counts come
from the index, and slots that those later steps overwrote are recognised by
their stamps and dropped from the readable range. (This is exact after a
process crash; after a power loss the kernel may have written pages of the
unsaved steps in any order, which stamps cannot order.) ``save(other_dir)``
also puts a copy of the index into ``other_dir`` (a checkpoint folder), and
``load(other_dir)`` restores that older view of the same ring, so a checkpoint
and its replay always agree.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import time
import uuid

import numpy as np

from recall2imagine.replay.memory import ReplayError, WindowSampler, check_add
from recall2imagine.util import atomic_write, fmt_bytes, fsync_dir, fsync_file

INDEX = 'replay_index.json'
STAMPS = 'stamps.npy'
_DATA_FILE = re.compile(r'^\d\d_.*\.npy$')
_VERSION = 1


def _create_sparse_npy(path, shape, dtype) -> None:
    """A ``.npy`` file of the given shape whose data part is a hole."""
    dtype = np.dtype(dtype)
    header = {
        'descr': np.lib.format.dtype_to_descr(dtype),
        'fortran_order': False,
        'shape': tuple(int(s) for s in shape),
    }
    with open(path, 'xb') as f:
        np.lib.format.write_array_header_2_0(f, header)
        size = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        os.ftruncate(f.fileno(), size)  # sparse: no block is written here


def _as_bytes(a: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous array (no copy)."""
    if not a.flags.c_contiguous:
        raise ValueError('array must be C-contiguous')
    return a.reshape(-1).view(np.uint8)


class _Npy:
    """An open ``.npy`` file read and written by byte offset."""

    def __init__(self, path, writable=True):
        self.path = pathlib.Path(path)
        with open(self.path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            read = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read is None:
                raise ReplayError(f'{self.path}: unsupported .npy version {version}')
            self.shape, fortran, self.dtype = read(f)
            self.offset = f.tell()
        if fortran:
            raise ReplayError(f'{self.path}: Fortran-ordered file')
        self.row = int(np.prod(self.shape[2:], dtype=np.int64)) * self.dtype.itemsize
        expected = self.offset + int(np.prod(self.shape[:2])) * self.row
        if os.path.getsize(self.path) < expected:
            raise ReplayError(
                f'{self.path} is truncated ({os.path.getsize(self.path)}'
                f' bytes, expected {expected}); use another --replay_dir '
                'or delete this one'
            )
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def at(self, worker, pos) -> int:
        return self.offset + (int(worker) * self.shape[1] + int(pos)) * self.row

    def write(self, buf, offset) -> None:
        view = memoryview(_as_bytes(buf))
        try:
            done = os.pwrite(self.fd, view, offset)
            while done < len(view):  # short writes are rare but legal
                n = os.pwrite(self.fd, view[done:], offset + done)
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(
                    e.errno,
                    f'replay disk full while writing {self.path}; '
                    'free space there or restart with a smaller '
                    '--replay_size or another --replay_dir',
                ) from e
            raise

    def read_into(self, out: np.ndarray, offset) -> None:
        view = memoryview(_as_bytes(out))
        done = os.preadv(self.fd, [view], offset)
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:
                raise ReplayError(f'{self.path}: short read at byte {offset + done}')
            done += n

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class DiskReplay(WindowSampler):
    """Same interface as MemoryReplay (add, sample, len, stored, num_windows,
    state_dict, load_state_dict, save, load, info), backed by sparse files."""

    KIND = 'disk'

    def __init__(self, directory, capacity: int, num_workers: int, seed: int = 0, check_space: bool = True):
        capacity, num_workers = int(capacity), int(num_workers)
        if num_workers < 1:
            raise ValueError('num_workers must be >= 1')
        if capacity // num_workers < 1:
            raise ValueError(f'capacity {capacity} < num_workers {num_workers}')
        self.directory = pathlib.Path(directory).expanduser()
        self.capacity = capacity
        self.num_workers = num_workers
        self.per_worker = capacity // num_workers
        self.check_space = check_space
        self.rng = np.random.default_rng(seed)
        self.counts = np.zeros(num_workers, np.int64)  # steps ever written
        self.oldest = np.zeros(num_workers, np.int64)  # oldest readable index
        self.schema: list[dict] | None = None
        self.ring_id: str | None = None
        self._files: dict[str, _Npy] = {}
        self._stamps: _Npy | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        index = self._read_index(self.directory)
        if index is not None:
            self._check_shape(index, self.directory / INDEX)
            if index['schema'] is not None:
                self._open(index['schema'], index['ring_id'])
            self.load_state_dict(index)

    # Files.

    def _specs(self, step):
        specs = []
        for i, (key, value) in enumerate(step.items()):
            if value.dtype.hasobject:
                raise ReplayError(f'step key {key!r} has dtype object, which cannot be stored on disk')
            safe = re.sub(r'[^A-Za-z0-9_.-]', '_', str(key))[:40]
            specs.append(
                dict(key=key, shape=list(value.shape[1:]), dtype=value.dtype.str, file=f'{i:02d}_{safe}.npy')
            )
        return specs

    def bytes_per_step(self, schema=None) -> int:
        """Disk bytes per stored step (all keys plus the 8-byte stamp)."""
        schema = self.schema if schema is None else schema
        return 8 + sum(
            int(np.prod(s['shape'], dtype=np.int64)) * np.dtype(s['dtype']).itemsize for s in schema
        )

    def _allocate(self, step) -> None:
        schema = self._specs(step)
        slots = self.num_workers * self.per_worker
        needed = slots * self.bytes_per_step(schema) + 4096 * (len(schema) + 1)
        stale = [p for p in self.directory.iterdir() if p.name == STAMPS or _DATA_FILE.match(p.name)]
        if self.check_space:
            free = shutil.disk_usage(self.directory).free
            free += sum(p.stat().st_blocks * 512 for p in stale)
            if needed > free:
                fits = int(free // self.bytes_per_step(schema) * 0.95)
                raise ReplayError(
                    f'disk replay needs {fmt_bytes(needed)} in {self.directory} for '
                    f'{self.capacity:,} steps ({self.bytes_per_step(schema):,} bytes '
                    f'each) but only {fmt_bytes(free)} is free there; shrink it with '
                    f'--replay_size N (N <= {fits:,} fits) or point --replay_dir at a '
                    'disk with more space'
                )
        for p in stale:  # files of a run that never saved an index
            p.unlink()
        for spec in schema:
            _create_sparse_npy(
                self.directory / spec['file'],
                (self.num_workers, self.per_worker, *spec['shape']),
                spec['dtype'],
            )
        _create_sparse_npy(self.directory / STAMPS, (self.num_workers, self.per_worker), np.int64)
        fsync_dir(self.directory)
        self._open(schema, uuid.uuid4().hex)
        self.save()  # the index now records the schema (and zero counts)

    def _open(self, schema, ring_id) -> None:
        self.close()
        files = {}
        try:
            for spec in schema:
                f = files[spec['key']] = _Npy(self.directory / spec['file'])
                expected = (self.num_workers, self.per_worker, *spec['shape'])
                if f.shape != expected or f.dtype != np.dtype(spec['dtype']):
                    raise ReplayError(
                        f'{f.path} holds {f.dtype}{list(f.shape)}, the index '
                        f'says {spec["dtype"]}{list(expected)}'
                    )
            stamps = _Npy(self.directory / STAMPS)
        except FileNotFoundError as e:
            for f in files.values():
                f.close()
            raise ReplayError(
                f'{self.directory} has an index but misses '
                f'{pathlib.Path(e.filename).name}; delete the '
                'directory or use another --replay_dir'
            ) from None
        except BaseException:
            for f in files.values():
                f.close()
            raise
        self._files, self._stamps = files, stamps
        self.schema, self.ring_id = schema, ring_id

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        if self._stamps is not None:
            self._stamps.close()
        self._files, self._stamps = {}, None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def data(self) -> dict[str, np.ndarray]:
        """Read-only memory maps ``{key: [W, C, ...]}`` for inspection (pages
        read through them count towards this process's RSS)."""
        return {k: np.load(f.path, mmap_mode='r') for k, f in self._files.items()}

    # Insertion.

    def add(self, step: dict, workers) -> None:
        """Adds one step per worker: every ``step[key]`` has leading dim N."""
        workers, step = check_add(step, workers, self.num_workers)
        values = self._values(step)
        pos = self.counts[workers] % self.per_worker
        zero = np.zeros(1, np.int64)
        # Invalidate the slots first, then write the data, then the stamps: a
        # process that dies in between leaves slots that restore as empty.
        for w, p in zip(workers, pos):
            self._stamps.write(zero, self._stamps.at(w, p))
        for spec, value in zip(self.schema, values):
            f = self._files[spec['key']]
            for i, (w, p) in enumerate(zip(workers, pos)):
                f.write(value[i : i + 1], f.at(w, p))
        for w, p in zip(workers, pos):
            stamp = np.array([self.counts[w] + 1], np.int64)
            self._stamps.write(stamp, self._stamps.at(w, p))
        self.counts[workers] += 1
        self.oldest[workers] = np.maximum(self.oldest[workers], self.counts[workers] - self.per_worker)

    def _values(self, step) -> list:
        """Arrays of ``step`` ([N, ...] each) in schema order, checked against
        the schema (allocating the files at the first call)."""
        if self.schema is None:
            self._allocate(step)
        if set(step) != set(self._files):
            raise KeyError(f'step keys {sorted(step)} differ from the stored keys {sorted(self._files)}')
        values = []
        for spec in self.schema:
            value = step[spec['key']]
            if list(value.shape[1:]) != spec['shape']:
                raise ReplayError(
                    f'step key {spec["key"]!r} has shape {list(value.shape[1:])} but '
                    f'the replay in {self.directory} stores {spec["shape"]}; use '
                    'another --replay_dir for a different environment'
                )
            values.append(np.ascontiguousarray(value, np.dtype(spec['dtype'])))
        return values

    def extend(self, worker: int, steps: dict) -> None:
        """Appends ``n`` consecutive steps of one worker (every ``steps[key]``
        has leading dim n) with one write per key and ring segment; the same
        as n add() calls for that worker alone."""
        worker = int(worker)
        if not 0 <= worker < self.num_workers:
            raise ValueError(f'worker id must lie in [0, {self.num_workers})')
        steps = {k: np.asarray(v) for k, v in steps.items()}
        n = len(next(iter(steps.values())))
        values = self._values(steps)
        skip = max(0, n - self.per_worker)  # rows that would be overwritten at once
        first = int(self.counts[worker]) + skip  # ever-written index of the first row kept
        segments = []  # (row0, row1, ring position of row0)
        row = skip
        while row < n:
            p = (first + row - skip) % self.per_worker
            end = min(n, row + self.per_worker - p)
            segments.append((row, end, p))
            row = end
        for r0, r1, p in segments:  # invalidate, write the data, then the stamps (as add())
            self._stamps.write(np.zeros(r1 - r0, np.int64), self._stamps.at(worker, p))
        for spec, value in zip(self.schema, values):
            f = self._files[spec['key']]
            for r0, r1, p in segments:
                f.write(value[r0:r1], f.at(worker, p))
        for r0, r1, p in segments:
            stamps = self.counts[worker] + 1 + np.arange(r0, r1, dtype=np.int64)
            self._stamps.write(stamps, self._stamps.at(worker, p))
        self.counts[worker] += n
        self.oldest[worker] = max(self.oldest[worker], self.counts[worker] - self.per_worker)

    # Sampling.

    def stored(self) -> np.ndarray:
        """Steps currently readable per worker."""
        return self.counts - self.oldest

    def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        """Returns ``{key: [batch_size, length, ...]}`` of uniform windows."""
        worker, start = self._draw(batch_size, length)
        pos = start % self.per_worker
        first = np.minimum(length, self.per_worker - pos)  # steps before the wrap
        batch = {}
        for spec in self.schema:
            f = self._files[spec['key']]
            out = np.empty((batch_size, length, *spec['shape']), spec['dtype'])
            for b in range(batch_size):
                n = int(first[b])
                f.read_into(out[b, :n], f.at(worker[b], pos[b]))
                if n < length:
                    f.read_into(out[b, n:], f.at(worker[b], 0))
            batch[spec['key']] = out
        if 'is_first' in batch:
            batch['is_first'][:, 0] = True
        return batch

    # Persistence.

    def state_dict(self) -> dict:
        """The index (JSON-able); the steps themselves stay in the files."""
        return dict(
            version=_VERSION,
            kind='disk',
            ring_id=self.ring_id,
            capacity=self.capacity,
            num_workers=self.num_workers,
            per_worker=self.per_worker,
            schema=self.schema,
            counts=[int(c) for c in self.counts],
            oldest=[int(o) for o in self.oldest],
            rng=self.rng.bit_generator.state,
            time=time.time(),
        )

    def load_state_dict(self, d: dict) -> None:
        """Restores counts and RNG from an index of this ring (possibly an older
        one); slots overwritten since that index was taken are dropped."""
        self._check_shape(d, 'replay state')
        if d['ring_id'] is not None and d['ring_id'] != self.ring_id:
            where = f'holds ring {self.ring_id}' if self.ring_id else 'holds no replay files'
            raise ReplayError(
                f'the saved replay state belongs to ring {d["ring_id"]} but '
                f'{self.directory} {where} (was it deleted or recreated, or does '
                '--replay_dir point elsewhere?)'
            )
        if d['schema'] is not None and d['schema'] != self.schema:
            raise ReplayError(
                f'saved replay schema {d["schema"]} differs from the one in {self.directory}: {self.schema}'
            )
        counts = np.asarray(d['counts'], np.int64)
        oldest = np.maximum(np.asarray(d['oldest'], np.int64), counts - self.per_worker)
        if self._stamps is not None and counts.any():
            stamps = np.empty((self.num_workers, self.per_worker), np.int64)
            self._stamps.read_into(stamps, self._stamps.offset)
            n = counts[:, None]
            p = np.arange(self.per_worker)[None]
            expected = n - 1 - (n - 1 - p) % self.per_worker  # newest i < n at p
            in_range = expected >= oldest[:, None]
            bad = in_range & (stamps != expected + 1)
            oldest = np.maximum(oldest, np.where(bad, expected + 1, 0).max(1))
        self.counts, self.oldest = counts, oldest
        self.rng.bit_generator.state = d['rng']

    def _check_shape(self, d, where) -> None:
        if d.get('kind') != 'disk' or d.get('version') != _VERSION:
            raise ReplayError(f'{where} is not a disk replay index (version {_VERSION})')
        if (int(d['capacity']), int(d['num_workers'])) != (self.capacity, self.num_workers):
            raise ReplayError(
                f'{where} is for a replay of capacity {d["capacity"]} with '
                f'{d["num_workers"]} workers; this run asks for capacity '
                f'{self.capacity} with {self.num_workers}: use the same '
                '--replay_size and envs.amount, or another --replay_dir'
            )

    @staticmethod
    def _read_index(directory):
        path = pathlib.Path(directory) / INDEX
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ReplayError(f'{path} is corrupt; delete {directory} or use another --replay_dir') from None

    def save(self, directory=None, shared=None) -> dict:
        """Flushes the files and writes the index atomically; with ``directory``
        (e.g. a checkpoint folder) a copy of the index goes there too. Returns a
        JSON-able summary. ``shared`` (a checkpoint's SharedFiles) is not needed: the
        steps stay in the ring's own files."""
        for f in [*self._files.values(), self._stamps]:
            if f is not None:
                fsync_file(f.fd)
        text = json.dumps(self.state_dict()).encode()
        write = lambda f: f.write(text)
        atomic_write(self.directory / INDEX, write)
        if directory is not None:
            directory = pathlib.Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            if directory.resolve() != self.directory.resolve():
                atomic_write(directory / INDEX, write)
        return self.info()

    def load(self, directory=None, shared=None) -> bool:
        """Restores from the index in ``directory`` (default: the ring's own);
        False when there is none. ``shared`` is not needed (see ``save``)."""
        index = self._read_index(self.directory if directory is None else directory)
        if index is None:
            return False
        self.load_state_dict(index)
        return True

    def info(self) -> dict:
        return dict(
            super().info(),
            directory=str(self.directory),
            ring_id=self.ring_id,
            bytes_per_step=self.bytes_per_step() if self.schema else None,
        )
