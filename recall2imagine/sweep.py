"""Run many training runs (tasks x seeds) in parallel processes and summarise them.

  python -m recall2imagine.sweep --configs bsuite bsuite_cpu --tasks bsuite:memory_len/0-10 --seeds 3 \\
      --workers 2 --logdir ~/logdir/sweep [--run.steps 20000 ...]

Each run trains in `<logdir>/<task>/seed<k>` (task with ':' and '/' made file-safe) through
`python -m recall2imagine.train`; flags the sweep does not know are passed to every run. A run
that finished has `done.json` and is skipped next time; a run that was interrupted or failed is
started again and resumes from its last checkpoint. Ctrl-C or SIGTERM stops the runs (each saves a
checkpoint). At the end, `summary.csv` and `summary.md` list every task and seed with the mean
return of the last `--last` episodes. For bsuite tasks they also get bsuite's own score per
experiment (bsuite_score.py; `summary_bsuite.csv` has it per experiment and setting).

  python -m recall2imagine.sweep --summarize ~/logdir/sweep    # rewrite the summary only

`--backend ray` (the `[ray]` extra) runs each task and seed as a Ray task asking for
`--cpus_per_run` / `--gpus_per_run`, on a Ray instance started here or on the cluster at
`--address` (then `--logdir` must be a path every node sees, e.g. a shared file system, and every
node needs this package installed). A run whose training process is killed (e.g. by Ray's memory
monitor) or whose worker or node dies is started again, up to `--retries` times, and resumes from
its checkpoint; the summary says how many attempts it took.
"""

import argparse
import concurrent.futures
import csv
import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np


def expand_tasks(specs):
    """`suite:exp/0-3` -> suite:exp/0 .. suite:exp/3; other entries unchanged."""
    out = []
    for spec in specs:
        m = re.fullmatch(r"(.*/)(\d+)-(\d+)", spec)
        if m:
            lo, hi = int(m.group(2)), int(m.group(3))
            if hi < lo:
                raise ValueError(f"task range {spec!r} is empty; write low-high")
            out += [f"{m.group(1)}{i}" for i in range(lo, hi + 1)]
        else:
            out.append(spec)
    return out


def run_dir(root, task, seed):
    return pathlib.Path(root) / re.sub(r"[:/]", "_", task) / f"seed{seed}"


def final_return(directory, last=50):
    """(mean of the last `last` episode scores, number of episodes) from scores.jsonl."""
    path = pathlib.Path(directory) / "scores.jsonl"
    scores = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line being written when a run was killed
                continue
            value = next((v for k, v in row.items() if k.endswith("episode/score")), None)
            if value is not None:
                scores.append(value)
    return (float(np.mean(scores[-last:])) if scores else float("nan")), len(scores)


class RunKilled(RuntimeError):
    """A run's training process was killed by a signal (e.g. out of memory); Ray retries it."""


def _train_command(job):
    return [
        sys.executable,
        "-m",
        "recall2imagine.train",
        "--configs",
        *job["configs"],
        "--task",
        job["task"],
        "--seed",
        str(job["seed"]),
        "--logdir",
        str(job["dir"]),
        *job["extra"],
    ]


def _starts(directory) -> int:
    """How often the sweep has started this run's training (commands logged in sweep.log)."""
    log = pathlib.Path(directory) / "sweep.log"
    return log.read_text().count("\n$ ") if log.exists() else 0


def _die_with_parent():  # Linux: the run gets SIGTERM (it saves) when the process that started it dies
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_one(job, stop, killed_raises=False):
    """Train one (task, seed) to completion in a subprocess; returns its status. A KeyboardInterrupt
    (or `stop["now"]`) stops the run with SIGINT: it saves a checkpoint and its logs. With
    `killed_raises` (Ray), a run killed by a signal raises RunKilled, for Ray to retry it."""
    directory = job["dir"]
    if (directory / "done.json").exists():
        return "done (skipped)"
    if stop["now"]:  # picked up from the queue after Ctrl-C
        return "not started"
    directory.mkdir(parents=True, exist_ok=True)
    cmd = _train_command(job)
    with open(directory / "sweep.log", "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if killed_raises and sys.platform == "linux" else None,
        )
        try:
            while proc.poll() is None:
                if stop["now"]:
                    raise KeyboardInterrupt
                time.sleep(0.5)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # the run saves a checkpoint and its logs
            proc.wait()
            return "interrupted"
    if proc.returncode < 0 and killed_raises:
        raise RunKilled(f"{job['task']} seed {job['seed']} was killed by signal {-proc.returncode}")
    if proc.returncode != 0:
        return f"failed (exit {proc.returncode}, see {directory / 'sweep.log'})"
    score, episodes = final_return(directory)
    (directory / "done.json").write_text(json.dumps({"score": score, "episodes": episodes}))
    return "done"


