"""recall2imagine.util: byte sizes, durable writes and their fallbacks where POSIX calls are missing."""

import os

import pytest

from recall2imagine import util


def test_fmt_bytes():
    assert util.fmt_bytes(512) == "512 B"
    assert util.fmt_bytes(1536) == "1.5 KiB"
    assert util.fmt_bytes(10 * 2**20) == "10.0 MiB"
    assert util.fmt_bytes(3 * 2**50) == "3072.0 TiB"


def test_atomic_write_replaces_or_leaves_the_file_untouched(tmp_path):
    path = tmp_path / "index.json"
    util.atomic_write(path, lambda f: f.write(b"one"))
    assert path.read_bytes() == b"one"

    def failing(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        util.atomic_write(path, failing)
    assert path.read_bytes() == b"one" and sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_fsync_file_without_fdatasync(tmp_path, monkeypatch):
    """macOS has no os.fdatasync: fsync is used instead."""
    monkeypatch.delattr(os, "fdatasync", raising=False)
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    with open(tmp_path / "f", "wb") as f:
        util.fsync_file(f.fileno())
        assert calls == [f.fileno()]


def test_fsync_dir_where_directories_cannot_be_opened(tmp_path, monkeypatch):
    """Windows: no O_DIRECTORY and opening a directory raises PermissionError; the rename is durable
    without it, so fsync_dir (and atomic_write) go on."""
    monkeypatch.delattr(os, "O_DIRECTORY", raising=False)

    def no_dirs(path, flags, *args):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", no_dirs)
    util.fsync_dir(tmp_path)  # no error
    monkeypatch.undo()
    util.fsync_dir(tmp_path)  # and the real one works here
