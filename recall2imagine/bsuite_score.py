"""bsuite's official scores for runs that recorded bsuite's own CSV log.

  python -m recall2imagine.bsuite_score RUN_DIR [RUN_DIR ...]     # seeds from `seed<k>` dir names

Training a `bsuite:<experiment>/<setting>` task writes bsuite's CSV log to `<run>/bsuite/`
(see `envs/bsuite.py`). This module loads those files with bsuite's loader
(`bsuite.logging.csv_load.load_bsuite`) and scores them with bsuite's analysis code
(`bsuite.experiments.summary_analysis.bsuite_score`, which calls each experiment's
`bsuite.experiments.<experiment>.analysis.score`); nothing of the scoring is re-implemented here.

Seeds: bsuite has no seeds (one run per setting), so every seed is scored as its own bsuite agent and
the experiment score is the mean over seeds. bsuite scores an experiment over *all* its settings
(e.g. 23 memory lengths for memory_len) after its full number of episodes (10k for memory_len, 1k for
discounting_chain); a sweep over a subset of settings, or with fewer episodes, gets a *partial*
score, which the result says (`partial`, `finished`).

Per setting, bsuite's own score function applied to that setting's rows alone is reported as
`setting_score` (for memory_len that is 1 if bsuite counts the memory length as learned: regret
ratio < 0.75 at bsuite's scoring episode, i.e. more than 62.5% of all episodes perfect). For the
memory experiments the result also has the success (fraction of perfect episodes, from bsuite's
`total_perfect` column) over the last logged stretch of episodes, `success_final` (bsuite logs at
1, 2, .., 10, 12, 14, 17, 20, 25, 30, 40, .. episodes, so that is the last 10-20% of a long run), and
a memory length counts as *solved* when `success_final` averaged over seeds is >= 0.75.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import pathlib
import re
import sys

import numpy as np

SOLVED_THRESHOLD = 0.75
MEMORY_EXPERIMENTS = ("memory_len", "memory_size")  # they log `total_perfect`


def csv_dir(run_dir) -> pathlib.Path | None:
    """The folder holding a run's bsuite CSV files (`<run>/bsuite`, or the folder itself), or None."""
    run_dir = pathlib.Path(run_dir)
    for d in (run_dir / "bsuite", run_dir):
        if d.is_dir() and _csv_files(d):
            return d
    return None


def _csv_files(d):
    from bsuite.logging import csv_logging

    return sorted(pathlib.Path(d).glob(f"{csv_logging.BSUITE_PREFIX}*.csv"))


def _settings_of(experiment):
    from bsuite import sweep as bsweep

    return [i for i in bsweep.SETTINGS if i.split(bsweep.SEPARATOR)[0] == experiment]


def _setting_label(bsuite_id):
    from bsuite import sweep as bsweep

    kwargs = bsweep.SETTINGS.get(bsuite_id, {})
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else float("nan")


