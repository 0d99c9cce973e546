"""Replay throughput: memory vs disk vs lfs, Memory Maze-sized steps (64x64x3 uint8 image).

  .venv/bin/python benchmarks/replay.py                 # 1e5 steps
  .venv/bin/python benchmarks/replay.py --steps 1e6 --dir /big/disk --kinds disk,lfs

lfs is the two-tier replay (a disk local tier plus durable chunk files of --length steps,
written and fsynced by a background thread); its insert time includes the final flush,
and it also reports the restart: rebuilding the local tier from the chunks alone.

Reports insert steps/s, sample sequences/s (and steps/s), disk bytes per step, resident
memory, and the RSS of a sparse 1e7-step disk replay. Disk reads are mostly served from
the page cache here (the files were just written); a cold cache reads at disk speed.
"""

import argparse
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from recall2imagine.replay import DiskReplay, LfsReplay, MemoryReplay  # noqa: E402


def rss_mib() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def allocated_bytes(directory) -> int:
    """Disk blocks actually allocated by the files in `directory` (sparse files count what is written)."""
    return sum(p.stat().st_blocks * 512 for p in pathlib.Path(directory).iterdir())


def make_steps(workers, variants=32, seed=0):
    """A few distinct Memory Maze-like steps for `workers` envs (cycled through)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(variants):
        out.append(
            {
                'image': rng.integers(0, 256, (workers, 64, 64, 3), np.uint8),
                'action': np.eye(6, dtype=np.float32)[rng.integers(0, 6, workers)],
                'reward': rng.normal(size=workers).astype(np.float32),
                'is_first': rng.random(workers) < 0.001,
                'is_last': np.zeros(workers, bool),
                'is_terminal': np.zeros(workers, bool),
                'step_no': rng.integers(0, 1000, workers).astype(np.int32),
                'reset': np.zeros(workers, bool),
                'id': rng.integers(0, 256, (workers, 16), np.uint8),
            }
        )
    return out


def bench(name, replay, steps, workers, batch, length, samples):
    data = make_steps(workers)
    ids = np.arange(workers)
    rss0 = rss_mib()
    t = time.perf_counter()
    for i in range(steps // workers):
        replay.add(data[i % len(data)], ids)
    if hasattr(replay, 'flush'):  # lfs: everything durable
        replay.flush()
    insert = time.perf_counter() - t
    n = steps // workers * workers
    replay.sample(batch, length)  # warm-up
    t = time.perf_counter()
    for _ in range(samples):
        replay.sample(batch, length)
    sample = time.perf_counter() - t
    print(
        f'{name:>6}: insert {n / insert:9,.0f} steps/s | sample {samples * batch / sample:8,.1f} seq/s '
        f'({samples * batch * length / sample:10,.0f} steps/s, batch {batch}x{length}) | '
        f'RSS +{rss_mib() - rss0:7.1f} MiB',
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=float, default=1e5)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--length', type=int, default=64)
    parser.add_argument('--samples', type=int, default=50, help='sample() calls timed')
    parser.add_argument('--dir', default='', help='where disk replays go (default: a temp dir)')
    parser.add_argument(
        '--sparse_steps', type=float, default=1e7, help='capacity of the sparse replay whose RSS is reported'
    )
    parser.add_argument('--skip_memory', action='store_true')
    parser.add_argument(
        '--kinds', default='memory,disk,lfs', help='comma-separated subset of memory,disk,lfs'
    )
    parser.add_argument('--skip_sparse', action='store_true')
    args = parser.parse_args()
    kinds = set(args.kinds.split(',')) - ({'memory'} if args.skip_memory else set())
    steps = int(args.steps)
    base = pathlib.Path(tempfile.mkdtemp(prefix='replay-bench-', dir=args.dir or None))
    try:
        print(
            f'{steps:,} steps, {args.workers} workers, 64x64x3 uint8 image + action/reward/flags/'
            f'step_no/id; dir {base}',
            flush=True,
        )
        if 'memory' in kinds:
            bench(
                'memory',
                MemoryReplay(steps, args.workers),
                steps,
                args.workers,
                args.batch,
                args.length,
                args.samples,
            )
        if 'disk' in kinds:
            disk = DiskReplay(base / 'disk', steps, args.workers)
            bench('disk', disk, steps, args.workers, args.batch, args.length, args.samples)
            t = time.perf_counter()
            disk.save()
            save = time.perf_counter() - t
            allocated = allocated_bytes(base / 'disk')
            print(
                f'  disk: {disk.bytes_per_step():,} bytes/step in the layout, {allocated / steps:,.0f} '
                f'bytes/step allocated ({allocated / 2**30:.2f} GiB for {steps:,}); save() '
                f'{save * 1e3:.0f} ms',
                flush=True,
            )
            disk.close()
            shutil.rmtree(base / 'disk')
        if 'lfs' in kinds:
            make = lambda local: LfsReplay(
                base / 'lfs',
                steps,
                args.workers,
                chunk=args.length,
                local='disk',
                local_dir=base / local,
                verbose=False,
            )
            lfs = make('lfs-local')
            bench('lfs', lfs, steps, args.workers, args.batch, args.length, args.samples)
            lfs.close()
            local = allocated_bytes(base / 'lfs-local')
            durable = allocated_bytes(base / 'lfs')
            print(
                f'  lfs: {lfs.bytes_per_step():,} bytes/step of data; allocated {local / steps:,.0f} bytes/step '
                f'local + {durable / steps:,.0f} bytes/step durable ({(local + durable) / 2**30:.2f} GiB '
                f'for {steps:,}, {len(list((base / "lfs").glob("*.chunk")))} chunk files)',
                flush=True,
            )
            shutil.rmtree(base / 'lfs-local')
            t = time.perf_counter()
            again = make('lfs-new')  # a restart on a machine with an empty local tier
            n = len(again)
            rebuild = time.perf_counter() - t
            print(
                f'  lfs restart with an empty local tier: rebuilt {n:,} steps in {rebuild:.1f} s '
                f'({n / rebuild:,.0f} steps/s)',
                flush=True,
            )
            again.close()
            shutil.rmtree(base / 'lfs-new')
            shutil.rmtree(base / 'lfs')
        if args.skip_sparse:
            return

        # RSS of a big sparse replay: created, a few thousand steps in, sampled.
        n = int(args.sparse_steps)
        rss0 = rss_mib()
        big = DiskReplay(base / 'sparse', n, args.workers, check_space=False)
        data = make_steps(args.workers)
        for i in range(4000 // args.workers):
            big.add(data[i % len(data)], np.arange(args.workers))
        for _ in range(10):
            big.sample(args.batch, args.length)
        files = list((base / 'sparse').iterdir())
        apparent = sum(p.stat().st_size for p in files)
        allocated = allocated_bytes(base / 'sparse')
        print(
            f'sparse {n:,}-step disk replay: files {apparent / 2**30:,.1f} GiB apparent, '
            f'{allocated / 2**20:,.1f} MiB allocated after 4,000 steps; process VmRSS '
            f'{rss_mib():,.1f} MiB ({rss_mib() - rss0:+.1f} MiB for the replay)',
            flush=True,
        )
        big.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()
