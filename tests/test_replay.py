import numpy as np
import pytest

from recall2imagine.replay import MemoryReplay


def _fill(replay, num_workers, steps, workers_per_add=None, seed=0):
    """Adds steps to the replay; returns each worker's full stream (list)."""
    rng = np.random.default_rng(seed)
    streams = [[] for _ in range(num_workers)]
    for _ in range(steps):
        k = workers_per_add or num_workers
        workers = np.sort(rng.choice(num_workers, size=k, replace=False))
        batch = {'counter': [], 'worker': [], 'is_first': [], 'image': []}
        for w in workers:
            n = len(streams[w])
            step = {
                'counter': np.int64(n),
                'worker': np.int32(w),
                'is_first': n % 7 == 0,
                'image': np.full((2, 3), (w * 1000 + n) % 251, np.uint8),
            }
            streams[w].append(step)
            for key in batch:
                batch[key].append(step[key])
        replay.add({k: np.stack(v) for k, v in batch.items()}, workers)
    return streams


def _reference_windows(streams, per_worker, length):
    """All valid windows, by a slow loop over the stored tail of each stream."""
    windows = set()
    for w, stream in enumerate(streams):
        kept = stream[-per_worker:]
        for s in range(len(kept) - length + 1):
            windows.add(tuple((w, int(x['counter'])) for x in kept[s : s + length]))
    return windows


@pytest.mark.parametrize('steps', [20, 50, 200])  # before and after wrapping
def test_windows_match_reference(steps):
    num_workers, capacity, length = 3, 90, 8
    replay = MemoryReplay(capacity, num_workers, seed=1)
    streams = _fill(replay, num_workers, steps, workers_per_add=2)
    per_worker = capacity // num_workers
    assert len(replay) == sum(min(len(s), per_worker) for s in streams)
    reference = _reference_windows(streams, per_worker, length)
    batch = replay.sample(512, length)
    assert batch['counter'].shape == (512, length)
    assert batch['image'].shape == (512, length, 2, 3)
    assert batch['image'].dtype == np.uint8
    seen = set()
    for b in range(512):
        w = batch['worker'][b]
        assert np.all(w == w[0])
        key = tuple((int(w[0]), int(c)) for c in batch['counter'][b])
        assert key in reference
        seen.add(key)
        # Content is contiguous and belongs to the sampled steps.
        stream = streams[int(w[0])]
        for t, c in enumerate(batch['counter'][b]):
            np.testing.assert_array_equal(batch['image'][b, t], stream[c]['image'])
            if t > 0:
                assert batch['is_first'][b, t] == stream[c]['is_first']
    assert np.all(batch['is_first'][:, 0])
    # Uniform over windows: with 512 draws nearly all windows show up.
    assert len(seen) >= 0.8 * len(reference) or len(reference) > 400


def test_uniform_over_windows():
    replay = MemoryReplay(40, 2, seed=0)
    streams = _fill(replay, 2, 35)  # worker rings hold 20 each, wrapped
    length = 5
    reference = sorted(_reference_windows(streams, 20, length))
    assert len(reference) == 2 * 16
    batch = replay.sample(32000, length)
    keys = [(int(w), int(c)) for w, c in zip(batch['worker'][:, 0], batch['counter'][:, 0])]
    counts = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    assert sorted(counts) == sorted(win[0] for win in reference)
    freq = np.array(list(counts.values())) / len(keys)
    assert np.all(np.abs(freq - 1 / 32) < 0.25 / 32)


def test_unequal_workers_and_too_short():
    replay = MemoryReplay(100, 2, seed=0)
    replay.add({'counter': np.array([0]), 'is_first': np.array([True])}, [1])
    with pytest.raises(ValueError, match='no window'):
        replay.sample(4, 2)
    replay.add({'counter': np.array([1]), 'is_first': np.array([False])}, [1])
    batch = replay.sample(4, 2)
    assert batch['counter'].tolist() == [[0, 1]] * 4
    with pytest.raises(ValueError):
        replay.sample(1, 51)  # longer than a worker ring


def test_capacity_bound_and_wrap():
    replay = MemoryReplay(capacity=10, num_workers=2, seed=0)
    _fill(replay, 2, 23)
    assert len(replay) == 10
    assert replay.data['counter'].shape[:2] == (2, 5)
    batch = replay.sample(200, 5)
    # Only the newest 5 steps of each worker remain, in order.
    assert np.all(batch['counter'] == np.arange(18, 23)[None])


def test_state_dict_roundtrip():
    a = MemoryReplay(60, 3, seed=5)
    streams = _fill(a, 3, 30)
    state = a.state_dict()
    # Simulate serialisation.
    state = {
        **state,
        'data': {k: v.copy() for k, v in state['data'].items()},
        'counts': state['counts'].tolist(),
    }
    b = MemoryReplay(60, 3, seed=99)
    b.load_state_dict(state)
    assert len(a) == len(b)
    for k in a.data:
        np.testing.assert_array_equal(a.data[k], b.data[k])
    sa, sb = a.sample(16, 6), b.sample(16, 6)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    # Both continue identically after more inserts.
    rng_steps = {
        'counter': np.array([100, 101]),
        'worker': np.array([0, 2]),
        'is_first': np.array([False, True]),
        'image': np.zeros((2, 2, 3), np.uint8),
    }
    a.add(rng_steps, [0, 2])
    b.add(rng_steps, [0, 2])
    np.testing.assert_array_equal(a.counts, b.counts)
    with pytest.raises(ValueError):
        MemoryReplay(30, 3).load_state_dict(a.state_dict())
    assert streams  # silence unused warnings


def test_add_validation():
    replay = MemoryReplay(20, 2)
    replay.add({'x': np.zeros(2)}, [0, 1])
    with pytest.raises(ValueError):
        replay.add({'x': np.zeros(2)}, [0, 0])
    with pytest.raises(KeyError):
        replay.add({'y': np.zeros(1)}, [0])


def test_a_replay_larger_than_memory_is_one_clear_error(monkeypatch):
    """An image replay whose capacity exceeds the machine's memory (e.g. the 1e7-step default with
    64x64 images: 114 GiB) is refused with what to change, and nothing is half-allocated; one that
    fits is allocated lazily and takes steps."""
    from recall2imagine.replay import memory
    from recall2imagine.replay.memory import ReplayError

    monkeypatch.setattr(memory, 'physical_memory', lambda: 2**30)  # a 1 GiB machine
    step = {'image': np.zeros((2, 64, 64, 3), np.uint8), 'reward': np.zeros(2, np.float32)}
    big = MemoryReplay(200_000, 2)  # 200k x 12 KiB = 2.3 GiB
    with pytest.raises(ReplayError, match=r'--replay_size N \(N <= 43,676 takes half') as e:
        big.add(step, [0, 1])
    assert '\n' not in str(e.value) and '--replay disk' in str(e.value)
    assert big.data is None and len(big) == 0
    small = MemoryReplay(40_000, 2)
    small.add(step, [0, 1])
    assert len(small) == 2