def _nanmean(values):
    values = np.asarray([v for v in values if v is not None], float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _success(run_df):
    """(success over the last logged stretch, cumulative success) from bsuite's `total_perfect`."""
    rows = run_df.sort_values("episode")[["episode", "total_perfect"]].to_numpy(float)
    if not len(rows) or rows[-1, 0] <= 0:
        return float("nan"), float("nan")
    cumulative = rows[-1, 1] / rows[-1, 0]
    if len(rows) == 1:
        return cumulative, cumulative
    (e0, p0), (e1, p1) = rows[-2], rows[-1]
    return (p1 - p0) / (e1 - e0), cumulative


def load(runs):
    """bsuite's dataframe for `runs`, an iterable of (seed, run_dir); a `seed` column is added.

    Returns (df or None, notes). Uses `bsuite.logging.csv_load.load_bsuite`."""
    from bsuite.logging import csv_load

    notes, dirs = [], {}
    for seed, run_dir in runs:
        d = csv_dir(run_dir)
        if d is None:
            notes.append(f"no bsuite CSV in {run_dir}")
            continue
        if list(d.glob("*.csv.*.bak")):
            notes.append(
                f"{run_dir} was resumed: its bsuite CSV was continued from the last row logged "
                f"before the stop (episodes after that row are not counted)"
            )
        dirs[str(d)] = seed
    if not dirs:
        return None, notes
    with contextlib.redirect_stdout(io.StringIO()):  # bsuite prints warnings about stray files
        df, _ = csv_load.load_bsuite({d: d for d in dirs})
    df["seed"] = df["results_dir"].map(dirs)
    return df, notes


def score(runs) -> dict:
    """bsuite's scores for `runs`, an iterable of (seed, run_dir) of bsuite tasks.

    Returns a dict with lists of row dicts `experiments`, `settings` and `runs`, plus `notes` and
    `error` (a message when bsuite's analysis code cannot be imported, else None)."""
    out = dict(experiments=[], settings=[], runs=[], notes=[], error=None)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from bsuite.experiments import summary_analysis
    except ImportError as e:  # plotnine / matplotlib / statsmodels missing
        out["error"] = f"bsuite's analysis code could not be imported ({e}); no bsuite score"
        return out
    df, out["notes"] = load(runs)
    if df is None:
        return out
    info = summary_analysis.BSUITE_INFO

    for (seed, bsuite_id), run_df in df.groupby(["seed", "bsuite_id"], sort=True):
        experiment = run_df["bsuite_env"].iloc[0]
        row = dict(
            seed=seed,
            bsuite_id=bsuite_id,
            experiment=experiment,
            episodes=int(run_df["episode"].max()),
            setting_score=float("nan"),
            success_final=float("nan"),
            success_cumulative=float("nan"),
        )
        if experiment in info:
            with contextlib.redirect_stdout(io.StringIO()):
                row["setting_score"] = _num(info[experiment].score(run_df))
        if experiment in MEMORY_EXPERIMENTS:
            row["success_final"], row["success_cumulative"] = _success(run_df)
        out["runs"].append(row)

    for bsuite_id, rows in _group(out["runs"], "bsuite_id").items():
        experiment = rows[0]["experiment"]
        row = dict(
            experiment=experiment,
            bsuite_id=bsuite_id,
            setting=_setting_label(bsuite_id),
            seeds=len(rows),
            episodes_min=min(r["episodes"] for r in rows),
            setting_score=_nanmean(r["setting_score"] for r in rows),
        )
        if experiment in MEMORY_EXPERIMENTS:
            row["memory_length"] = bsweep_memory_length(bsuite_id)
            row["success_final"] = _nanmean(r["success_final"] for r in rows)
            row["success_cumulative"] = _nanmean(r["success_cumulative"] for r in rows)
            row["solved"] = bool(row["success_final"] >= SOLVED_THRESHOLD)
        out["settings"].append(row)
    out["settings"].sort(key=lambda r: (r["experiment"], _natural(r["bsuite_id"])))

    per_seed = {}  # experiment -> [(seed, score, finished)]
    for seed, seed_df in df.groupby("seed", sort=True):
        with contextlib.redirect_stdout(io.StringIO()):
            scores = summary_analysis.bsuite_score(seed_df)
        for r in scores.to_dict("records"):
            per_seed.setdefault(r["bsuite_env"], []).append((seed, _num(r["score"]), bool(r["finished"])))
    for experiment, settings in _group(out["settings"], "experiment").items():
        seeds = per_seed.get(experiment, [])
        total = len(_settings_of(experiment))
        row = dict(
            experiment=experiment,
            score=_nanmean(s for _, s, _ in seeds),
            score_min=min((s for _, s, _ in seeds), default=float("nan")),
            score_max=max((s for _, s, _ in seeds), default=float("nan")),
            seeds=len(seeds),
            settings=len(settings),
            settings_total=total,
            partial=len(settings) < total,
            finished=bool(seeds) and all(f for _, _, f in seeds),
        )
        if experiment not in info:
            out["notes"].append(f"bsuite has no score for {experiment}")
        if experiment in MEMORY_EXPERIMENTS:
            solved = [s["memory_length"] for s in settings if s["solved"]]
            row["largest_solved"] = max(solved) if solved else None
            if solved and any(not s["solved"] and s["memory_length"] < max(solved) for s in settings):
                out["notes"].append(
                    f"{experiment}: a memory length shorter than the largest solved one is not solved"
                )
        out["experiments"].append(row)
    return out


def _group(rows, key):
    groups = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    return groups


def _natural(text):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def markdown(result) -> list[str]:
    """Markdown lines for a `score` result."""
    lines = ["## bsuite score", ""]
    if result["error"]:
        return lines + [result["error"], ""]
    if not result["experiments"]:
        return lines + ["no bsuite CSV logs found", ""] + [f"- {n}" for n in result["notes"]]
    lines += [
        "Computed by bsuite's own analysis code from bsuite's CSV logs; each seed is scored as one "
        "bsuite agent, `score` is the mean over seeds (min-max in brackets).",
        "",
        "| experiment | score | seeds | settings | finished | largest memory length solved |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for e in result["experiments"]:
        partial = " (partial)" if e["partial"] else ""
        spread = f"[{_fmt(e['score_min'])}-{_fmt(e['score_max'])}]"
        lines.append(
            f"| {e['experiment']} | {_fmt(e['score'])} {spread} | {e['seeds']} "
            f"| {e['settings']} of {e['settings_total']}{partial} | {_fmt(e['finished'])} "
            f"| {_fmt(e.get('largest_solved'))} |"
        )
    lines.append("")
    if any(e["partial"] for e in result["experiments"]):
        lines += [
            "Partial: bsuite scores an experiment over all its settings; this score covers only the "
            "settings that ran.",
            "",
        ]
    if not all(e["finished"] for e in result["experiments"]):
        lines += [
            "Not finished: some runs have fewer episodes than bsuite's protocol; bsuite then scores at "
            "the last logged episode.",
            "",
        ]
    memory = [s for s in result["settings"] if "success_final" in s]
    if memory:
        lines += [
            f"Memory settings, averaged over seeds: `success (final)` is the fraction of perfect "
            f"episodes over the last logged stretch of episodes (solved: >= {SOLVED_THRESHOLD}), "
            f"`success (all)` "
            f"over all episodes, `bsuite learned` the fraction of seeds for which bsuite's score "
            f"counts the setting as learned.",
            "",
            "| bsuite id | setting | seeds | episodes (min) | success (final) | success (all) | "
            "bsuite learned | solved |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {s['bsuite_id']} | {s['setting']} | {s['seeds']} | {s['episodes_min']} | "
            f"{_fmt(s['success_final'])} | {_fmt(s['success_cumulative'])} | "
            f"{_fmt(s['setting_score'])} | {_fmt(s['solved'])} |"
            for s in memory
        ]
        lines.append("")
    other = [s for s in result["settings"] if "success_final" not in s]
    if other:
        lines += [
            "Other settings: bsuite's score of each setting alone, averaged over seeds.",
            "",
            "| bsuite id | setting | seeds | episodes (min) | setting score |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {s['bsuite_id']} | {s['setting']} | {s['seeds']} | {s['episodes_min']} | "
            f"{_fmt(s['setting_score'])} |"
            for s in other
        ]
        lines.append("")
    lines += [f"- {n}" for n in result["notes"]]
    return lines


CSV_FIELDS = (
    "level",
    "experiment",
    "bsuite_id",
    "setting",
    "memory_length",
    "seeds",
    "settings",
    "settings_total",
    "partial",
    "finished",
    "episodes_min",
    "score",
    "score_min",
    "score_max",
    "setting_score",
    "success_final",
    "success_cumulative",
    "solved",
    "largest_solved",
)


def write_csv(result, path):
    """One row per experiment (`level=experiment`) and per setting (`level=setting`)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(dict(r, level="experiment") for r in result["experiments"])
        writer.writerows(dict(r, level="setting") for r in result["settings"])


def plot_memory(result, path) -> bool:
    """PNG of final-episode success vs memory length per memory experiment (mean over seeds, one dot
    per seed, the solved threshold dashed). Returns False (nothing written) without memory settings."""
    settings = [s for s in result["settings"] if s.get("memory_length") is not None]
    if not settings:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for experiment, rows in _group(settings, "experiment").items():
        rows = sorted(rows, key=lambda r: r["memory_length"])
        (line,) = ax.plot(
            [r["memory_length"] for r in rows],
            [r["success_final"] for r in rows],
            "o-",
            label=f"{experiment} (mean over seeds)",
        )
        runs = [r for r in result["runs"] if r["experiment"] == experiment]
        ax.scatter(
            [bsweep_memory_length(r["bsuite_id"]) for r in runs],
            [r["success_final"] for r in runs],
            s=12,
            color=line.get_color(),
            alpha=0.4,
        )
    ax.axhline(SOLVED_THRESHOLD, ls="--", color="gray", lw=1, label=f"solved (>= {SOLVED_THRESHOLD})")
    ax.set_xlabel("memory length")
    ax.set_ylabel("final-episode success")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def bsweep_memory_length(bsuite_id):
    from bsuite import sweep as bsweep

    return bsweep.SETTINGS[bsuite_id].get("memory_length")


def _seed_of(run_dir):
    path = pathlib.Path(run_dir).resolve()
    for name in (path.name, path.parent.name):  # <run> or <run>/bsuite
        m = re.fullmatch(r"seed(\d+)", name)
        if m:
            return int(m.group(1))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="bsuite's official scores of runs with bsuite CSV logs")
    p.add_argument("run_dirs", nargs="+", help="run logdirs (or their bsuite/ folders); seed from `seed<k>`")
    p.add_argument("--csv", help="also write the result table here")
    p.add_argument("--png", help="also plot success vs memory length here (memory experiments)")
    args = p.parse_args(argv)
    result = score([(_seed_of(d), d) for d in args.run_dirs])
    print("\n".join(markdown(result)))
    if args.csv:
        write_csv(result, args.csv)
    if args.png and plot_memory(result, args.png):
        print(f"wrote {args.png}")
    return 1 if result["error"] or not result["experiments"] else 0


if __name__ == "__main__":
    sys.exit(main())
