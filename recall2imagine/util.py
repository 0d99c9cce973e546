"""Small helpers shared by the trainer, logger, checkpoints and replays: one-line warnings, byte
sizes, and durable file writes that also work where POSIX-only calls are missing (macOS has no
`os.fdatasync`, Windows cannot open or fsync a directory)."""

import os
import pathlib
import sys


def warn(message: str) -> None:
    """One line on stderr: `warning: <message>`."""
    print(f'warning: {message}', file=sys.stderr, flush=True)


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; whole bytes below 1 KiB."""
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    raise AssertionError


def physical_memory() -> int | None:
    """This machine's RAM in bytes, None where the OS does not say (Windows)."""
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (AttributeError, ValueError, OSError):
        return None


def fsync_file(fd: int) -> None:
    """Flushes a file's data to disk (`fdatasync` where the OS has it, else `fsync`)."""
    getattr(os, 'fdatasync', os.fsync)(fd)


def fsync_dir(directory) -> None:
    """Makes a rename or a new file in `directory` durable; a no-op where directories cannot be
    opened (Windows: NTFS commits renames with the file itself)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_path(path) -> pathlib.Path:
    """The first free `<path>.<n>.bak` (n = 1, 2, ...): where a file's earlier version is kept."""
    path = pathlib.Path(path)
    n = 1
    while path.with_name(f'{path.name}.{n}.bak').exists():
        n += 1
    return path.with_name(f'{path.name}.{n}.bak')


def atomic_write(path, write) -> None:
    """Calls ``write(fileobj)`` on a temp file next to ``path``, fsyncs it and renames it over
    ``path``; on any error the temp file is removed and ``path`` is untouched."""
    path = pathlib.Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_path(path) -> None:
    """Flushes an existing file, named by its path, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
