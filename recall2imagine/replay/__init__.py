from recall2imagine.replay.disk import DiskReplay
from recall2imagine.replay.lfs import LfsReplay
from recall2imagine.replay.memory import MemoryReplay, ReplayError

__all__ = ['DiskReplay', 'LfsReplay', 'MemoryReplay', 'ReplayError', 'make_replay']


def make_replay(
    kind: str,
    capacity: int,
    num_workers: int,
    seed: int = 0,
    directory=None,
    use_lfs: bool = False,
    lfs_dir=None,
    chunk: int = 64,
):
    """``--replay memory|disk|lfs``; ``directory`` (``--replay_dir``) holds disk files.

    ``--use_lfs True --lfs_dir DIR`` adds the durable chunk tier (replay/lfs.py) in DIR
    to a memory (``--replay memory``) or disk (``--replay disk`` or ``lfs``) local tier;
    ``--replay lfs`` means the same as ``--replay disk --use_lfs True``."""
    if kind not in ('memory', 'disk', 'lfs'):
        raise ReplayError(f'--replay {kind!r} is not implemented here; use memory, disk or lfs')
    if use_lfs or kind == 'lfs':
        if not lfs_dir:
            flags = '--use_lfs True' if use_lfs else '--replay lfs'
            raise ReplayError(f'{flags} needs --lfs_dir DIR (persistent storage for the replay chunks)')
        local = 'memory' if kind == 'memory' else 'disk'
        if local == 'disk' and not directory:
            raise ReplayError('--replay lfs / disk needs a directory for its local tier (--replay_dir)')
        return LfsReplay(
            lfs_dir,
            capacity,
            num_workers,
            chunk=chunk,
            seed=seed,
            local=local,
            local_dir=directory if local == 'disk' else None,
        )
    if lfs_dir:  # a durable directory that would silently not be used
        raise ReplayError(
            f'--lfs_dir {lfs_dir} is set but --use_lfs is False: add --use_lfs True '
            '(or --replay lfs) to keep the replay there, or drop --lfs_dir'
        )
    if kind == 'memory':
        return MemoryReplay(capacity, num_workers, seed=seed)
    if not directory:
        raise ReplayError('--replay disk needs a directory (--replay_dir)')
    return DiskReplay(directory, capacity, num_workers, seed=seed)
