from recall2imagine.replay.disk import DiskReplay
from recall2imagine.replay.memory import MemoryReplay, ReplayError

__all__ = ['DiskReplay', 'MemoryReplay', 'ReplayError', 'make_replay']


def make_replay(kind: str, capacity: int, num_workers: int, seed: int = 0, directory=None):
    """``--replay memory`` or ``--replay disk`` (``directory`` required)."""
    if kind == 'memory':
        return MemoryReplay(capacity, num_workers, seed=seed)
    if kind == 'disk':
        if not directory:
            raise ReplayError('--replay disk needs a directory (--replay_dir)')
        return DiskReplay(directory, capacity, num_workers, seed=seed)
    raise ReplayError(f'--replay {kind!r} is not implemented here; use memory or disk')
