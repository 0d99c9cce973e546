"""Learning curves from run directories.

  python -m recall2imagine.plot RUN_DIR [RUN_DIR ...] --out curves.png [--labels a b] [--metric episode/score]

Each run directory holds `metrics.jsonl` (one JSON object per line with `step`; episode metrics
come from `scores.jsonl`, one line per episode, where the run wrote one). Runs that share
a label (by default the directory's parent name when several seeds sit side by side, else the
directory name) are drawn as the mean over runs with a min-max band.
"""

import argparse
import json
import pathlib
import sys

import numpy as np


def load_curve(run_dir, metric="episode/score"):
    """(steps, values) of `metric`, in file order: episode metrics from run_dir/scores.jsonl (every
    episode) when the run has one, else from run_dir/metrics.jsonl (one row per log interval)."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if metric.startswith("episode/") and (path.parent / "scores.jsonl").exists():
        path = path.parent / "scores.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pass a run directory written by recall2imagine.train")
    steps, values = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by a crash
                continue
            if row.get(metric) is not None:
                steps.append(row["step"])
                values.append(row[metric])
    return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def smooth(values, window):
    """Trailing mean over the last `window` points."""
    if window <= 1 or len(values) == 0:
        return values
    cums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (cums[idx] - cums[lo]) / (idx - lo)


def plot(runs, labels, out, metric="episode/score", window=20, title=None, hline=None, ylim=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for run, label in zip(runs, labels):
        groups.setdefault(label, []).append(run)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, members in groups.items():
        curves = [load_curve(r, metric) for r in members]
        curves = [(s, smooth(v, window)) for s, v in curves if len(s)]
        if not curves:
            print(f"warning: no '{metric}' in {members}", file=sys.stderr)
            continue
        end = min(s[-1] for s, _ in curves)
        grid = np.linspace(0, end, 200)
        ys = np.stack([np.interp(grid, s, v) for s, v in curves])
        ax.plot(grid, ys.mean(0), label=f"{label} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(grid, ys.min(0), ys.max(0), alpha=0.2)
    if hline is not None:
        ax.axhline(hline, color="gray", ls="--", lw=1)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"{metric} (mean of last {window})" if window > 1 else metric)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (with metrics.jsonl)")
    p.add_argument("--out", default="curves.png")
    p.add_argument("--labels", nargs="*", help="one label per run; runs with the same label are averaged")
    p.add_argument("--metric", default="episode/score")
    p.add_argument("--window", type=int, default=20, help="trailing mean over this many points")
    p.add_argument("--title")
    p.add_argument("--hline", type=float, help="draw a reference line at this value")
    p.add_argument("--ylim", type=float, nargs=2, metavar=("LO", "HI"), help="the y axis range")
    args = p.parse_args(argv)
    if args.ylim and not args.ylim[0] < args.ylim[1]:
        p.error(f"--ylim needs LO < HI, got {args.ylim[0]:g} {args.ylim[1]:g}")
    labels = args.labels or [pathlib.Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        p.error(f"--labels needs one label per run ({len(args.runs)}), got {len(labels)}")
    try:
        out = plot(args.runs, labels, args.out, args.metric, args.window, args.title, args.hline, args.ylim)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
