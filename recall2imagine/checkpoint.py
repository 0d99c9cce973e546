"""Checkpoints of an arbitrary pytree (agent state, RNG keys) plus JSON metadata.

Layout::

  <directory>/ckpt-<step:012d>/state.eqx   equinox.tree_serialise_leaves of the tree
                               meta.json   the caller's metadata (counters, config hash, ...)
                               ...         files written by the ``extra`` callback (replay)
                               COMMIT      {"step", "time", "files": {name: {sha256, size}},
                                            "shared": [names of shared/ files it uses]}
  <directory>/shared/<prefix>-<sha256>     immutable files several checkpoints use (the replay's
                                           full chunks), named by their content's hash

A checkpoint is written into ``.tmp-ckpt-*``, every file is fsynced, COMMIT is written
last, and the folder is renamed into place, so a crash leaves either the complete new
checkpoint or none. ``load_latest`` walks the checkpoints from the newest and skips,
with a one-line warning, any without COMMIT or whose files do not match their
sha256 (truncated, corrupt); shared files are checked against their names when an
``extra`` callback is to read them. The ``keep`` newest committed checkpoints are kept;
older ones are deleted only after a new one is committed, and so are folders of steps
after the one just saved (the run resumed from an earlier checkpoint) and shared files
no kept checkpoint uses. A full disk during ``save`` removes the temp folder, leaves
earlier checkpoints alone and raises CheckpointError.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import time
import uuid
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from recall2imagine.util import atomic_write, fmt_bytes, fsync_dir, fsync_path

STATE, META, COMMIT, SHARED = 'state.eqx', 'meta.json', 'COMMIT', 'shared'
_NAME = re.compile(r'^ckpt-(\d{12})$')
_FORMAT = 1


def run_checkpoints(logdir, cfg) -> pathlib.Path:
    """Where a run keeps its checkpoints: <lfs_dir>/checkpoints with the LFS replay (the durable tier,
    so that a restart with a fresh logdir resumes), else <logdir>/checkpoints."""
    if cfg.lfs_dir:
        return pathlib.Path(cfg.lfs_dir).expanduser() / "checkpoints"
    return pathlib.Path(logdir).expanduser() / "checkpoints"


class CheckpointError(OSError):
    """A checkpoint could not be written, or does not fit the current model."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (incomplete or corrupt)."""


# Helpers.


