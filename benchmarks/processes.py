"""Updates per second of one training process vs several joined with jax.distributed, on this machine.

  .venv/bin/python benchmarks/processes.py --seconds 240 [--processes 2] [--configs popgym popgym_cpu]

Runs the same job (`--configs`, RepeatPreviousEasy, global `--batch_size`) once as one process and once
as `--processes` processes on localhost (each pinned to its own core when the machine has enough,
gloo collectives on the CPU), each for `--seconds` after start-up, and reports the updates per second
and env steps per second of the last logged rows. On one machine this checks that the multi-process
path runs at a sensible speed; the gain of more processes comes from more hosts.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(n, args, root):
    logdir = root / f"p{n}"
    shutil.rmtree(logdir, ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "recall2imagine.train",
        "--configs",
        *args.configs,
        "--task",
        args.task,
        "--logdir",
        str(logdir),
        "--run.steps",
        "100000000",
        "--run.loggers",
        "jsonl",
        "--run.log_every",
        "20",
        "--run.eval_eps",
        "0",
        "--run.report_every",
        "0",
        "--batch_size",
        str(args.batch_size),
    ]
    cores = os.cpu_count() or 1
    procs = []
    for i in range(n):
        flags = ["--jax.num_processes", str(n), "--jax.process_id", str(i)]
        if n > 1:
            flags += ["--jax.coordinator", f"127.0.0.1:{port}"]
        pin = ["taskset", "-c", str(i % cores)] if n > 1 and cores >= n and shutil.which("taskset") else []
        procs.append(
            subprocess.Popen(
                pin + cmd + flags,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    metrics = logdir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not metrics.exists():
        time.sleep(1)
    time.sleep(args.seconds)
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(timeout=600)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows = [r for r in rows if "train_steps_per_sec" in r][-max(1, args.rows) :]
    ups = sum(r["train_steps_per_sec"] for r in rows) / len(rows)
    fps = sum(r["fps"] for r in rows) / len(rows)
    return ups, fps


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["popgym", "popgym_cpu"])
    p.add_argument("--task", default="gym_popgym:popgym-RepeatPreviousEasy-v0")
    p.add_argument("--batch_size", type=int, default=2, help="the global batch")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--seconds", type=float, default=240)
    p.add_argument("--rows", type=int, default=5, help="last logged rows averaged")
    args = p.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="processes_bench_"))
    print(f"{' '.join(args.configs)}, global batch {args.batch_size}, {args.seconds:g} s each")
    print("| processes | updates/s | env steps/s (all processes) |\n|---:|---:|---:|")
    for n in (1, args.processes):
        ups, fps = run(n, args, root)
        print(f"| {n} | {ups:.2f} | {fps:.1f} |", flush=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
