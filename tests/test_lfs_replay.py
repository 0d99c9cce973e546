"""Two-tier LFS replay: durable chunks in lfs_dir, rebuild on restart, corrupt chunks, errors,
the storage bound, checkpoint consistency, and an end-to-end restart with a new logdir."""

import json
import os
import shutil
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from recall2imagine.checkpoint import Checkpointer
from recall2imagine.replay import DiskReplay, LfsReplay, MemoryReplay, ReplayError, make_replay
from recall2imagine.replay import lfs as lfslib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _step(w, n):
    return {
        'counter': np.int64(n),
        'worker': np.int32(w),
        'is_first': n % 11 == 0,
        'image': np.full((2, 3), (w * 1000 + n) % 251, np.uint8),
    }


def _fill(replay, streams, steps, seed=0):
    """Adds `steps` calls of one or both workers (uneven streams); `streams[w]` counts worker w's steps."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        workers = [w for w in range(len(streams)) if rng.random() < 0.7] or [0]
        rows = [_step(w, streams[w]) for w in workers]
        for w in workers:
            streams[w] += 1
        replay.add({k: np.stack([r[k] for r in rows]) for k in rows[0]}, workers)


def _stored(replay):
    """{worker: sorted counters of its stored steps} read from the local tier."""
    len(replay)  # the local tier is built (from lfs_dir) at first use
    local = replay.local
    data = local.data
    out = {}
    for w in range(local.num_workers):
        n = int(local.stored()[w])
        pos = (local.counts[w] - n + np.arange(n)) % local.per_worker
        out[w] = np.asarray(data['counter'])[w, pos].tolist()
        assert np.all(np.asarray(data['worker'])[w, pos] == w)
    return out


def _make(tmp_path, local, lfs='lfs', loc='local', capacity=100, chunk=8, **kw):
    return LfsReplay(
        tmp_path / lfs,
        capacity,
        2,
        chunk=chunk,
        seed=0,
        local=local,
        local_dir=tmp_path / loc if local == 'disk' else None,
        **kw,
    )


@pytest.mark.parametrize('local', ['memory', 'disk'])
def test_reopen_from_lfs_with_an_empty_local_tier(tmp_path, local):
    replay = _make(tmp_path, local)
    streams = [0, 0]
    _fill(replay, streams, 120)
    before = _stored(replay)
    batch = replay.sample(32, 6)
    assert np.all(np.diff(batch['counter'], axis=1) == 1) and np.all(batch['is_first'][:, 0])
    replay.close()
    assert streams[0] != streams[1]  # uneven streams; both end in a partial chunk or not

    again = _make(tmp_path, local, loc='new-local')  # a new machine: nothing local
    assert len(again) == len(replay) == sum(min(s, 50) for s in streams)
    assert _stored(again) == before
    for w in range(2):
        assert before[w] == list(range(max(0, streams[w] - 50), streams[w]))
    batch = again.sample(64, 6)
    assert np.all(np.diff(batch['counter'], axis=1) == 1)
    # keeps going: the partial newest chunk fills up and is rewritten under its name
    _fill(again, streams, 30, seed=1)
    again.close()
    third = _make(tmp_path, local, loc='third')
    assert _stored(third) == {w: list(range(max(0, streams[w] - 50), streams[w])) for w in range(2)}
    third.close()


def test_chunk_files_and_storage_bound(tmp_path):
    replay = _make(tmp_path, 'memory', capacity=40, chunk=4)  # 20 steps per worker
    streams = [0, 0]
    for i in range(300):
        replay.add({k: np.stack([_step(w, streams[w])[k] for w in (0, 1)]) for k in _step(0, 0)}, [0, 1])
        streams = [s + 1 for s in streams]
        if i % 50 == 0:
            replay.flush()
    replay.flush()
    names = sorted(p.name for p in (tmp_path / 'lfs').glob('*.chunk'))
    for w in (0, 1):
        starts = [int(n[6:18]) for n in names if n.startswith(f'w{w:04d}-')]
        # chunks holding none of the newest 20 steps are gone: 300 - 20 = 280 -> chunks 280..296
        assert starts == list(range(280, 300, 4)), starts
        header, arrays = lfslib.read_chunk(tmp_path / 'lfs' / lfslib.chunk_name(w, 296))
        assert header['steps'] == 4 and arrays['counter'].tolist() == [296, 297, 298, 299]
        assert arrays['image'].dtype == np.uint8 and arrays['image'].shape == (4, 2, 3)
    steps = sum(lfslib._chunk_steps(tmp_path / 'lfs' / n) for n in names)
    assert steps <= 40 + 2 * 4 * 2
    meta = json.loads((tmp_path / 'lfs' / 'LFS.json').read_text())
    assert meta['num_workers'] == 2 and [s['key'] for s in meta['schema']][0] == 'counter'
    assert not [p for p in (tmp_path / 'lfs').iterdir() if '.tmp-' in p.name]
    replay.close()


def test_truncated_and_corrupt_chunks_are_skipped_with_a_warning(tmp_path, capsys):
    replay = _make(tmp_path, 'memory')
    streams = [0, 0]
    for _ in range(40):
        replay.add({k: np.stack([_step(w, streams[w])[k] for w in (0, 1)]) for k in _step(0, 0)}, [0, 1])
        streams = [s + 1 for s in streams]
    replay.close()
    lfs = tmp_path / 'lfs'
    trunc = lfs / lfslib.chunk_name(0, 16)
    trunc.write_bytes(trunc.read_bytes()[:-7])
    flip = lfs / lfslib.chunk_name(1, 8)
    data = bytearray(flip.read_bytes())
    data[-5] ^= 0xFF
    flip.write_bytes(bytes(data))
    capsys.readouterr()
    again = _make(tmp_path, 'memory')
    assert len(again) == 80 - 16
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith('warning: skipping replay chunk') for line in err), err
    assert any('truncated' in line for line in err) and any('CRC' in line for line in err)
    assert (lfs / (trunc.name + '.corrupt')).exists() and not trunc.exists()
    got = _stored(again)
    assert got[0] == list(range(16)) + list(range(24, 40))
    # the step after the gap starts an episode, so no window is trained across it
    pos = 16
    assert bool(again.local.data['is_first'][0, pos]) and got[0][pos] == 24
    again.close()
    capsys.readouterr()
    third = _make(tmp_path, 'memory')  # renamed away: no second warning
    assert len(third) == 64 and capsys.readouterr().err == ''
    third.close()


def test_unwritable_lfs_dir_and_flag_errors(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(ReplayError, match='cannot create --lfs_dir') as e:
        LfsReplay(blocker / 'sub', 100, 2, local='memory')
    assert '\n' not in str(e.value)
    if os.geteuid() != 0:  # root writes anyway
        ro = tmp_path / 'ro'
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ReplayError, match='not writable'):
                LfsReplay(ro, 100, 2, local='memory')
        finally:
            ro.chmod(0o700)
    with pytest.raises(ReplayError, match='needs --lfs_dir'):
        make_replay('memory', 100, 2, use_lfs=True)
    with pytest.raises(ReplayError, match='--replay lfs needs --lfs_dir'):
        make_replay('lfs', 100, 2, directory=tmp_path / 'r')
    r = make_replay('lfs', 100, 2, directory=tmp_path / 'r', lfs_dir=tmp_path / 'l')
    assert isinstance(r, LfsReplay) and r.local_kind == 'disk'
    with pytest.raises(ReplayError, match='in use by another run'):
        make_replay('memory', 100, 2, use_lfs=True, lfs_dir=tmp_path / 'l')
    r.close()
    r = make_replay('memory', 100, 2, use_lfs=True, lfs_dir=tmp_path / 'l')
    assert r.local_kind == 'memory'
    r.close()
    with pytest.raises(ReplayError, match='--use_lfs is False: add --use_lfs True'):
        make_replay('memory', 100, 2, lfs_dir=tmp_path / 'l')
    with pytest.raises(ReplayError, match='3 workers|envs.amount'):
        r = LfsReplay(tmp_path / 'l', 99, 3, local='memory')
        r.add({k: np.stack([_step(w, 0)[k] for w in range(3)]) for k in _step(0, 0)}, [0, 1, 2])
        r.close()
        LfsReplay(tmp_path / 'l', 99, 2, local='memory')


def test_cli_reports_lfs_errors_in_one_line(tmp_path, capsys):
    from recall2imagine import train

    (tmp_path / 'file').write_text('x')
    base = ['--configs', 'popgym', 'debug', '--logdir', str(tmp_path / 'L'), '--run.steps', '8']
    for extra, needle in (
        (['--use_lfs', 'True', '--lfs_dir', str(tmp_path / 'file' / 'D')], 'cannot create --lfs_dir'),
        (['--use_lfs', 'True'], 'needs --lfs_dir'),
    ):
        assert train.main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith('error: ') and needle in err and '\n' not in err, err


def test_not_enough_free_space_names_the_numbers(tmp_path, monkeypatch):
    real = lfslib.shutil.disk_usage
    monkeypatch.setattr(lfslib.shutil, 'disk_usage', lambda p: real(p)._replace(free=10_000))
    replay = _make(tmp_path, 'memory', capacity=10_000)
    with pytest.raises(ReplayError) as e:
        replay.add({k: np.stack([_step(w, 0)[k] for w in (0, 1)]) for k in _step(0, 0)}, [0, 1])
    msg = str(e.value)
    assert (
        'lfs replay needs' in msg and '9.8 KiB' in msg and '--replay_size N (N <=' in msg and '\n' not in msg
    )
    replay.close()


@pytest.mark.parametrize('local', ['memory', 'disk'])
def test_checkpoint_then_crash_keeps_everything_durable(tmp_path, local):
    """save(ckpt) flushes; chunks flushed after it survive a crash and are added back on load."""
    replay = _make(tmp_path, local, capacity=200, chunk=4)
    ckpt = Checkpointer(tmp_path / 'ckpt')
    streams = [0, 0]
    _fill(replay, streams, 30)
    ckpt.save(1, {'x': np.zeros(1)}, {'replay': replay.info()}, extra=replay.save)
    manifest = json.loads((ckpt.path(1) / lfslib.MANIFEST).read_text())
    assert manifest['pos'] == streams  # everything up to the checkpoint is durable
    at_ckpt = list(streams)
    _fill(replay, streams, 23, seed=1)
    replay._queue.join()  # the background writer wrote the full chunks; staged steps are lost
    durable = [
        max((s + n for (w, s), n in replay.durable_chunks().items() if w == k), default=0) for k in (0, 1)
    ]
    assert all(a <= d <= s for a, d, s in zip(at_ckpt, durable, streams))
    # SIGKILL: no close(), no save(); a new process opens the same dirs and resumes the checkpoint
    replay._unlock()
    fresh = _make(tmp_path, local, capacity=200, chunk=4)
    _, _, meta = ckpt.load_latest({'x': np.zeros(1)}, extra=fresh.load)
    assert meta['replay']['durable_pos'] == at_ckpt
    got = _stored(fresh)
    assert got == {w: list(range(durable[w])) for w in (0, 1)}
    assert fresh.pos.tolist() == durable
    fresh.close()


def test_extend_equals_add(tmp_path):
    for make in (lambda d: MemoryReplay(12, 2), lambda d: DiskReplay(d, 12, 2)):
        a, b = make(tmp_path / 'a'), make(tmp_path / 'b')
        rows = [_step(1, n) for n in range(17)]
        for r in rows:
            a.add({k: np.stack([v]) for k, v in r.items()}, [1])
        b.extend(1, {k: np.stack([r[k] for r in rows[:5]]) for k in rows[0]})
        b.extend(1, {k: np.stack([r[k] for r in rows[5:]]) for k in rows[0]})
        assert a.counts.tolist() == b.counts.tolist() and a.stored().tolist() == b.stored().tolist()
        for k in rows[0]:
            np.testing.assert_array_equal(np.asarray(a.data[k]), np.asarray(b.data[k]))
        if isinstance(b, DiskReplay):
            b.save()
            b.close()
            c = make(tmp_path / 'b')  # stamps agree with the index: nothing dropped
            assert c.stored().tolist() == a.stored().tolist()
            c.close()
            a.close()


def _train(logdir, lfs_dir, steps, *extra):
    cmd = [
        sys.executable,
        '-m',
        'recall2imagine.train',
        '--configs',
        'popgym',
        'debug',
        '--task',
        'gym_popgym:popgym-RepeatPreviousEasy-v0',
        '--lfs_dir',
        str(lfs_dir),
        '--logdir',
        str(logdir),
        '--run.steps',
        str(steps),
        '--run.eval_eps',
        '0',
        *extra,
    ]
    out = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONUNBUFFERED='1')
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_restart_on_a_new_logdir_finds_the_replay(tmp_path):
    d1 = tmp_path / 'D1'
    first = _train(tmp_path / 'L1', d1, 300, '--use_lfs', 'True')
    assert 'prefill' in first
    assert len(list(d1.glob('w0000-*.chunk'))) == len(list(d1.glob('w0001-*.chunk'))) == 10  # 150 steps / 16
    # a new, empty logdir (another machine) and the same lfs_dir; --replay lfs: a disk local tier.
    # The checkpoints live in lfs_dir too: the agent, counters and replay all resume.
    second = _train(tmp_path / 'L2', d1, 0, '--replay', 'lfs')
    assert 'at step 300 (300 replay steps)' in second, second
    assert 'prefill' not in second
    rows = [json.loads(line) for line in open(tmp_path / 'L2' / 'metrics.jsonl')]
    assert rows[-1]['replay/size'] == 300
    assert (tmp_path / 'L2' / 'replay' / 'replay_index.json').exists()
    # r2i-eval of the first logdir finds its checkpoints in lfs_dir, the newest one (the second run's)
    from recall2imagine.evaluate import load_agent

    assert not (tmp_path / 'L1' / 'checkpoints').exists()
    assert load_agent(tmp_path / 'L1').step == 300
    # without any checkpoint the replay alone is rebuilt from the chunks
    shutil.rmtree(d1 / 'checkpoints')
    third = _train(tmp_path / 'L3', d1, 0, '--use_lfs', 'True')
    assert 'replay: restored 300 steps of 2 workers from 20 chunks' in third, third
    assert 'prefill' not in third