def config_hash(obj) -> str:
    """Short stable hash of a JSON-able object (e.g. ``cfg.to_dict()``)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, pathlib.PurePath):
        return str(x)
    raise TypeError(f'{type(x).__name__} is not JSON serialisable')


def _write_json(path, obj) -> None:
    with open(path, 'w') as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _serialise_leaf(f, x):
    if _is_key(x):  # typed PRNG keys (jax.random.key): store the raw key data
        jnp.save(f, jax.random.key_data(x))
    else:
        eqx.default_serialise_filter_spec(f, x)


def _deserialise_leaf(f, x):
    if _is_key(x):
        return jax.random.wrap_key_data(jnp.load(f), impl=jax.random.key_impl(x))
    return eqx.default_deserialise_filter_spec(f, x)


class _Mismatch(Exception):
    pass


def _load_tree(path, like):
    with open(path, 'rb') as f:
        try:
            tree = eqx.tree_deserialise_leaves(f, like, filter_spec=_deserialise_leaf)
        except RuntimeError as e:  # equinox: "Deserialised leaf at path ... has changed shape"
            raise _Mismatch(str(e).replace('\n', ' ').rstrip('.')) from None
        except (EOFError, ValueError, OSError) as e:
            raise _Mismatch(f'it holds fewer or different leaves ({e})') from None
        if f.read(1):
            raise _Mismatch('it holds more leaves than the current state')
    pairs = zip(jax.tree_util.tree_flatten_with_path(like)[0], jax.tree.leaves(tree))
    for (where, old), new in pairs:
        if hasattr(old, 'shape') and hasattr(old, 'dtype'):
            if (tuple(old.shape), old.dtype) != (tuple(new.shape), new.dtype):
                raise _Mismatch(
                    f'{jax.tree_util.keystr(where)} is {new.dtype}{list(new.shape)} there '
                    f'but {old.dtype}{list(old.shape)} here'
                )
    return tree


def _load_earlier(path, earlier):
    """The tree of `path` in the first of the earlier layouts [(like_then, upgrade)] it fits, upgraded."""
    for like_then, upgrade in earlier:
        try:
            return upgrade(_load_tree(path, like_then))
        except _Mismatch:
            continue
    return None


class SharedFiles:
    """Immutable files that several checkpoints use, named ``<prefix>-<sha256 of the bytes>``.

    An ``extra`` callback stores a file with ``put`` (written once; a name that exists already
    holds the same bytes) or re-uses one it stored before with ``use``; the checkpoint records
    the names used, and ``path`` finds them when loading."""

    def __init__(self, directory):
        self.directory = pathlib.Path(directory)
        self.used: set[str] = set()

    def path(self, name: str) -> pathlib.Path:
        return self.directory / name

    def put(self, prefix: str, data: bytes) -> str:
        name = f'{prefix}-{hashlib.sha256(data).hexdigest()}'
        if not self.path(name).is_file():
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path(name), lambda f: f.write(data))
        self.used.add(name)
        return name

    def use(self, name: str) -> bool:
        """Records a file stored before; False (nothing recorded) when it is gone."""
        if not self.path(name).is_file():
            return False
        self.used.add(name)
        return True

    def problem(self, name: str) -> str | None:
        """None when the file is there and its bytes match its name, else what is wrong."""
        try:
            digest = _sha256(self.path(name))
        except FileNotFoundError:
            return f'{SHARED}/{name} is missing'
        if not name.endswith('-' + digest):
            return f'{SHARED}/{name} fails its sha256 check (corrupt)'
        return None


# The checkpointer.


class Checkpointer:
    def __init__(self, directory, keep: int = 3):
        if int(keep) < 1:
            raise ValueError(f'keep must be >= 1, got {keep}')
        self.directory = pathlib.Path(directory).expanduser()
        self.keep = int(keep)
        self.loaded: pathlib.Path | None = None  # folder that load_latest restored

    def path(self, step: int) -> pathlib.Path:
        return self.directory / f'ckpt-{int(step):012d}'

    def _folders(self):
        """(step, path) of every ckpt-* folder, committed or not, oldest first."""
        if not self.directory.is_dir():
            return []
        out = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def bytes(self, folder=None) -> int:
        """Bytes of every file under `folder` (default: the checkpoint directory, i.e. the kept
        checkpoints and shared files)."""
        root = self.directory if folder is None else pathlib.Path(folder)
        return sum(p.stat().st_size for p in root.rglob('*') if p.is_file())

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints (not verified), oldest first."""
        return [s for s, p in self._folders() if (p / COMMIT).is_file()]

    # Saving.

    def save(self, step: int, tree, meta: dict | None = None, extra=None) -> pathlib.Path:
        """Writes checkpoint ``step``. ``extra(folder, shared)``, if given, may write more
        files into the folder before it is committed (e.g. ``replay.save``), hashed and
        verified like the others, and store or re-use immutable files in ``shared``
        (SharedFiles). Returns the checkpoint folder."""
        step = int(step)
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path(step)
        tmp = self.directory / f'.tmp-ckpt-{step:012d}-{uuid.uuid4().hex[:8]}'
        try:
            tmp.mkdir()
            with open(tmp / STATE, 'wb') as f:
                try:
                    eqx.tree_serialise_leaves(f, tree, filter_spec=_serialise_leaf)
                except Exception as e:  # equinox wraps a write error ("Error at leaf with path ...")
                    cause = e
                    while cause is not None and not isinstance(cause, OSError):
                        cause = cause.__cause__ or cause.__context__
                    if cause is not None and cause is not e:
                        raise cause from None
                    raise
                f.flush()
                os.fsync(f.fileno())
            _write_json(tmp / META, {} if meta is None else meta)
            shared = SharedFiles(self.directory / SHARED)
            if extra is not None:
                extra(tmp, shared)
            files, dirs = {}, [tmp]
            for p in sorted(tmp.rglob('*')):
                if p.is_dir():
                    dirs.append(p)
                elif p.is_file():
                    fsync_path(p)  # the callback's files too
                    files[p.relative_to(tmp).as_posix()] = dict(sha256=_sha256(p), size=p.stat().st_size)
            _write_json(
                tmp / COMMIT,
                dict(format=_FORMAT, step=step, time=time.time(), files=files, shared=sorted(shared.used)),
            )
            for d in reversed(dirs):
                fsync_dir(d)
            trash = None
            if final.exists():  # the same step saved again: swap the new one in
                trash = self.directory / f'.trash-{final.name}-{uuid.uuid4().hex[:8]}'
                os.rename(final, trash)
            try:
                os.rename(tmp, final)
            except BaseException:
                if trash is not None:
                    os.rename(trash, final)
                raise
            fsync_dir(self.directory)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            # numpy reports a short write on a full disk without an errno ("16384 requested and 14901 written")
            if e.errno in (errno.ENOSPC, errno.EDQUOT) or (e.errno is None and 'requested and' in str(e)):
                raise self._full_error(step, e) from e
            raise CheckpointError(
                f'checkpoint at step {step} not saved: {e}; earlier checkpoints are intact'
            ) from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._cleanup(step)
        return final

    def _full_error(self, step, e) -> CheckpointError:
        try:
            free = fmt_bytes(shutil.disk_usage(self.directory).free)
        except OSError:
            free = 'unknown'
        last = ''
        for s in reversed(self.steps()):
            try:
                commit = json.loads((self.path(s) / COMMIT).read_text())
                last = f'; the last checkpoint took {fmt_bytes(sum(f["size"] for f in commit["files"].values()))}'
                break
            except (OSError, ValueError, KeyError):
                continue
        err = CheckpointError(
            f'checkpoint at step {step} not saved: no space left on the device of '
            f'{self.directory} ({free} free{last}); free some space there. Earlier checkpoints '
            'are intact.'
        )
        err.errno = e.errno
        return err

    def _cleanup(self, step) -> None:
        """After committing ``step``: deletes folders of later steps (a timeline this
        run abandoned, e.g. a corrupt checkpoint that load_latest skipped), checkpoints
        older than the ``keep`` newest committed ones, shared files none of the kept ones
        uses, and leftovers of interrupted saves."""
        for s, p in self._folders():
            if s > step:
                warnings.warn(
                    f'deleting {p}: it is newer than the checkpoint just saved '
                    f'(step {step}), so this run did not resume from it',
                    CheckpointWarning,
                    stacklevel=3,
                )
                shutil.rmtree(p, ignore_errors=True)
        committed = self.steps()
        if len(committed) > self.keep:
            oldest_kept = committed[-self.keep]
            for s, p in self._folders():
                if s < oldest_kept:
                    shutil.rmtree(p, ignore_errors=True)
        for p in self.directory.iterdir():
            if p.name.startswith(('.tmp-ckpt-', '.trash-ckpt-')) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        shared = self.directory / SHARED
        if shared.is_dir():
            used = set()
            for s in self.steps():
                try:
                    used.update(json.loads((self.path(s) / COMMIT).read_text()).get('shared', []))
                except (OSError, ValueError, AttributeError):
                    continue  # an unreadable checkpoint cannot be loaded anyway
            for p in shared.iterdir():
                if p.name not in used:
                    p.unlink(missing_ok=True)

    # Loading.

    def _verify(self, path, shared: bool) -> str | None:
        """None when the checkpoint is complete and intact (with ``shared``, its shared files
        too), else what is wrong."""
        try:
            commit = json.loads((path / COMMIT).read_text())
        except FileNotFoundError:
            return 'no COMMIT marker (interrupted save)'
        except (OSError, ValueError) as e:
            return f'unreadable COMMIT ({e})'
        files = commit.get('files') if isinstance(commit, dict) else None
        if not isinstance(files, dict) or STATE not in files or META not in files:
            return 'COMMIT lists no state'
        for name, info in files.items():
            p = path / name
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                return f'{name} is missing'
            if size != info.get('size'):
                return f'{name} has {size} bytes, expected {info.get("size")} (truncated?)'
            if _sha256(p) != info.get('sha256'):
                return f'{name} fails its sha256 check (corrupt)'
        if shared:
            store = SharedFiles(self.directory / SHARED)
            for name in commit.get('shared', []):
                if problem := store.problem(name):
                    return problem
        return None

    def load(self, path, like_tree, extra=None, earlier=()):
        """Loads one checkpoint folder; raises CheckpointError if it is incomplete,
        corrupt or fits neither ``like_tree`` nor an ``earlier`` layout (see ``load_latest``).
        Returns ``(step, tree, meta)``."""
        path = pathlib.Path(path)
        problem = self._verify(path, shared=extra is not None)
        if problem:
            raise CheckpointError(f'checkpoint {path}: {problem}')
        return self._load_verified(path, like_tree, extra, earlier)

    def _load_verified(self, path, like_tree, extra, earlier):
        commit = json.loads((path / COMMIT).read_text())
        meta = json.loads((path / META).read_text())
        try:
            tree = _load_tree(path / STATE, like_tree)
        except _Mismatch as e:
            tree = _load_earlier(path / STATE, earlier)
            if tree is None:
                raise CheckpointError(
                    f'checkpoint {path} does not fit the current model: {e}. Did the config '
                    'change? Resume with the original config, or use a new --logdir.'
                ) from None
        if extra is not None:
            extra(path, SharedFiles(self.directory / SHARED))
        self.loaded = path
        return int(commit['step']), tree, meta

    def load_latest(self, like_tree, extra=None, earlier=()):
        """``(step, tree, meta)`` of the newest intact checkpoint, or None.

        ``like_tree`` gives the structure, shapes and dtypes (e.g. the freshly built
        state); ``earlier`` holds ``(like_then, upgrade)`` pairs for trees written in an
        earlier layout: a checkpoint that does not fit ``like_tree`` but fits ``like_then``
        is loaded as ``upgrade(tree)``. Incomplete or corrupt checkpoints are skipped with a warning. A
        checkpoint that is intact but does not fit ``like_tree`` raises CheckpointError
        (falling back would silently lose progress). ``extra(folder, shared)`` is called on
        the chosen checkpoint after its tree loaded (e.g. ``replay.load``)."""
        for _, path in reversed(self._folders()):
            problem = self._verify(path, shared=extra is not None)
            if problem:
                warnings.warn(
                    f'skipping checkpoint {path}: {problem}; trying the previous one',
                    CheckpointWarning,
                    stacklevel=2,
                )
                continue
            return self._load_verified(path, like_tree, extra, earlier)
        return None
