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


def _run_one(job, stop):
    """Train one (task, seed) to completion in a subprocess; returns its status."""
    directory = job["dir"]
    if (directory / "done.json").exists():
        return "done (skipped)"
    if stop["now"]:  # picked up from the queue after Ctrl-C
        return "not started"
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [
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
        str(directory),
        *job["extra"],
    ]
    with open(directory / "sweep.log", "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            if stop["now"]:
                proc.send_signal(signal.SIGINT)  # the run saves a checkpoint and its logs
                proc.wait()
                return "interrupted"
            time.sleep(0.5)
    if proc.returncode != 0:
        return f"failed (exit {proc.returncode}, see {directory / 'sweep.log'})"
    score, episodes = final_return(directory)
    (directory / "done.json").write_text(json.dumps({"score": score, "episodes": episodes}))
    return "done"


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
    p.add_argument("--workers", type=int, default=2, help="runs in parallel")
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
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    jobs = [
        dict(task=t, seed=s, configs=args.configs, extra=extra, dir=run_dir(args.logdir, t, s))
        for t in tasks
        for s in range(args.seeds)
    ]
    pathlib.Path(args.logdir).mkdir(parents=True, exist_ok=True)
    print(
        f"sweep: {len(jobs)} runs ({len(tasks)} tasks x {args.seeds} seeds), {args.workers} at a time, "
        f"in {args.logdir}",
        flush=True,
    )
    stop = {"now": False}
    statuses = ["not started"] * len(jobs)
    # Ctrl-C and SIGTERM both stop the runs cleanly. Installed explicitly: a sweep started in the
    # background (`cmd &`, nohup) inherits an ignored SIGINT, and SIGTERM's default would kill the
    # sweep alone and orphan its runs, which live in their own sessions.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    pool = concurrent.futures.ThreadPoolExecutor(max(1, args.workers))
    futures = {pool.submit(_run_one, job, stop): i for i, job in enumerate(jobs)}
    try:
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            statuses[i] = future.result()
            print(f"  {jobs[i]['task']} seed {jobs[i]['seed']}: {statuses[i]}", flush=True)
    except KeyboardInterrupt:
        stop["now"] = True
        print(
            "\ninterrupted: stopping runs (each saves a checkpoint); run the same command to continue",
            flush=True,
        )
        running = [(future, i) for future, i in futures.items() if not future.cancel()]
        for future, i in running:
            statuses[i] = future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summarise(args.logdir, jobs, statuses, args.last)
    print(f"summary: {pathlib.Path(args.logdir) / 'summary.md'}", flush=True)
    print((pathlib.Path(args.logdir) / "summary.md").read_text(), flush=True)
    return 0 if all(s.startswith("done") for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