def _run_local(jobs, workers, statuses):
    """Runs the jobs in `workers` threads, each driving one training subprocess at a time."""
    stop = {"now": False}
    pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))
    futures = {pool.submit(_run_one, job, stop): i for i, job in enumerate(jobs)}
    try:
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            statuses[i] = future.result()
            print(f"  {jobs[i]['task']} seed {jobs[i]['seed']}: {statuses[i]}", flush=True)
    except KeyboardInterrupt:
        stop["now"] = True
        _say_interrupted()
        for future, i in [(f, i) for f, i in futures.items() if not f.cancel()]:
            statuses[i] = future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _say_interrupted():
    print(
        "\ninterrupted: stopping runs (each saves a checkpoint); run the same command to continue", flush=True
    )


def _run_ray(jobs, args, statuses):
    """Runs each job as a Ray task asking for `cpus_per_run` / `gpus_per_run`, on a local Ray instance
    or the cluster at `address`. A run whose process was killed, or whose worker or node died, is
    retried up to `retries` times; it resumes from its checkpoint."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=args.address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=False,
        )
    task = ray.remote(_ray_task).options(
        num_cpus=args.cpus_per_run,
        num_gpus=args.gpus_per_run,
        max_retries=args.retries,
        retry_exceptions=[RunKilled],
    )
    before = [_starts(job["dir"]) for job in jobs]
    refs = {task.remote(job): i for i, job in enumerate(jobs)}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                i = refs[ref]
                try:
                    statuses[i] = ray.get(ref)
                except ray.exceptions.RayError as e:  # killed too often, worker or node lost, ...
                    statuses[i] = f"failed ({_one_line(e)})"
                attempts = _starts(jobs[i]["dir"]) - before[i]
                if attempts > 1:
                    statuses[i] += f" after {attempts} attempts"
                print(f"  {jobs[i]['task']} seed {jobs[i]['seed']}: {statuses[i]}", flush=True)
    except KeyboardInterrupt:
        _say_interrupted()
        for ref in pending:
            ray.cancel(ref)  # a KeyboardInterrupt in the task: its run saves and stops
        ray.wait(pending, num_returns=len(pending), timeout=600)
        for ref in pending:
            i = refs[ref]
            statuses[i] = "interrupted" if _starts(jobs[i]["dir"]) > before[i] else "not started"
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(job):  # runs in a Ray worker
    return _run_one(job, {"now": False}, killed_raises=True)


def _one_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _is_bsuite(task):
    return task.startswith(("bsuite:", "dm_bsuite_"))


def _bsuite_id(task):
    return task[len("bsuite:") :] if task.startswith("bsuite:") else task[len("dm_bsuite_") :]


def summarise(root, jobs, statuses, last):
    rows = []
    for job, status in zip(jobs, statuses):
        score, episodes = final_return(job["dir"], last)
        rows.append(
            dict(
                task=job["task"],
                seed=job["seed"],
                score=score,
                episodes=episodes,
                status=status,
                logdir=str(job["dir"]),
            )
        )
    root = pathlib.Path(root)
    bsuite_jobs = [job for job in jobs if _is_bsuite(job["task"])]
    bsuite = None
    if bsuite_jobs:  # bsuite's own score from bsuite's CSV logs, see bsuite_score.py
        from recall2imagine import bsuite_score

        try:
            bsuite = bsuite_score.score([(job["seed"], job["dir"]) for job in bsuite_jobs])
        except Exception as e:  # a broken log must not cost the rest of the summary
            bsuite = dict(
                experiments=[],
                settings=[],
                runs=[],
                notes=[],
                error=f"bsuite score failed: {type(e).__name__}: {e}",
            )
        per_run = {(r["bsuite_id"], r["seed"]): r for r in bsuite["runs"]}
        for job, row in zip(jobs, rows):
            r = per_run.get((_bsuite_id(job["task"]), job["seed"]), {}) if _is_bsuite(job["task"]) else {}
            row.update(
                bsuite_episodes=r.get("episodes", ""),
                bsuite_setting_score=r.get("setting_score", ""),
                bsuite_success_final=r.get("success_final", ""),
            )
        bsuite_score.write_csv(bsuite, root / "summary_bsuite.csv")
        bsuite_score.plot_memory(bsuite, root / "summary_memory.png")  # success vs memory length
    with open(root / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"| task | seed | mean return (last {last} episodes) | episodes | status |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['task']} | {r['seed']} | {r['score']:.3f} | {r['episodes']} | {r['status']} |" for r in rows
    ]
    by_task = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r["score"])
    lines += ["", "| task | seeds | mean | min | max |", "|---|---:|---:|---:|---:|"]
    for task, scores in by_task.items():
        s = np.asarray(scores, float)
        lines.append(
            f"| {task} | {len(s)} | {np.nanmean(s) if np.isfinite(s).any() else float('nan'):.3f} | "
            f"{np.nanmin(s) if np.isfinite(s).any() else float('nan'):.3f} | "
            f"{np.nanmax(s) if np.isfinite(s).any() else float('nan'):.3f} |"
        )
    if bsuite is not None:
        lines += [""] + bsuite_score.markdown(bsuite)
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


def _check_backend(args):
    """Raises ValueError (one line, what to do) for options the chosen backend cannot use."""
    if args.backend == "local":
        if args.address:
            raise ValueError("--address is for --backend ray")
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError(
            "--backend ray needs Ray: pip install 'recall2imagine[ray]' (or pip install ray)"
        ) from None
    if not args.cpus_per_run > 0 or args.gpus_per_run < 0 or args.retries < 0:
        raise ValueError(
            f"--cpus_per_run must be > 0, --gpus_per_run and --retries >= 0; got {args.cpus_per_run}, "
            f"{args.gpus_per_run}, {args.retries}"
        )


def existing_jobs(root):
    """The runs of a sweep folder (`<root>/<task>/seed<k>` with the task in config.yaml), in task order."""
    import yaml

    jobs = []
    for config in pathlib.Path(root).glob("*/seed*/config.yaml"):
        m = re.fullmatch(r"seed(\d+)", config.parent.name)
        task = (yaml.safe_load(config.read_text()) or {}).get("task") if m else None
        if task:
            jobs.append(dict(task=task, seed=int(m.group(1)), dir=config.parent))
    natural = lambda text: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
    return sorted(jobs, key=lambda j: (natural(j["task"]), j["seed"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--configs", nargs="+")
    p.add_argument("--tasks", nargs="+", help="task strings; `suite:exp/0-10` is a range")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 per task")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (local backend)")
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: subprocesses on this machine; ray: one Ray task per run (pip install '.[ray]')",
    )
    p.add_argument("--address", help="ray: an existing cluster (auto, or HOST:PORT); default: start Ray here")
    p.add_argument("--cpus_per_run", type=float, default=1.0, help="ray: CPUs each run asks for")
    p.add_argument("--gpus_per_run", type=float, default=0.0, help="ray: GPUs each run asks for")
    p.add_argument(
        "--retries", type=int, default=2, help="ray: restarts of a run that was killed or lost its node"
    )
    p.add_argument("--logdir")
    p.add_argument("--last", type=int, default=50, help="episodes averaged for the final return")
    p.add_argument(
        "--summarize", metavar="DIR", help="only rewrite the summary of the sweep in DIR (no training)"
    )
    args, extra = p.parse_known_args(argv)
    if args.summarize:
        jobs = existing_jobs(args.summarize)
        if not jobs:
            print(f"error: no runs (<task>/seed<k>/config.yaml) in {args.summarize}", file=sys.stderr)
            return 2
        statuses = ["done" if (j["dir"] / "done.json").exists() else "not finished" for j in jobs]
        summarise(args.summarize, jobs, statuses, args.last)
        print((pathlib.Path(args.summarize) / "summary.md").read_text(), flush=True)
        return 0
    if not (args.configs and args.tasks and args.logdir):
        p.error("--configs, --tasks and --logdir are required (or --summarize DIR)")
    try:
        tasks = expand_tasks(args.tasks)
        _check_backend(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    jobs = [
        dict(task=t, seed=s, configs=args.configs, extra=extra, dir=run_dir(args.logdir, t, s))
        for t in tasks
        for s in range(args.seeds)
    ]
    pathlib.Path(args.logdir).mkdir(parents=True, exist_ok=True)
    how = (
        f"{args.workers} at a time"
        if args.backend == "local"
        else f"as Ray tasks of {args.cpus_per_run:g} CPU and {args.gpus_per_run:g} GPU"
    )
    print(
        f"sweep: {len(jobs)} runs ({len(tasks)} tasks x {args.seeds} seeds), {how}, in {args.logdir}",
        flush=True,
    )
    statuses = ["not started"] * len(jobs)
    # Ctrl-C and SIGTERM both stop the runs cleanly. Installed explicitly: a sweep started in the
    # background (`cmd &`, nohup) inherits an ignored SIGINT, and SIGTERM's default would kill the
    # sweep alone and orphan its runs, which live in their own sessions.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.backend == "ray":
            try:
                _run_ray(jobs, args, statuses)
            except ConnectionError as e:  # ray.init: no cluster at --address
                print(
                    f"error: cannot reach the Ray cluster at {args.address}: {_one_line(e)}", file=sys.stderr
                )
                return 2
        else:
            _run_local(jobs, args.workers, statuses)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summarise(args.logdir, jobs, statuses, args.last)
    print(f"summary: {pathlib.Path(args.logdir) / 'summary.md'}", flush=True)
    print((pathlib.Path(args.logdir) / "summary.md").read_text(), flush=True)
    return 0 if all(s.startswith("done") for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
