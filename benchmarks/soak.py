"""Soak test: a training run SIGKILLed at random moments and restarted with the same command.

  .venv/bin/python benchmarks/soak.py --minutes 30 --root /work/runs/soak            # memory replay
  .venv/bin/python benchmarks/soak.py --minutes 30 --root /work/runs/soak --lfs      # durable LFS replay
  .venv/bin/python benchmarks/soak.py --faults --root /work/runs/soak                # full disk, corrupt checkpoint

Each segment runs `python -m recall2imagine.train --configs popgym popgym_cpu ...` (a checkpoint every
--save_every seconds) for a random time in [--min_s, --max_s], or, every third segment, until a
checkpoint save is under way (a `.tmp-ckpt-*` folder appears), and SIGKILLs it. The next segment
restarts it with the same command. Reported per segment: how it ended, the step it resumed from, the
last step logged before the kill, env steps lost (last logged step - resumed step, with LFS the
steps the durable replay did not hold), whether any logged step went back, checkpoint save seconds,
the run's resident memory (the process and its env workers) soon after start and at the end, and
the disk used by the logdir. `--single` runs one segment of --minutes without kills and fits the growth
of resident memory per hour to one sample a minute (after a 10-minute warm-up). `--faults` instead runs two short cases: the disk filling up during a
save (the logdir on a small tmpfs; needs root) and a corrupted newest checkpoint.
"""

import argparse
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TASK = 'gym_popgym:popgym-RepeatPreviousEasy-v0'


