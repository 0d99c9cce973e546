"""DiskReplay against a slow reference, persistence, disk-space check, bounded RSS."""

import collections
import os

import numpy as np
import pytest

from recall2imagine.replay import DiskReplay, MemoryReplay, ReplayError, make_replay
from recall2imagine.replay import disk as disklib


def _step(w, n):
    return {
        'counter': np.int64(n),
        'worker': np.int32(w),
        'is_first': n % 7 == 0,
        'reward': np.float32(n * 0.5 - w),
        'image': np.full((2, 3), (w * 1000 + n) % 251, np.uint8),
    }


def _fill(replays, num_workers, steps, streams=None, workers_per_add=2, seed=0):
    """Adds `steps` batches to every replay; returns each worker's stream."""
    rng = np.random.default_rng(seed)
    streams = streams or [[] for _ in range(num_workers)]
    for _ in range(steps):
        workers = np.sort(rng.choice(num_workers, size=workers_per_add, replace=False))
        batch = collections.defaultdict(list)
        for w in workers:
            step = _step(int(w), len(streams[w]))
            streams[w].append(step)
            for k, v in step.items():
                batch[k].append(v)
        for replay in replays:
            replay.add({k: np.stack(v) for k, v in batch.items()}, workers)
    return streams


def _check_windows(batch, streams, per_worker, length, first=None, end=None):
    """Every window is `length` consecutive steps of one worker's stored stream."""
    B = len(batch['counter'])
    assert batch['image'].dtype == np.uint8 and batch['image'].shape == (B, length, 2, 3)
    assert batch['reward'].dtype == np.float32
    assert np.all(batch['is_first'][:, 0])
    for b in range(B):
        w = int(batch['worker'][b, 0])
        assert np.all(batch['worker'][b] == w)
        stream = streams[w]
        hi = len(stream) if end is None else end[w]
        lo = max(0, hi - per_worker) if first is None else first[w]
        c0 = int(batch['counter'][b, 0])
        assert lo <= c0 and c0 + length <= hi, (w, c0, lo, hi)
        for t in range(length):
            ref = stream[c0 + t]
            assert batch['counter'][b, t] == c0 + t
            assert batch['reward'][b, t] == ref['reward']
            np.testing.assert_array_equal(batch['image'][b, t], ref['image'])
            if t > 0:
                assert batch['is_first'][b, t] == ref['is_first']


@pytest.mark.parametrize('steps', [20, 50, 200])  # before and after wrap-around
def test_windows_match_reference_and_memory(tmp_path, steps):
    num_workers, capacity, length = 3, 90, 8
    disk = DiskReplay(tmp_path, capacity, num_workers, seed=1)
    memory = MemoryReplay(capacity, num_workers, seed=1)
    streams = _fill([disk, memory], num_workers, steps)
    per_worker = capacity // num_workers
    assert len(disk) == len(memory) == sum(min(len(s), per_worker) for s in streams)
    batch = disk.sample(256, length)
    _check_windows(batch, streams, per_worker, length)
    # Windows crossing the ring's end are drawn once it wrapped.
    if steps == 200:
        pos = batch['counter'][:, 0] % per_worker
        assert np.any(pos + length > per_worker)
    # Same draws as the memory replay (shared sampler), same contents.
    ref = memory.sample(256, length)
    for k in ref:
        np.testing.assert_array_equal(batch[k], ref[k])
        assert batch[k].dtype == ref[k].dtype


def test_files_are_sparse_npy(tmp_path):
    replay = DiskReplay(tmp_path, 4000, 2)
    _fill([replay], 2, 10)
    image = np.load(tmp_path / '04_image.npy', mmap_mode='r')
    assert image.shape == (2, 2000, 2, 3) and image.dtype == np.uint8
    st = os.stat(tmp_path / '04_image.npy')
    assert st.st_blocks * 512 < st.st_size  # holes, not zeros
    assert replay.bytes_per_step() == 8 + 8 + 4 + 1 + 4 + 6


def test_reopen_restores_saved_state_and_ignores_later_steps(tmp_path):
    num_workers, capacity, length = 2, 40, 5
    per_worker = capacity // num_workers
    a = DiskReplay(tmp_path, capacity, num_workers, seed=3)
    streams = _fill([a], num_workers, 30)
    a.save()
    saved = a.counts.copy()
    before = a.sample(64, length)
    # Steps after the save overwrite the oldest saved slots; then the process "dies".
    streams = _fill([a], num_workers, 12, streams=streams, seed=1)
    a.close()
    b = DiskReplay(tmp_path, capacity, num_workers, seed=99)
    np.testing.assert_array_equal(b.counts, saved)
    overwritten = a.counts - saved
    np.testing.assert_array_equal(b.stored(), np.minimum(saved, per_worker) - overwritten)
    end = saved
    first = saved - b.stored()
    _check_windows(b.sample(300, length), streams, per_worker, length, first, end)
    # The RNG state came back too: a replay reopened right after save() draws like `a` did.
    c = DiskReplay(tmp_path / 'c', capacity, num_workers, seed=3)
    d_streams = _fill([c], num_workers, 30)
    c.save()
    c.close()
    c = DiskReplay(tmp_path / 'c', capacity, num_workers)
    again = c.sample(64, length)
    for k in before:
        np.testing.assert_array_equal(before[k], again[k])
    # Writing continues on the restored timeline.
    new = [s[:e] for s, e in zip(streams, saved)]
    new = _fill([b], num_workers, 40, streams=new, seed=2)
    assert np.all(b.stored() == per_worker)
    _check_windows(b.sample(200, length), new, per_worker, length)
    assert d_streams


