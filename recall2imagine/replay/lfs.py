"""Two-tier replay (``--use_lfs True --lfs_dir DIR``, or ``--replay lfs``).

Tier 1, the *local* tier, is an ordinary MemoryReplay or DiskReplay (under
``--replay_dir``, default ``<logdir>/replay``): every step goes there at once
and all sampling reads from it. Tier 2, the *durable* tier, is ``lfs_dir``
(persistent storage, e.g. a network or large-file store): every step is also
staged in memory and written there in *chunks*, and it is the source of truth
on restart. The local tier is only a cache of it.

Layout of ``lfs_dir``:

  ``w<worker:04d>-<start:012d>.chunk``  consecutive steps ``[start, start+n)``
        of one env worker's durable stream (positions count every step that
        worker ever stored, across restarts). ``n`` is ``chunk`` steps
        (``batch_length`` in train.py), fewer for the newest chunk when it was
        flushed early (checkpoint, close); that file is later replaced by the
        full one under the same name.
  ``LFS.json``  number of workers and the step schema (key, shape, dtype).
  ``LOCK``      flock'ed while a run uses the directory.

  The directory listing is the index: no manifest needs to be kept in step.

Chunk file: the 8 bytes ``R2ICHNK1``, a little-endian uint32 header length,
a JSON header (``worker``, ``start``, ``steps``, ``keys``: ``[{key, shape,
dtype}]``, ``payload`` bytes, ``crc32`` of the payload), then for each key in
header order the raw C-order array ``[steps, *shape]``. It is written under a
temp name, fsynced, renamed into place and the directory fsynced, by a
background thread (the training loop only copies the finished chunk into a
bounded queue). A file whose size, header or CRC does not check out is skipped
with one warning line and renamed to ``*.corrupt``.

Storage bound: after writing a chunk, the worker's chunks that hold none of
its newest ``capacity // num_workers`` steps are deleted, so ``lfs_dir`` holds
at most ``capacity + 2 * chunk * num_workers`` steps.

Start-up: with no checkpoint (e.g. a new machine with an empty logdir), the
local tier is emptied and rebuilt from the newest chunks, up to capacity, and
the run goes on from there. A gap in a worker's chunks (a skipped corrupt
file) is marked by ``is_first = True`` on the step after it, like an episode
start. With a checkpoint, ``save(folder)`` had flushed everything first and
wrote ``lfs_replay.json`` (the durable position of every worker) and, for a
local DiskReplay, its index; ``load(folder)`` reopens the local tier at that
index and appends the chunks written after the checkpoint, or rebuilds it from
the chunks when it is missing or does not match (a memory tier always is).

Crash semantics (SIGKILL, power loss after the last fsync): the durable tier
loses the steps that were still staged (less than ``chunk`` per worker) or
waiting in the writer queue; everything flushed, including chunks flushed
after the last checkpoint, is kept and is in the replay after restart. The
agent and counters come from the last checkpoint, whose durable position is
always a prefix of what is in ``lfs_dir``.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import queue
import re
import shutil
import struct
import threading
import time
import zlib

import numpy as np

from recall2imagine.replay.disk import _DATA_FILE, INDEX, STAMPS, DiskReplay
from recall2imagine.replay.memory import MemoryReplay, ReplayError, WindowSampler, check_add
from recall2imagine.util import atomic_write, fmt_bytes, fsync_dir, warn

MAGIC = b'R2ICHNK1'
META = 'LFS.json'
LOCK = 'LOCK'
MANIFEST = 'lfs_replay.json'
_CHUNK = re.compile(r'^w(\d{4})-(\d{12})\.chunk$')
_VERSION = 1


def chunk_name(worker: int, start: int) -> str:
    return f'w{int(worker):04d}-{int(start):012d}.chunk'


def _schema_of(step: dict) -> list:
    return [dict(key=k, shape=list(np.shape(v)[1:]), dtype=np.asarray(v).dtype.str) for k, v in step.items()]


def _row_bytes(schema) -> int:
    return sum(int(np.prod(s['shape'], dtype=np.int64)) * np.dtype(s['dtype']).itemsize for s in schema)


def write_chunk(path, worker: int, start: int, schema, arrays) -> int:
    """Writes one chunk file atomically (temp name, fsync, rename, fsync of
    the directory); returns its size in bytes."""
    path = pathlib.Path(path)
    views = [
        memoryview(np.ascontiguousarray(arrays[s['key']], np.dtype(s['dtype'])).reshape(-1).view(np.uint8))
        for s in schema
    ]
    crc = 0
    for v in views:
        crc = zlib.crc32(v, crc)
    steps = len(arrays[schema[0]['key']])
    header = json.dumps(
        dict(
            version=_VERSION,
            worker=int(worker),
            start=int(start),
            steps=int(steps),
            keys=schema,
            payload=sum(len(v) for v in views),
            crc32=crc,
        )
    ).encode()
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            f.write(MAGIC + struct.pack('<I', len(header)) + header)
            for v in views:
                f.write(v)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size


def _chunk_steps(path):
    """Steps in a chunk file according to its header; None when unreadable."""
    try:
        with open(path, 'rb') as f:
            head = f.read(12)
            (hlen,) = struct.unpack('<I', head[8:12])
            return int(json.loads(f.read(hlen))['steps'])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def read_chunk(path):
    """``(header, {key: [steps, ...]})``; raises ValueError saying what is wrong
    when the file is truncated or corrupt."""
    data = pathlib.Path(path).read_bytes()
    if len(data) < 12 or data[:8] != MAGIC:
        raise ValueError(f'not a chunk file ({len(data)} bytes, bad magic)')
    (hlen,) = struct.unpack('<I', data[8:12])
    try:
        header = json.loads(data[12 : 12 + hlen])
        payload = int(header['payload'])
        schema = header['keys']
    except (ValueError, KeyError, TypeError):
        raise ValueError('unreadable header (truncated?)') from None
    body = memoryview(data)[12 + hlen :]
    if len(body) != payload:
        raise ValueError(f'{len(body)} payload bytes, expected {payload} (truncated?)')
    if zlib.crc32(body) != header.get('crc32'):
        raise ValueError('CRC mismatch (corrupt)')
    arrays, offset, n = {}, 0, int(header['steps'])
    for s in schema:
        dtype = np.dtype(s['dtype'])
        count = n * int(np.prod(s['shape'], dtype=np.int64))
        arrays[s['key']] = np.frombuffer(body, dtype, count, offset).reshape(n, *s['shape'])
        offset += count * dtype.itemsize
    if offset != payload:
        raise ValueError('payload size does not match the header')
    return header, arrays


class LfsReplay(WindowSampler):
    """Same interface as MemoryReplay / DiskReplay (add, sample, len, stored,
    num_windows, save, load, info, close), plus the durable chunk tier."""

    KIND = 'lfs'

    def __init__(
        self,
        lfs_dir,
        capacity: int,
        num_workers: int,
        chunk: int = 64,
        seed: int = 0,
        local: str = 'disk',
        local_dir=None,
        check_space: bool = True,
        max_queue: int = 64,
        verbose: bool = True,
    ):
        capacity, num_workers, chunk = int(capacity), int(num_workers), int(chunk)
        if num_workers < 1:
            raise ValueError('num_workers must be >= 1')
        if capacity // num_workers < 1:
            raise ValueError(f'capacity {capacity} < num_workers {num_workers}')
        if chunk < 1:
            raise ValueError(f'chunk must be >= 1, got {chunk}')
        if local not in ('memory', 'disk'):
            raise ValueError(f'local tier must be memory or disk, got {local!r}')
        if local == 'disk' and not local_dir:
            raise ReplayError('the lfs replay with a disk local tier needs a directory (--replay_dir)')
        self.capacity, self.num_workers, self.chunk = capacity, num_workers, chunk
        self.per_worker = capacity // num_workers
        self.seed, self.local_kind, self.check_space, self.verbose = seed, local, check_space, verbose
        self.local_dir = pathlib.Path(local_dir).expanduser() if local_dir else None
        self.lfs_dir = pathlib.Path(lfs_dir).expanduser()
        self._lock_fd = None
        self._open_dir()
        meta = self._read_meta()
        if meta is not None and meta.get('num_workers') != num_workers:
            self._unlock()
            raise ReplayError(
                f'--lfs_dir {self.lfs_dir} holds the experience of {meta.get("num_workers")} env workers; '
                f'this run has {num_workers} (envs.amount): use the same envs.amount or another --lfs_dir'
            )
        self.schema = meta['schema'] if meta else None
        self.local = None
        self._ready = False
        self._catalog = [dict() for _ in range(num_workers)]  # worker -> {start: steps}
        self._sizes = {}  # (worker, start) -> bytes
        for p in self.lfs_dir.iterdir():
            m = _CHUNK.match(p.name)
            if m and int(m.group(1)) < num_workers:
                self._catalog[int(m.group(1))][int(m.group(2))] = None  # steps unknown until read
            elif p.name.startswith('.') and '.tmp-' in p.name:
                p.unlink(missing_ok=True)  # an interrupted write
        self.pos = np.zeros(num_workers, np.int64)  # durable position of each worker's next step
        self.base = np.zeros(num_workers, np.int64)  # durable position of the local tier's index 0
        self._stage = None  # key -> [W, chunk, ...]
        self._staged = np.zeros(num_workers, np.int64)  # rows in the current chunk
        self._flushed = np.zeros(num_workers, np.int64)  # of them already durable (partial chunk)
        self._mutex = threading.Lock()
        self._queue = queue.Queue(maxsize=max_queue)
        self._thread = None
        self._error = None

    # The durable directory.

    def _open_dir(self):
        try:
            self.lfs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ReplayError(f'cannot create --lfs_dir {self.lfs_dir}: {e.strerror or e}') from None
        probe = self.lfs_dir / f'.probe.tmp-{os.getpid()}'
        try:
            with open(probe, 'wb') as f:
                f.write(b'x')
            probe.unlink()
            fd = os.open(self.lfs_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ReplayError(
                f'--lfs_dir {self.lfs_dir} is not writable ({e.strerror or e}); '
                'fix its permissions or point --lfs_dir elsewhere'
            ) from None
        try:
            import fcntl  # POSIX; on Windows the lfs_dir is not locked

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except BlockingIOError:
            os.close(fd)
            raise ReplayError(
                f'--lfs_dir {self.lfs_dir} is in use by another run; '
                'wait for it to end or use another --lfs_dir'
            ) from None
        except OSError:
            pass  # a file system without locks: go on unlocked
        self._lock_fd = fd

    def _unlock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _read_meta(self):
        try:
            return json.loads((self.lfs_dir / META).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            raise ReplayError(
                f'{self.lfs_dir / META} is corrupt; delete it (the chunks describe themselves)'
            ) from None

    def _set_schema(self, schema) -> None:
        """Records the step schema (LFS.json), checks the free space of the
        durable tier and allocates the staging buffers."""
        if self.schema is not None and self.schema != schema:
            raise ReplayError(
                f'--lfs_dir {self.lfs_dir} holds steps {self._describe(self.schema)}; this environment gives '
                f'{self._describe(schema)}: use another --lfs_dir for a different environment'
            )
        if self.check_space:
            bps = _row_bytes(schema)
            steps = self.num_workers * (self.per_worker + 2 * self.chunk)
            needed = steps * bps + 4096 * self.num_workers * (self.per_worker // self.chunk + 3)
            have = sum(p.stat().st_size for p in self.lfs_dir.glob('w*.chunk'))
            free = shutil.disk_usage(self.lfs_dir).free
            if needed - have > free:
                fits = int((free + have) // bps * 0.95) - 2 * self.chunk * self.num_workers
                raise ReplayError(
                    f'lfs replay needs {fmt_bytes(needed)} in {self.lfs_dir} for {self.capacity:,} steps '
                    f'({bps:,} bytes each, plus two {self.chunk}-step chunks per worker) but only '
                    f'{fmt_bytes(free + have)} is available there; shrink it with --replay_size N '
                    f'(N <= {max(fits, 0):,} fits) or point --lfs_dir at a disk with more space'
                )
        if self.schema is None:
            text = json.dumps(dict(version=_VERSION, num_workers=self.num_workers, schema=schema)).encode()
            atomic_write(self.lfs_dir / META, lambda f: f.write(text))
        self.schema = schema
        self._stage = {
            s['key']: np.zeros((self.num_workers, self.chunk, *s['shape']), s['dtype']) for s in schema
        }

    @staticmethod
    def _describe(schema) -> str:
        return ', '.join(f'{s["key"]}:{np.dtype(s["dtype"]).name}{s["shape"]}' for s in schema)

    # The writer thread.

    def _start_writer(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name='lfs-writer', daemon=True)
            self._thread.start()

    def _writer(self):
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write(*item)
            except BaseException as e:  # reported to the main thread by _check()
                self._error = e
            finally:
                self._queue.task_done()

    def _write(self, worker, start, arrays):
        path = self.lfs_dir / chunk_name(worker, start)
        try:
            size = write_chunk(path, worker, start, self.schema, arrays)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(
                    e.errno,
                    f'--lfs_dir {self.lfs_dir} is full (writing {path.name}); free space '
                    'there or use a smaller --replay_size',
                ) from e
            raise
        end = start + len(arrays[self.schema[0]['key']])
        with self._mutex:
            cat = self._catalog[worker]
            cat[start] = end - start
            self._sizes[worker, start] = size
            old = [s for s, n in cat.items() if n is not None and s + n <= end - self.per_worker]
            for s in old:
                del cat[s]
                self._sizes.pop((worker, s), None)
        for s in old:
            (self.lfs_dir / chunk_name(worker, s)).unlink(missing_ok=True)

    def _check(self):
        if self._error is not None:
            e = self._error
            raise ReplayError(
                f'lfs replay: writing to {self.lfs_dir} failed: {e.strerror if isinstance(e, OSError) and e.strerror else e}'
            )

    def _enqueue(self, worker, rows):
        """Queues the current chunk of ``worker`` with its first ``rows`` staged steps."""
        self._start_writer()
        start = int(self.pos[worker] - self._staged[worker])
        arrays = {k: v[worker, :rows].copy() for k, v in self._stage.items()}
        self._queue.put((int(worker), start, arrays))  # blocks when the disk is slower than the env

    def flush(self) -> None:
        """Makes every step added so far durable (partial chunks included) and
        waits until the writer has written them."""
        if not self._ready:
            return
        self._check()
        if self._stage is not None:
            for w in np.nonzero(self._staged > self._flushed)[0]:
                self._enqueue(w, int(self._staged[w]))
                self._flushed[w] = self._staged[w]
        self._queue.join()
        self._check()

    # Local tier and rebuild.

    def _wipe_local(self):
        if self.local is not None:
            if hasattr(self.local, 'close'):
                self.local.close()
            self.local = None
        if self.local_kind == 'disk' and self.local_dir.is_dir():
            for p in self.local_dir.iterdir():
                if p.name in (INDEX, STAMPS) or _DATA_FILE.match(p.name):
                    p.unlink()

    def _new_local(self, reuse=False):
        if self.local_kind == 'memory':
            return MemoryReplay(self.capacity, self.num_workers, seed=self.seed)
        if not reuse:
            self._wipe_local()
        return DiskReplay(
            self.local_dir, self.capacity, self.num_workers, seed=self.seed, check_space=self.check_space
        )

    def _ensure(self):
        if not self._ready:
            self._rebuild(None)

    def _rebuild(self, resume):
        """Fills the local tier from the chunks: with ``resume`` (durable
        position per worker that the local tier already holds) only the steps
        after it, else the newest ``per_worker`` steps of each worker."""
        t0 = time.time()
        if resume is None:
            self.local = self._new_local()
        read = steps = 0
        schema = self.schema
        for w in range(self.num_workers):
            with self._mutex:
                starts = sorted(self._catalog[w], reverse=True)
            good = []  # newest first: (start, arrays)
            need_from = None  # stop once the chunks cover [need_from, end)
            for s in starts:
                if good and good[-1][0] <= need_from:
                    break  # the newest per_worker steps (or those after `resume`) are covered
                path = self.lfs_dir / chunk_name(w, s)
                try:
                    header, arrays = read_chunk(path)
                    if header.get('worker') != w or header.get('start') != s:
                        raise ValueError('its header names another worker or start')
                    if schema is None:
                        schema = header['keys']
                    elif header['keys'] != schema:
                        raise ValueError(
                            f'it holds {self._describe(header["keys"])}, not {self._describe(schema)}'
                        )
                except (OSError, ValueError) as e:
                    warn(f'skipping replay chunk {path}: {e}; renamed to {path.name}.corrupt')
                    try:
                        os.replace(path, path.with_name(path.name + '.corrupt'))
                    except OSError:
                        pass
                    with self._mutex:
                        self._catalog[w].pop(s, None)
                    continue
                read += 1
                n = len(arrays[schema[0]['key']])
                if n == 0:
                    continue
                with self._mutex:
                    self._catalog[w][s] = n
                    self._sizes[w, s] = path.stat().st_size
                if not good:
                    end = s + n
                    need_from = end - self.per_worker
                    if resume is not None:
                        need_from = max(need_from, int(resume[w]))
                good.append((s, arrays))
            end = good[0][0] + len(good[0][1][schema[0]['key']]) if good else 0
            if resume is not None:
                end = max(end, int(resume[w]))
            if schema is not None and self._stage is None:
                self._set_schema(schema)
            prev = None if resume is None else int(resume[w])
            lo_all = end - self.per_worker
            for s, arrays in reversed(good):
                n = len(arrays[schema[0]['key']])
                lo = max(s, lo_all, prev if prev is not None else s)
                if lo >= s + n:
                    continue
                rows = {k: v[lo - s :] for k, v in arrays.items()}
                if prev is not None and lo > prev and 'is_first' in rows:  # a gap: start an episode here
                    rows['is_first'] = rows['is_first'].copy()
                    rows['is_first'][0] = True
                self.local.extend(w, rows)
                steps += s + n - lo
                prev = s + n
            # Old chunks that hold none of the newest per_worker steps (capacity shrank, or leftovers).
            with self._mutex:
                cat = self._catalog[w]
                for s in [s for s, n in cat.items() if n is None and s < end - self.per_worker]:
                    cat[s] = _chunk_steps(self.lfs_dir / chunk_name(w, s)) or 0  # unread: its header says
                old = [s for s, n in cat.items() if n is not None and s + n <= end - self.per_worker]
                for s in old:
                    del self._catalog[w][s]
                    self._sizes.pop((w, s), None)
            for s in old:
                (self.lfs_dir / chunk_name(w, s)).unlink(missing_ok=True)
            # The newest chunk, when partial, keeps filling up (and is rewritten under its name).
            self.pos[w] = end
            self._staged[w] = self._flushed[w] = 0
            if good and self._stage is not None:
                s, arrays = good[0]
                n = len(arrays[schema[0]['key']])
                if s + n == end and n < self.chunk:
                    for k, v in arrays.items():
                        self._stage[k][w, :n] = v
                    self._staged[w] = self._flushed[w] = n
            self.base[w] = self.pos[w] - self.local.counts[w]
        self._ready = True
        if self.verbose and read:
            print(
                f'replay: {"restored" if resume is None else "caught up"} {steps:,} steps of '
                f'{self.num_workers} workers from {read} chunks in {self.lfs_dir} '
                f'({time.time() - t0:.1f} s); replay size {len(self):,}',
                flush=True,
            )

    # The replay interface.

    @property
    def counts(self):
        self._ensure()
        return self.local.counts

    @property
    def durable_steps(self) -> int:
        """Steps of all workers ever written to the durable tier (the env-step count it vouches for)."""
        self._ensure()
        return int(self.pos.sum())

    @property
    def rng(self):
        self._ensure()
        return self.local.rng

    def stored(self) -> np.ndarray:
        self._ensure()
        return self.local.stored()

    def add(self, step: dict, workers) -> None:
        """Adds one step per worker (see MemoryReplay.add): to the local tier at
        once, to the durable tier when its chunk is full."""
        self._ensure()
        self._check()
        workers, step = check_add(step, workers, self.num_workers)
        schema = _schema_of(step)
        if self._stage is None:
            self._set_schema(schema)
        elif {s['key']: s for s in schema} != {s['key']: s for s in self.schema}:
            self._set_schema(schema)  # raises with both schemas
        self.local.add(step, workers)
        rows = self._staged[workers]
        for key, value in step.items():
            self._stage[key][workers, rows] = value
        self._staged[workers] += 1
        self.pos[workers] += 1
        for w in workers[self._staged[workers] == self.chunk]:
            self._enqueue(w, self.chunk)
            self._staged[w] = self._flushed[w] = 0

    def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        self._ensure()
        return self.local.sample(batch_size, length)

    def save(self, directory=None, shared=None) -> dict:
        """Flushes the durable tier, saves the local one (a disk tier's index)
        and, with ``directory`` (a checkpoint folder), writes ``lfs_replay.json``
        there: the durable position of every worker, all of it on disk (so ``shared``,
        a checkpoint's SharedFiles, is not needed)."""
        self._ensure()
        self.flush()
        if self.local_kind == 'disk':
            self.local.save(directory)
        if directory is not None:
            directory = pathlib.Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            manifest = dict(
                version=_VERSION,
                kind='lfs',
                lfs_dir=str(self.lfs_dir),
                capacity=self.capacity,
                num_workers=self.num_workers,
                chunk=self.chunk,
                local=self.local_kind,
                pos=self.pos.tolist(),
                base=self.base.tolist(),
                rng=self.local.rng.bit_generator.state,
                time=time.time(),
            )
            text = json.dumps(manifest).encode()
            atomic_write(directory / MANIFEST, lambda f: f.write(text))
        return self.info()

    def load(self, directory, shared=None) -> bool:
        """Restores the view of a checkpoint folder written by ``save`` plus every
        chunk made durable after it. False (the replay is then rebuilt from
        ``lfs_dir`` alone) when the folder holds no lfs manifest."""
        path = pathlib.Path(directory) / MANIFEST
        if not path.exists():
            return False
        try:
            m = json.loads(path.read_text())
        except ValueError:
            raise ReplayError(f'{path} is corrupt') from None
        if (m.get('kind'), m.get('capacity'), m.get('num_workers')) != (
            'lfs',
            self.capacity,
            self.num_workers,
        ):
            raise ReplayError(
                f'{path} is for an lfs replay of capacity {m.get("capacity")} with {m.get("num_workers")} workers; '
                f'this run asks for {self.capacity} with {self.num_workers}: use the same --replay_size and '
                'envs.amount, or a new --logdir (the replay is then rebuilt from --lfs_dir)'
            )
        if self._ready:
            self.flush()
        if self.local is not None and hasattr(self.local, 'close'):
            self.local.close()
        self._ready = False
        resume = None
        if self.local_kind == 'disk' and m.get('local') == 'disk':
            try:
                self.local = self._new_local(reuse=True)
                if self.local.load(directory):
                    resume = np.asarray(m['pos'], np.int64)
            except ReplayError as e:
                print(
                    f'replay: the local tier in {self.local_dir} does not match the checkpoint ({e}); '
                    f'rebuilding it from {self.lfs_dir}',
                    flush=True,
                )
                resume = None
        self._rebuild(resume)
        if self.local_kind == 'memory':
            self.local.rng.bit_generator.state = m['rng']
        return True

    def close(self) -> None:
        """Flushes the durable tier, stops the writer and closes the local tier."""
        try:
            if self._error is None:
                self.flush()
        finally:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
            if self.local is not None and hasattr(self.local, 'close'):
                self.local.close()
            self._unlock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def durable_chunks(self) -> dict:
        """``{(worker, start): steps}`` of the chunk files written or verified so far."""
        with self._mutex:
            return {(w, s): n for w, cat in enumerate(self._catalog) for s, n in cat.items()}

    def bytes_per_step(self) -> int:
        """Durable bytes per step (chunk headers excluded)."""
        return _row_bytes(self.schema) if self.schema else 0

    def info(self) -> dict:
        self._ensure()
        with self._mutex:
            chunks = sum(len(c) for c in self._catalog)
            durable_bytes = sum(self._sizes.values())
        return dict(
            kind='lfs',
            size=len(self),
            capacity=self.capacity,
            num_workers=self.num_workers,
            counts=[int(c) for c in self.local.counts],
            lfs_dir=str(self.lfs_dir),
            chunk=self.chunk,
            durable_pos=self.pos.tolist(),
            chunks=chunks,
            durable_bytes=durable_bytes,
            local=self.local.info(),
        )