def tree_rss_mib(pid) -> float:
    """Resident memory of `pid` and its descendants (env workers), MiB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f'/proc/{p}/status') as f:
                total += next((int(line.split()[1]) for line in f if line.startswith('VmRSS:')), 0) / 1024
            for t in os.listdir(f'/proc/{p}/task'):
                with open(f'/proc/{p}/task/{t}/children') as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def dir_mib(path) -> float:
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob('*') if p.is_file()) / 2**20


def steps_of(path):
    """Logged steps of a jsonl file, in file order (a torn last line skipped)."""
    out = []
    if pathlib.Path(path).exists():
        for line in pathlib.Path(path).read_text().splitlines():
            try:
                out.append(json.loads(line)['step'])
            except (ValueError, KeyError):
                continue
    return out


def checkpoint_seconds(logdir):
    return [
        row['checkpoint/seconds']
        for row in map(
            json.loads, filter(None, (pathlib.Path(logdir) / 'metrics.jsonl').read_text().splitlines())
        )
        if 'checkpoint/seconds' in row
    ]


def command(args, logdir, steps=10**8):
    cmd = [
        sys.executable,
        '-m',
        'recall2imagine.train',
        '--configs',
        'popgym',
        'popgym_cpu',
        '--task',
        TASK,
        '--logdir',
        str(logdir),
        '--run.steps',
        str(steps),
        '--run.save_every',
        str(args.save_every),
        '--run.log_every',
        '10',
        '--run.loggers',
        'jsonl',
        '--run.eval_eps',
        '0',
        '--seed',
        '0',
    ]
    if args.lfs:
        cmd += ['--use_lfs', 'True', '--lfs_dir', str(logdir / 'lfs')]
    return cmd


def start_step(text) -> int:
    """The step a start resumed at: the durable replay's (LFS), else the checkpoint's, else 0."""
    continued = re.findall(r'the env-step counter continues from ([\d,]+)', text)
    resumed = re.findall(r'resumed from \S+ at step (\d+)', text)
    return int(continued[-1].replace(',', '')) if continued else int(resumed[-1]) if resumed else 0


def segment(args, logdir, out, how, rng, deadline):
    """One start of the run, ended by `how`: 'kill' (SIGKILL after a random time), 'kill in save'
    (SIGKILL while a checkpoint is being written) or 'term' (SIGTERM after --min_s: it saves)."""
    logged = steps_of(logdir / 'metrics.jsonl')
    with open(out, 'a') as log:
        log.write(f'\n$ segment ({how})\n')
        log.flush()
        proc = subprocess.Popen(
            command(args, logdir),
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED='1'),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    t0, rss_start, ended, rss_end, trace = time.time(), None, None, float('nan'), []
    ckpts = (logdir / 'lfs' if args.lfs else logdir) / 'checkpoints'
    wait = args.min_s if how == 'term' else rng.uniform(args.min_s, args.max_s)
    while proc.poll() is None:
        now = time.time() - t0
        if rss_start is None and now > 45:
            rss_start = tree_rss_mib(proc.pid)
        if now > 60 * (len(trace) + 1):  # one sample a minute, for --single
            trace.append((now, tree_rss_mib(proc.pid)))
        saving = (
            how == 'kill in save'
            and now > args.min_s
            and ckpts.is_dir()
            and any(p.name.startswith('.tmp-ckpt-') for p in ckpts.iterdir())
        )
        if saving or (how != 'kill in save' and now > wait) or time.time() > deadline or now > 3 * args.max_s:
            rss_end = tree_rss_mib(proc.pid)
            if how == 'term':
                ended = 'SIGTERM'
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=600)
            else:
                ended = 'SIGKILL during a save' if saving else 'SIGKILL'
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02 if how == 'kill in save' and now > args.min_s else 0.5)
    proc.wait()
    if ended is None:
        ended = f'exited ({proc.returncode})'
    text = pathlib.Path(out).read_text().split('\n$ segment')[-1]
    return dict(
        seconds=round(time.time() - t0),
        ended=ended,
        logged_before=logged[-1] if logged else 0,
        start_step=start_step(text),
        rss_start=rss_start,
        rss_end=rss_end,
        logdir_mib=dir_mib(logdir),
        tracebacks=text.count('Traceback'),
        trace=trace,
    )


def soak(args):
    rng = random.Random(args.seed)
    logdir = pathlib.Path(args.root) / ('lfs' if args.lfs else 'memory')
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    out = logdir.parent / f'{logdir.name}.out'
    out.write_text('')
    deadline, rows = time.time() + 60 * args.minutes, []
    if args.single:  # one segment of --minutes, then SIGTERM
        args.min_s = args.max_s = 60 * args.minutes
    while not args.single and time.time() < deadline - args.min_s:
        rows.append(
            segment(args, logdir, out, 'kill in save' if len(rows) % 3 == 2 else 'kill', rng, deadline)
        )
    rows.append(segment(args, logdir, out, 'term', rng, deadline + 3600))  # where the last kill left it
    metrics, scores = steps_of(logdir / 'metrics.jsonl'), steps_of(logdir / 'scores.jsonl')
    monotone = all(b > a for a, b in zip(metrics, metrics[1:])) and all(
        b >= a for a, b in zip(scores, scores[1:])
    )
    return logdir, rows, monotone


def report(args, logdir, rows, monotone):
    hours = sum(r['seconds'] for r in rows) / 3600
    print(
        f'\n{"LFS" if args.lfs else "memory"} replay: {len(rows) - 1} SIGKILLs in {hours * 60:.0f} min, a checkpoint '
        f'every {args.save_every} s'
    )
    print(
        '| segment | ran s | ended by | started at step | last step logged before the kill | next start at | '
        'env steps lost | RSS after 45 s MiB | RSS at the end MiB | logdir MiB | tracebacks |'
    )
    print('|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    lost_total = 0
    for k, row in enumerate(rows):
        last = rows[k + 1]['logged_before'] if k + 1 < len(rows) else None
        nxt = rows[k + 1]['start_step'] if k + 1 < len(rows) else None
        lost = max(0, last - nxt) if last is not None else None
        lost_total += lost or 0
        fmt = lambda v: '-' if v is None or v != v else f'{v:,.0f}'
        print(
            f'| {k} | {row["seconds"]} | {row["ended"]} | {row["start_step"]:,} | {fmt(last)} | {fmt(nxt)} | '
            f'{fmt(lost)} | {fmt(row["rss_start"])} | {fmt(row["rss_end"])} | {row["logdir_mib"]:,.0f} | '
            f'{row["tracebacks"]} |'
        )
    secs = sorted(checkpoint_seconds(logdir))
    rss = [
        (r['rss_start'], r['rss_end'], r['seconds'] - 45)
        for r in rows
        if r['rss_start'] and r['seconds'] > 100
    ]
    growth = (
        sum(e - s for s, e, _ in rss) / max(1e-9, sum(t for *_, t in rss) / 3600) if rss else float('nan')
    )
    print(
        f'\nlogged steps strictly increasing: {monotone}; env steps lost in total: {lost_total:,}; checkpoint '
        f'saves: {len(secs)}, seconds median {secs[len(secs) // 2] if secs else float("nan"):.2f}, max '
        f'{secs[-1] if secs else float("nan"):.2f}; RSS growth within segments: {growth:+,.0f} MiB per hour'
    )
    trace = [(t, m) for r in rows for t, m in r['trace'] if t >= 600]
    if len(trace) >= 10:  # --single: least-squares slope after a 10-minute warm-up, and the samples
        tm, mm = sum(t for t, _ in trace) / len(trace), sum(m for _, m in trace) / len(trace)
        slope = sum((t - tm) * (m - mm) for t, m in trace) / sum((t - tm) ** 2 for t, _ in trace)
        print(
            f'RSS from minute 10 to {trace[-1][0] / 60:.0f}: {min(m for _, m in trace):,.0f}-'
            f'{max(m for _, m in trace):,.0f} MiB, least-squares slope {3600 * slope:+,.0f} MiB per hour; '
            'per minute: ' + ' '.join(f'{m:.0f}' for _, m in rows[-1]['trace'])
        )


def faults(args):
    """Disk full during a save; a corrupt newest checkpoint."""
    root = pathlib.Path(args.root) / 'faults'
    if os.path.ismount(root / 'tmpfs'):  # left mounted by a soak killed before its clean-up
        subprocess.run(['umount', str(root / 'tmpfs')])
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    results = []
    # 1. corrupt newest checkpoint: run, SIGTERM (saves), corrupt its state, restart
    logdir = root / 'corrupt'
    out = root / 'corrupt.out'
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    args.lfs = False
    for k in range(2):
        proc = subprocess.Popen(
            command(args, logdir), cwd=ROOT, env=env, stdout=open(out, 'a'), stderr=subprocess.STDOUT
        )
        time.sleep(args.max_s)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    ckpts = sorted((logdir / 'checkpoints').glob('ckpt-*'))
    state = ckpts[-1] / 'state.eqx'
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    names_before = [p.name for p in ckpts]
    proc = subprocess.run(
        command(args, logdir, steps=1), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    text = proc.stdout + proc.stderr
    warned = 'skipping checkpoint' in text
    resumed = re.findall(r'resumed from (\S+) at step (\d+)', text)
    results.append(
        (
            'corrupt newest checkpoint',
            f'exit {proc.returncode}; warned: {warned}; resumed from '
            f'{pathlib.Path(resumed[-1][0]).name if resumed else "none"} (checkpoints before: '
            f'{", ".join(names_before)}); others kept: '
            f'{all((logdir / "checkpoints" / n).exists() for n in names_before[:-1])}',
        )
    )
    # 2. disk full: the logdir on a tmpfs that fills up while the run saves
    mnt = root / 'tmpfs'
    mnt.mkdir()
    ok = (
        subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', f'size={args.tmpfs_mib}m', 'tmpfs', str(mnt)]
        ).returncode
        == 0
    )
    if not ok:
        results.append(('disk full during a save', 'not run: mounting a tmpfs needs root'))
    else:
        try:
            logdir = mnt / 'run'
            proc = subprocess.Popen(
                command(args, logdir) + ['--replay_size', '400000'],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                text, _ = proc.communicate(timeout=args.max_s * 3)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                text, _ = proc.communicate(timeout=300)
            full = [line for line in text.splitlines() if 'no space left' in line.lower()]
            tracebacks = text.count('Traceback')
            committed = sorted(
                p.name for p in (logdir / 'checkpoints').glob('ckpt-*') if (p / 'COMMIT').exists()
            )
            results.append(
                (
                    'disk full during a save',
                    f'exit {proc.returncode}; {len(full)} "no space" lines, '
                    f'first: {full[0].strip()[:160] if full else "-"}; tracebacks: {tracebacks}; committed '
                    f'checkpoints left: {", ".join(committed) or "none"}',
                )
            )
        finally:
            subprocess.run(['umount', str(mnt)])
    print('\n| fault | outcome |\n|---|---|')
    for name, outcome in results:
        print(f'| {name} | {outcome} |')


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--root', required=True, help='logdirs go under this folder (emptied first)')
    p.add_argument('--minutes', type=float, default=30)
    p.add_argument('--lfs', action='store_true', help='train with --use_lfs (durable replay)')
    p.add_argument('--save_every', type=int, default=60, help='seconds between checkpoints')
    p.add_argument('--min_s', type=float, default=60, help='shortest segment before a kill')
    p.add_argument('--max_s', type=float, default=240, help='longest segment before a kill')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--faults', action='store_true', help='run the full-disk and corrupt-checkpoint cases')
    p.add_argument(
        '--single',
        action='store_true',
        help='one segment of --minutes without kills: RSS sampled every minute',
    )
    p.add_argument(
        '--tmpfs_mib',
        type=int,
        default=24,
        help='size of the tmpfs that fills up (a popgym_cpu checkpoint is ~9 MiB)',
    )
    args = p.parse_args()
    if args.faults:
        faults(args)
    else:
        report(args, *soak(args))


if __name__ == '__main__':
    main()
