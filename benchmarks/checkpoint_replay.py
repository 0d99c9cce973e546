"""Checkpoint bytes and seconds of the memory replay: kept checkpoints share its full chunks.

  .venv/bin/python benchmarks/checkpoint_replay.py                  # 1e6 steps, 3 kept checkpoints
  .venv/bin/python benchmarks/checkpoint_replay.py --image --steps 1e5

A full memory replay of --steps steps (POPGym-like: a --vector float32 observation, a one-hot
action, reward and flags; --image adds a 64x64x3 uint8 image) is checkpointed --saves times,
--every env steps apart, through the Checkpointer with --keep kept checkpoints, once storing the
replay in every checkpoint folder (`shared=None`, what every checkpoint held before) and once
with shared chunks. Reports per save the seconds and the bytes of the checkpoint directory, and
at the end the directory's bytes over one copy of the replay, and the load seconds.
"""

import argparse
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from recall2imagine.checkpoint import Checkpointer  # noqa: E402
from recall2imagine.replay import MemoryReplay  # noqa: E402


def steps(n, args, rng):
    """``n`` consecutive steps of one worker."""
    out = dict(
        vector=rng.standard_normal((n, args.vector), np.float32),
        action=np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)],
        reward=rng.standard_normal(n).astype(np.float32),
        is_first=rng.random(n) < 0.02,
        is_last=rng.random(n) < 0.02,
        is_terminal=np.zeros(n, bool),
    )
    if args.image:
        out['image'] = rng.integers(0, 256, (n, 64, 64, 3), np.uint8)
    return out


def dir_bytes(directory) -> int:
    return sum(p.stat().st_size for p in pathlib.Path(directory).rglob('*') if p.is_file())


def run(shared, args, root):
    rng = np.random.default_rng(0)
    replay = MemoryReplay(int(args.steps), args.workers, seed=0)
    for w in range(args.workers):
        for _ in range(replay.per_worker // 10000 + 1):
            replay.extend(w, steps(10000, args, rng))
    copy = sum(v.nbytes for v in replay.data.values())
    ckpt = Checkpointer(root, keep=args.keep)
    save = replay.save if shared else (lambda folder, _: replay.save(folder))
    rows = []
    for i in range(args.saves):
        for w in range(args.workers):
            replay.extend(w, steps(args.every // args.workers, args, rng))
        t = time.perf_counter()
        ckpt.save(i + 1, {'x': np.zeros(1)}, extra=save)
        rows.append((time.perf_counter() - t, dir_bytes(root)))
    fresh = MemoryReplay(int(args.steps), args.workers, seed=0)
    t = time.perf_counter()
    ckpt.load_latest(
        {'x': np.zeros(1)}, extra=fresh.load if shared else (lambda folder, _: fresh.load(folder))
    )
    load = time.perf_counter() - t
    assert all(np.array_equal(fresh.data[k], replay.data[k]) for k in replay.data)
    return copy, rows, load


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=float, default=1e6)
    p.add_argument('--workers', type=int, default=4)
    p.add_argument('--vector', type=int, default=64, help='float32 observation width')
    p.add_argument('--image', action='store_true', help='add a 64x64x3 uint8 image to every step')
    p.add_argument('--every', type=int, default=20000, help='env steps between checkpoints')
    p.add_argument('--saves', type=int, default=5)
    p.add_argument('--keep', type=int, default=3)
    p.add_argument('--dir', default='', help='where the checkpoints go (default: a temp dir)')
    args = p.parse_args()
    base = pathlib.Path(args.dir or tempfile.mkdtemp(prefix='ckpt_bench_'))
    print(
        f'memory replay of {args.steps:.0f} steps, {args.workers} workers, a checkpoint every {args.every} '
        f'steps, {args.keep} kept'
    )
    print(
        '| replay in checkpoints | one replay copy | save s (first / later, median) | checkpoint dir after '
        f'{args.saves} saves | / one copy | load s |'
    )
    print('|---|---:|---:|---:|---:|---:|')
    for shared in (False, True):
        root = base / ('shared' if shared else 'copies')
        copy, rows, load = run(shared, args, root)
        secs = [r[0] for r in rows]
        print(
            f'| {"shared chunks" if shared else "a copy in each"} | {copy / 2**20:,.0f} MiB | {secs[0]:.2f} / '
            f'{np.median(secs[1:]):.2f} | {rows[-1][1] / 2**20:,.0f} MiB | {rows[-1][1] / copy:.2f}x | '
            f'{load:.2f} |',
            flush=True,
        )
        shutil.rmtree(root, ignore_errors=True)
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()