def test_checkpoint_copy_of_the_index(tmp_path):
    """save(ckpt_dir) + load(ckpt_dir) restores that older view of the same ring."""
    ring, ckpt = tmp_path / 'ring', tmp_path / 'ckpt'
    a = DiskReplay(ring, 30, 1)
    streams = _fill([a], 1, 25, workers_per_add=1)
    a.save(ckpt)
    saved = a.counts.copy()
    streams = _fill([a], 1, 7, streams=streams, workers_per_add=1)
    a.save()  # the ring's own index is newer than the checkpoint's copy
    a.close()
    b = DiskReplay(ring, 30, 1)
    assert b.counts[0] == 32
    assert b.load(ckpt)
    assert b.counts[0] == saved[0] and b.stored()[0] == 30 - 7
    _check_windows(b.sample(100, 4), streams, 30, 4, first=[saved[0] - 23], end=saved)
    assert not b.load(tmp_path / 'nothing')
    # An index of a different ring is refused.
    other = DiskReplay(tmp_path / 'other', 30, 1)
    _fill([other], 1, 3, workers_per_add=1)
    with pytest.raises(ReplayError, match='belongs to ring'):
        other.load(ckpt)


@pytest.mark.parametrize('kind', ['memory', 'disk'])
def test_save_load_interface(tmp_path, kind):
    make = lambda seed: make_replay(kind, 60, 3, seed=seed, directory=tmp_path / 'ring')
    a = make(5)
    streams = _fill([a], 3, 40)
    info = a.save(tmp_path / 'ckpt')
    assert info['kind'] == kind and info['size'] == len(a)
    expected = a.sample(32, 6)
    if kind == 'disk':
        a.close()
    b = make(7)
    assert b.load(tmp_path / 'ckpt')
    assert len(b) == len(a)
    got = b.sample(32, 6)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
    _check_windows(got, streams, 20, 6)
    with pytest.raises(ReplayError, match='capacity'):
        make_replay(kind, 90, 3, directory=tmp_path / 'ring').load(tmp_path / 'ckpt')


def test_mismatch_on_reopen(tmp_path):
    a = DiskReplay(tmp_path, 40, 2)
    _fill([a], 2, 5)
    a.save()
    a.close()
    with pytest.raises(ReplayError, match='capacity 40 with 2 workers.*--replay_size'):
        DiskReplay(tmp_path, 80, 2)
    b = DiskReplay(tmp_path, 40, 2)
    step = {k: np.stack([v, v]) for k, v in _step(0, 0).items()}
    step['image'] = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(ReplayError, match='image.*shape'):
        b.add(step, [0, 1])
    with pytest.raises(KeyError):
        b.add({'counter': np.zeros(1)}, [0])


def test_refuses_when_disk_is_too_small(tmp_path, monkeypatch):
    usage = disklib.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(disklib.shutil, 'disk_usage', lambda p: usage._replace(free=10 * 2**20))
    replay = DiskReplay(tmp_path, 1_000_000, 4)
    step = {'image': np.zeros((4, 64, 64, 3), np.uint8), 'is_first': np.ones(4, bool)}
    with pytest.raises(ReplayError) as e:
        replay.add(step, [0, 1, 2, 3])
    msg = str(e.value)
    assert '\n' not in msg
    assert 'needs 11.5 GiB' in msg and '10.0 MiB is free' in msg
    assert '--replay_size' in msg and '--replay_dir' in msg
    assert list(tmp_path.iterdir()) == []


def _rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise AssertionError


def test_resident_memory_stays_bounded(tmp_path):
    capacity, workers = 200_000, 4
    replay = DiskReplay(tmp_path, capacity, workers)
    image = np.random.default_rng(0).integers(0, 255, (workers, 64, 64, 3), np.uint8)
    step = lambda i: {
        'image': image,
        'is_first': np.full(workers, i % 100 == 0),
        'reward': np.full(workers, i, np.float32),
    }
    replay.add(step(0), np.arange(workers))
    size = os.stat(tmp_path / '00_image.npy').st_size
    assert size > 2.4e9
    rss0 = _rss()
    for i in range(1, 1000):  # 4,000 steps, 49 MB of images
        replay.add(step(i), np.arange(workers))
    for _ in range(5):
        batch = replay.sample(16, 64)
    del batch
    grown = _rss() - rss0
    allocated = os.stat(tmp_path / '00_image.npy').st_blocks * 512
    assert 4000 * 64 * 64 * 3 <= allocated < 0.05 * size
    assert grown < 32 * 2**20, f'RSS grew by {grown / 2**20:.1f} MiB'
