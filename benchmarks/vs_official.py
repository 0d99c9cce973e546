"""Our update vs the official R2I code's, on this machine, in one sitting, interleaved.

  python benchmarks/vs_official.py --official_dir /path/to/scratch --lengths 64 1024 --rounds 2

The official code is installed into a scratch folder with `official-r2i/setup.sh` (see that folder's
README; it is never a dependency of this project). Each round runs, per length, the official update
(`official-r2i/bench.sh T N`: the `popgym` config, float32, CPU, batch 4) and ours (`train_step.py`'s
full update alone, `--configs popgym popgym_main` float32 batch 4, the same shapes), alternating which
goes first, one process each, so that the machine's drift (7-15% within an hour here) falls on both.
Prints and writes (--out) per length: the median update of each side over its rounds, their ratio
(official / ours: how many times faster ours is), the first update (compilation included) and the
peak RSS of each process, with the machine's CPU model, the date and our commit.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
OURS = ["--configs", "popgym", "popgym_main", "--jax.platform", "cpu", "--jax.precision", "float32"]
OFFICIAL_LINE = re.compile(
    r"official r2i \d+x\d+: init ([\d.]+) s, first update ([\d.]+) s, median update ([\d.]+) s"
)
OFFICIAL_RSS = re.compile(r"max RSS of this process (\d+) MB")


def official(bench_dir, official_dir, length, repeats, timeout):
    """{update_s, first_s, rss_mb} of one official run, or {error}."""
    env = dict(os.environ, R2I_DIR=str(official_dir))
    cmd = ["bash", str(bench_dir / "bench.sh"), str(length), str(repeats)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout {timeout:.0f} s")
    out = proc.stdout + proc.stderr
    m, rss = OFFICIAL_LINE.search(out), OFFICIAL_RSS.search(out)
    if proc.returncode or not m:
        return dict(error=(out.strip().splitlines() or ["no output"])[-1][:300])
    return dict(
        update_s=float(m.group(3)), first_s=float(m.group(2)), rss_mb=float(rss.group(1)) if rss else None
    )


def ours(batch, length, repeats, overrides, timeout):
    """{update_s, first_s, rss_mb} of one run of our full update (train_step.py, one process)."""
    spec = dict(
        argv=OURS + overrides + ["--batch_size", str(batch), "--batch_length", str(length)],
        warmup=1,
        repeats=repeats,
        agent=True,
        wm=False,
        obs="vector",
    )
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--point", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout {timeout:.0f} s")
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        return dict(error=(proc.stderr.strip().splitlines() or ["no output"])[-1][:300])
    r = json.loads(lines[-1][len("RESULT ") :])
    return dict(update_s=r["train_ms"] / 1e3, first_s=r["train_first_s"], rss_mb=r["train_peak_mb"])


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def commit():
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True
        )
        return out.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _range(xs, digits):
    xs = [x for x in xs if x is not None]
    if not xs:
        return ""
    lo, hi = min(xs), max(xs)
    return (
        f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}-{hi:.{digits}f}"
    )


def table(rows, batch):
    lines = [
        "| batch x length | official update s | ours update s | ratio (official / ours) | official first s | "
        "ours first s | official peak RSS GB | ours peak RSS GB | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for L, runs in rows.items():
        o = [r for r in runs["official"] if "error" not in r]
        u = [r for r in runs["ours"] if "error" not in r]
        if not o or not u:
            errors = [r["error"] for r in runs["official"] + runs["ours"] if "error" in r]
            lines.append(f"| {batch} x {L} | failed: {errors[0] if errors else 'no runs'} | | | | | | | |")
            continue
        mo = statistics.median(r["update_s"] for r in o)
        mu = statistics.median(r["update_s"] for r in u)
        gb = lambda rs: [r["rss_mb"] / 1024 if r["rss_mb"] else None for r in rs]
        lines.append(
            f"| {batch} x {L} | {_range([r['update_s'] for r in o], 2)} (median {mo:.2f}) | "
            f"{_range([r['update_s'] for r in u], 2)} (median {mu:.2f}) | **{mo / mu:.2f}x** | "
            f"{_range([r['first_s'] for r in o], 0)} | {_range([r['first_s'] for r in u], 1)} | "
            f"{_range(gb(o), 1)} | {_range(gb(u), 1)} | {len(o)} / {len(u)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Same-sitting, interleaved update times of the official R2I code and ours. "
        "Unrecognised --key value pairs are config overrides for our side only (e.g. to A/B a change).",
    )
    p.add_argument("--official_dir", required=True, help="scratch folder of official-r2i/setup.sh")
    p.add_argument(
        "--bench_dir",
        default=str(ROOT.parent / "shared" / "official-r2i"),
        help="folder with bench.sh and bench.py (default ../shared/official-r2i)",
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--batch_size", type=int, default=4, help="the official bench.sh uses 4")
    p.add_argument("--rounds", type=int, default=2, help="A/B rounds per length (order alternates)")
    p.add_argument("--repeats", type=int, default=3, help="timed updates per run after the first")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per run")
    p.add_argument("--out", default=str(ROOT / "logdir" / "vs_official"), help="output folder")
    args, overrides = p.parse_known_args(argv)
    bench_dir, official_dir = pathlib.Path(args.bench_dir), pathlib.Path(args.official_dir)
    if not (bench_dir / "bench.sh").is_file():
        p.error(f"no bench.sh in --bench_dir {bench_dir}")
    if not (official_dir / "venv" / "bin" / "python").is_file():
        p.error(f"--official_dir {official_dir} has no venv: install it with {bench_dir / 'setup.sh'} first")
    if args.batch_size != 4:
        p.error("the official bench.sh times batch 4; keep --batch_size 4")
    if args.rounds < 1 or args.repeats < 1:
        p.error("--rounds and --repeats must be positive")
    rows = {L: dict(official=[], ours=[]) for L in args.lengths}
    started = time.time()
    for rnd in range(args.rounds):
        for L in args.lengths:
            order = ("official", "ours") if rnd % 2 == 0 else ("ours", "official")
            for side in order:
                t0 = time.time()
                if side == "official":
                    r = official(bench_dir, official_dir, L, args.repeats, args.timeout)
                else:
                    r = ours(args.batch_size, L, args.repeats, overrides, args.timeout)
                rows[L][side].append(r)
                what = (
                    r.get("error")
                    or f"update {r['update_s']:.3f} s, first {r['first_s']:.1f} s, RSS {r['rss_mb']} MB"
                )
                print(f"round {rnd + 1} 4 x {L} {side:>8}: {what} ({time.time() - t0:.0f} s)", flush=True)
    head = (
        f"{datetime.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} cores, ours at commit {commit()}; "
        f"{args.rounds} interleaved rounds, {args.repeats} timed updates per run after the first; "
        f"`python benchmarks/vs_official.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
        f"({(time.time() - started) / 60:.0f} min)\n\n"
    )
    text = head + table(rows, args.batch_size)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_official.md").write_text(text)
    (out / "vs_official.json").write_text(json.dumps({str(k): v for k, v in rows.items()}, indent=1))
    print()
    print(text)
    print(f"wrote {out / 'vs_official.md'}")


if __name__ == "__main__":
    main()
