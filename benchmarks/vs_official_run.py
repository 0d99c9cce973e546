"""Whole training runs, ours vs the official R2I code's: env steps per second, same machine, same sitting.

  python benchmarks/vs_official_run.py --official_dir /work/r2i_official --shapes main cpu --cores 1 2 \
      --seconds 420 --out docs/cpu/vs_official_run.md

The companion of `vs_official.py` (single updates): here each side runs its own training program
(`python -m recall2imagine.train` / the official `recall2imagine/train.py` in its own venv, installed
with `official-r2i/setup.sh`, never a dependency of this project) on the same task
(gym_popgym:popgym-RepeatPreviousEasy-v0, vector observations, float32, CPU), the same model shapes,
batch, envs.amount and train ratio 64, pinned with `taskset` to 1 core (`taskset -c 0`) or 2 cores
(`taskset -c 0,1`), for --seconds each, then stopped (SIGINT to the process group, SIGTERM, SIGKILL:
both start worker processes). With --parallel_one_core (default) the 1-core runs go at the same time,
ours on core 0 and the official on core 1; the 2-core runs go one after the other, the side that goes
first alternating from one shape set to the next (official first in the first).

Shape sets (the official's values are read back from its own config parser before the runs, and the
runs do not start if a shape differs):
  main: ours `--configs popgym popgym_main`, the official `--configs popgym` (vs_official.py: the same
        model), float32, batch 4 x 64, envs.amount 8.
  cpu:  ours `--configs popgym popgym_cpu --imag_starts 0`; the official `--configs popgym` with our
        resolved shapes as overrides: batch 2 x 256, rssm.deter/units 128, rssm.hidden 64 (popgym_cpu
        raises `cpu`'s 32), rssm.stoch/classes 16, ssm.n_layers 2, ssm.n_blocks 4 (the official's
        `ssm_cell.n_blocks`), head layers 2 units 128, encoder/decoder mlp 2 x 128, envs.amount 4.
        `imag_starts` has no official equivalent (the official imagines from all B x T posterior
        states), hence ours 0 ("all"). popgym_cpu's other settings (C init, dt range, learning rates,
        free bits, bin range, entropy scale) change no arithmetic and are not passed on.
Both sides: train ratio 64, the official's prefill (it fills the replay until it holds B x T x envs
sequences of length T) given to ours as `--run.train_fill`, metrics every --log_every seconds, no
checkpoint during the run. Ours: `--run.loggers jsonl --run.eval_eps 0 --run.report_every 0
--jax.compile_cache off` (the official has no persistent compile cache; a cached program would hide
our compile), TCMalloc as installed. The official: `--replay uniform --replay_size max(40 T, 10000)`
(as bench.sh), its default process env workers, WANDB_MODE=offline. Unrecognised `--key value` pairs
are config overrides for our side only.

Measured per run from each side's metrics.jsonl (rows: "step" = env steps of all envs; neither side
logs wall time, so every row is stamped with its arrival time, polled every 0.25 s):
  first update: ours, the first row with train metrics (written at the first env step after the first
    update that is --log_every s or more after the previous row or the start of training; it fetches
    the update's results first); the official, its "Tracing report function." line (it writes a row,
    with a report whose compile comes after the update, as soon as its first update has returned),
    else its first row with train metrics;
  steady env steps/s: (last row's step - first train row's step) / (their arrival times' difference),
    a write's step being the largest step arrived by then (the official writes each episode's row at
    the step it ended);
  whole-run average: the env steps at the end (the largest step logged) / --seconds.
Prints and writes (--out, and the rows as .json next to it) a markdown table with the CPU model, the
date, our commit and both command lines.
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

# before anything imports recall2imagine, whose package import adds an XLA flag to os.environ that the
# official's older jaxlib would reject
BASE_ENV = dict(os.environ)

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from vs_official import commit, cpu_model  # noqa: E402  (the machine and commit lines, one place)

TASK = "gym_popgym:popgym-RepeatPreviousEasy-v0"
COMMON = ["--jax.platform", "cpu", "--jax.precision", "float32"]
SHAPES = {
    # ours, the official's arguments (None: our resolved shapes, see official_args)
    "main": (
        ["--configs", "popgym", "popgym_main", *COMMON, "--batch_size", "4", "--batch_length", "64"],
        ["--configs", "popgym", *COMMON, "--batch_size", "4", "--batch_length", "64"],
    ),
    "cpu": (["--configs", "popgym", "popgym_cpu", "--imag_starts", "0"], None),
}
# our config key -> the official's, for every setting that fixes the arithmetic of an update
KEYS = {
    "batch_size": "batch_size",
    "batch_length": "batch_length",
    "envs.amount": "envs.amount",
    "run.train_ratio": "run.train_ratio",
    "rssm.deter": "rssm.deter",
    "rssm.units": "rssm.units",
    "rssm.hidden": "rssm.hidden",
    "rssm.stoch": "rssm.stoch",
    "rssm.classes": "rssm.classes",
    "ssm.n_layers": "ssm.n_layers",
    "ssm.n_blocks": "ssm_cell.n_blocks",
    **{
        f"{h}.{k}": f"{h}.{k}"
        for h in ("reward_head", "cont_head", "actor", "critic")
        for k in ("layers", "units")
    },
    **{f"{p}.{k}": f"{p}.{k}" for p in ("encoder", "decoder") for k in ("mlp_layers", "mlp_units")},
    "imag_horizon": "imag_horizon",
    "actor.inputs": "actor.inputs",
    "critic.inputs": "critic.inputs",
    "decoder.inputs": "decoder.inputs",
    "reward_head.bins": "reward_head.bins",
    "critic.bins": "critic.bins",
    "jax.precision": "jax.precision",
    "jax.platform": "jax.platform",
}
# the ones passed to the official as overrides for the `cpu` set (the rest are its defaults already)
PASSED = [k for k in KEYS if not k.endswith((".inputs", ".bins")) and k not in ("imag_horizon",)]
# the official's effective values with `--configs popgym` (its configs.yaml at commit 6e317e7: defaults,
# then the popgym block, whose `.*\.units: 512` also sets rssm.units); checked against its own parser
# (official_config) before every comparison
OFFICIAL_POPGYM = {
    "batch_size": 4,
    "batch_length": 1024,
    "envs.amount": 8,
    "run.train_ratio": 64.0,
    "rssm.deter": 1024,
    "rssm.units": 512,
    "rssm.hidden": 128,
    "rssm.stoch": 32,
    "rssm.classes": 32,
    "ssm.n_layers": 3,
    "ssm_cell.n_blocks": 8,
    **{
        f"{h}.{k}": v
        for h in ("reward_head", "cont_head", "actor", "critic")
        for k, v in (("layers", 2), ("units", 512))
    },
    **{f"{p}.{k}": v for p in ("encoder", "decoder") for k, v in (("mlp_layers", 1), ("mlp_units", 512))},
    "imag_horizon": 15,
    "actor.inputs": ["stoch", "hidden"],
    "critic.inputs": ["stoch", "hidden"],
    "decoder.inputs": ["deter", "stoch"],
    "reward_head.bins": 255,
    "critic.bins": 255,
    "jax.precision": "float16",
    "jax.platform": "gpu",
}
REPORT_MARK = "Tracing report function."
POLL_S = 0.25


# ------------------------------------------------------------------ configs and command lines


def our_config(argv):
    """Our resolved config (flat dict) of `argv`; raises recall2imagine.config.ConfigError."""
    from recall2imagine import config as configlib

    return configlib.parse(argv).flat()


def _plain(value):
    """Tuples as lists, integral floats as ints: the two parsers' values compare equal."""
    value = json.loads(json.dumps(value))
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _arg(value):
    return " ".join(value) if isinstance(value, (list, tuple)) else f"{_plain(value)}"


def official_expected(argv):
    """The official's effective values of KEYS' targets for `argv` (`--configs popgym` then `--key value`
    pairs), from OFFICIAL_POPGYM: no official code runs (the tests use it; a run asks the official's parser)."""
    assert argv[:2] == ["--configs", "popgym"], argv
    values = {k: _plain(v) for k, v in OFFICIAL_POPGYM.items()}
    for flag, value in zip(argv[2::2], argv[3::2]):
        key = flag[2:]
        if key in values:
            old = OFFICIAL_POPGYM[key]
            values[key] = _plain(type(old)(float(value)) if isinstance(old, (int, float)) else value)
    return values


def official_prefill(batch, length, amount):
    """Env steps of the official's prefill: random steps in driver calls of 100 (rounded up to whole
    steps of all envs) until its replay holds batch * length * amount sequences of `length` steps, each
    env's stream giving one per step from its length-th on."""
    need = batch * length * amount + amount * (length - 1)
    chunk = -(-100 // amount) * amount
    return -(-need // chunk) * chunk


def commands(shape, base_cfg, ours_extra, official_dir, logdir, log_every):
    """(ours argv without taskset, official argv without taskset, official argv for the config check).
    `base_cfg`: our config of the shape set without `ours_extra` (overrides for our side only, which the
    shape check then compares)."""
    ours_args, official_args = SHAPES[shape]
    if official_args is None:
        official_args = ["--configs", "popgym"]
        for key in PASSED:
            official_args += [f"--{KEYS[key]}", _arg(base_cfg[key])]
    B, T, n = base_cfg["batch_size"], base_cfg["batch_length"], base_cfg["envs.amount"]
    ours = [
        sys.executable,
        "-m",
        "recall2imagine.train",
        "--logdir",
        str(logdir / "ours"),
        *ours_args,
        "--task",
        TASK,
        "--run.loggers",
        "jsonl",
        "--run.log_every",
        f"{log_every:g}",
        "--run.save_every",
        "1e9",
        "--run.eval_eps",
        "0",
        "--run.report_every",
        "0",
        "--run.train_fill",
        str(official_prefill(B, T, n)),
        "--jax.compile_cache",
        "off",
        *ours_extra,
    ]
    official = [
        str(pathlib.Path(official_dir) / "venv" / "bin" / "python"),
        "recall2imagine/train.py",
        "--logdir",
        str(logdir / "official"),
        *official_args,
        "--task",
        TASK,
        "--replay",
        "uniform",
        "--replay_size",
        str(max(40 * T, 10000)),
        "--run.log_every",
        str(max(1, round(log_every))),
        "--run.save_every",
        "1000000000",
    ]
    return ours, official, official_args


def mismatches(ours_cfg, official_values):
    """['key: ours X, official Y', ...] over KEYS, plus imag_starts if ours imagines from fewer than all."""
    out = [
        f"{k}: ours {_plain(ours_cfg[k])}, official {official_values.get(v)}"
        for k, v in KEYS.items()
        if _plain(ours_cfg[k]) != official_values.get(v)
    ]
    starts = ours_cfg["imag_starts"]
    if 0 < starts < ours_cfg["batch_size"] * ours_cfg["batch_length"]:
        out.append(f"imag_starts: ours {starts}, the official imagines from all B x T states (use 0)")
    return out


OFFICIAL_PROBE = """
import json, sys
sys.path[:0] = ['recall2imagine', '.']
import ruamel.yaml as yaml
import embodied
configs = yaml.YAML(typ='safe').load(open('recall2imagine/configs.yaml').read())
parsed, other = embodied.Flags(configs=['defaults']).parse_known(sys.argv[1:])
config = embodied.Config(configs['defaults'])
for name in parsed.configs:
  config = config.update(configs[name])
config = embodied.Flags(config).parse(other)
print('CONFIG ' + json.dumps(config.flat, default=list))
"""


def official_config(official_dir, argv):
    """The official's effective config (flat) for `argv`, from its own parser (its venv; no agent, no
    env); raises RuntimeError."""
    src = pathlib.Path(official_dir) / "src"
    python = pathlib.Path(official_dir) / "venv" / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-c", OFFICIAL_PROBE, *argv],
        cwd=src,
        env=official_env(None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("CONFIG ")]
    if proc.returncode or not line:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1][:300])
    return {k: _plain(v) for k, v in json.loads(line[-1][len("CONFIG ") :]).items()}


def official_env(logdir):
    env = {k: v for k, v in BASE_ENV.items() if k != "LD_PRELOAD"}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    if logdir is not None:
        env["WANDB_DIR"] = str(logdir)  # else its offline files go to src/wandb and /tmp/wandb
    return env


def ours_env():
    return dict(BASE_ENV, PYTHONUNBUFFERED="1")


def cpus(cores, first=0):
    """taskset's list: 1 core -> '0' (or `first`), 2 -> '0,1'."""
    return str(first) if cores == 1 else ",".join(str(i) for i in range(cores))


# ------------------------------------------------------------------ logs and rates


def read_rows(path, offset):
    """New complete rows of a jsonl file from byte `offset`: (rows, new offset); a cut last line waits."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    rows = []
    for line in data[:end].splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, offset + end


def is_train_row(row):
    """A row written after at least one update: train metrics (ours always adds `train/updates`)."""
    return (
        any(k.startswith("train/") and k != "train/updates" for k in row)
        or (row.get("train/updates") or 0) > 0
    )


def summarize(timed_rows, seconds=math.inf, first_update_s=None, end_s=None):
    """Rates from [(arrival s since the start, row), ...] of a run that lasted `end_s` s (default: its last
    row); rows after `seconds` (written while stopping) are left out. A write may hold several rows (the
    official writes the episodes since its last write, each at the step it ended, before the row of the
    write's own step), so the env steps at a time are the largest step that has arrived by then.
    Returns {rows, first_update_s, steady_sps, steady_rows, steady_s, average_sps, last_step, last_s};
    None where the rows do not tell."""
    rows = [(t, r) for t, r in timed_rows if t <= seconds and isinstance(r.get("step"), (int, float))]
    first = next((i for i, (_, r) in enumerate(rows) if is_train_row(r)), None)
    steps, top = [], -math.inf
    for _, r in rows:
        top = max(top, r["step"])
        steps.append(top)
    out = dict(
        rows=len(rows),
        first_update_s=first_update_s,
        steady_sps=None,
        steady_rows=0,
        steady_s=None,
        average_sps=None,
        last_step=steps[-1] if rows else None,
        last_s=rows[-1][0] if rows else None,
    )
    if first is not None and first_update_s is None:
        out["first_update_s"] = rows[first][0]
    end_s = min(seconds, end_s) if end_s is not None else out["last_s"]
    if rows and end_s and end_s > 0:
        out["average_sps"] = steps[-1] / end_s
    if first is not None:
        (t0, s0), (t1, s1) = (rows[first][0], steps[first]), (rows[-1][0], steps[-1])
        out["steady_rows"] = len(rows) - first
        if out["steady_rows"] >= 2 and t1 > t0:
            out.update(steady_sps=(s1 - s0) / (t1 - t0), steady_s=t1 - t0)
    return out


# ------------------------------------------------------------------ processes


def _stat(pid):
    """(ppid, pgid, start time in ticks) of a live process, or None."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[19])


def descendants(root):
    """{pid: start time} of the live processes below `root` (also those in sessions of their own, e.g.
    wandb's service)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = _stat(int(entry))
            if s:
                stats[int(entry)] = s
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, start) in stats.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


class Run:
    """One training process (and its children), its metrics.jsonl rows and its stdout, timestamped."""

    def __init__(self, side, cmd, cwd, env, logdir, mark=None):
        self.side, self.cmd, self.cwd, self.env, self.logdir, self.mark = side, cmd, cwd, env, logdir, mark
        self.rows, self.offset, self.tail, self.mark_s, self.children = [], 0, [], None, {}
        self.proc = self.start = self.returncode = self.ended_s = self.stop_s = None

    def launch(self):
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        with open(self.logdir.parent / f"{self.side}.stdout.log", "w", buffering=1) as log:
            for raw in self.proc.stdout:
                t = time.monotonic() - self.start
                line = raw.decode(errors="replace").rstrip()
                log.write(f"[{t:8.2f}] {line}\n")
                if self.mark and self.mark_s is None and self.mark in line:
                    self.mark_s = t
                self.tail = (self.tail + [line])[-20:]

    def poll(self, scan=False):
        t = time.monotonic() - self.start
        rows, self.offset = read_rows(self.logdir / "metrics.jsonl", self.offset)
        self.rows += [(t, r) for r in rows]
        if scan and self.proc.poll() is None:
            self.children.update(descendants(self.proc.pid))
        if self.returncode is None and self.proc.poll() is not None:
            self.returncode, self.ended_s = self.proc.returncode, t
        return t

    def stop(self, grace):
        """SIGINT to the process group, then SIGTERM, then SIGKILL; then any descendant that left the group."""
        pgid = self.proc.pid  # a session leader: its group id is its pid
        if self.proc.poll() is None:
            self.children.update(descendants(self.proc.pid))
        t0 = time.monotonic()
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                self.stop_s = f"{time.monotonic() - t0:.0f} s after SIGINT" + (
                    f" ({sig.name})" if sig != signal.SIGINT else ""
                )
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # env workers left behind by the leader
        except (ProcessLookupError, PermissionError):
            pass
        for pid, start in self.children.items():
            s = _stat(pid)
            if s and s[2] == start:  # the same process, not a reused id
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.reader.join(10)
        if self.returncode is None:
            self.returncode = self.proc.returncode


def run_together(runs, seconds, grace):
    """Starts the runs together, polls their logs until `seconds` have passed (or all ended), stops them."""
    for r in runs:
        r.launch()
    last_scan = 0.0
    try:
        while True:
            time.sleep(POLL_S)
            scan = time.monotonic() - last_scan > 5
            last_scan = time.monotonic() if scan else last_scan
            elapsed = [r.poll(scan) for r in runs]
            if min(elapsed) >= seconds or all(r.returncode is not None for r in runs):
                break
    finally:
        for r in runs:
            r.stop(grace)
            r.poll()


def result(run, seconds):
    mark = run.mark_s if run.mark_s is not None and run.mark_s <= seconds else None
    s = summarize(run.rows, seconds, mark, run.ended_s or seconds)
    s["updates"] = next(
        (r["train/updates"] for t, r in reversed(run.rows) if t <= seconds and "train/updates" in r), None
    )
    if run.ended_s is not None and run.ended_s < seconds:
        last = next((x for x in reversed(run.tail) if x.strip()), "")
        s["note"] = f"ended by itself at {run.ended_s:.0f} s, exit {run.returncode}: {last[:200]}"
    elif s["rows"] == 0:
        s["note"] = "no rows"
    s["stopped"] = run.stop_s
    s["series"] = [[round(t, 2), r["step"]] for t, r in run.rows if "step" in r]
    return s


# ------------------------------------------------------------------ output


def _f(x, digits=1):
    return "" if x is None else f"{x:.{digits}f}"


def table(results):
    lines = [
        "| shapes | cores | ours steady env steps/s | official steady env steps/s | ratio (ours / official) | "
        "ours whole-run avg | official whole-run avg | ours first update s | official first update s | "
        "rows used (ours / official) | how |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        o, u = r["official"], r["ours"]
        ratio = f"**{u['steady_sps'] / o['steady_sps']:.2f}x**" if u["steady_sps"] and o["steady_sps"] else ""
        lines.append(
            f"| {r['shapes']} | {r['cores']} | {_f(u['steady_sps'])} | {_f(o['steady_sps'])} | {ratio} | "
            f"{_f(u['average_sps'])} | {_f(o['average_sps'])} | {_f(u['first_update_s'])} | "
            f"{_f(o['first_update_s'])} | {u['steady_rows']} / {o['steady_rows']} | {r['how']} |"
        )
    return "\n".join(lines) + "\n"


def details(results):
    lines = []
    for r in results:
        for side in ("ours", "official"):
            s = r[side]
            lines.append(
                f"- {r['shapes']}, {r['cores']} core{'s' if r['cores'] > 1 else ''}, {side}: "
                f"{s['rows']} rows; last {s['last_step']} env steps at {_f(s['last_s'])} s"
                + (f", {s['updates']:.0f} updates" if s.get("updates") else "")
                + (f"; steady window {_f(s['steady_s'])} s" if s["steady_s"] else "")
                + (f"; stopped {s['stopped']}" if s.get("stopped") else "")
                + (f"; {s['note']}" if s.get("note") else "")
            )
    return "\n".join(lines) + "\n"


def _shell(cmd):
    return " ".join(
        x if re.fullmatch(r"[\w@%+=:,./-]+", x) else "'" + x.replace("'", "'\\''") + "'" for x in cmd
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Same-sitting whole training runs of ours and the official R2I code: env steps per second. "
        "Unrecognised --key value pairs are config overrides for our side only.",
    )
    p.add_argument(
        "--official_dir", default="/work/r2i_official", help="scratch folder of official-r2i/setup.sh"
    )
    p.add_argument("--shapes", nargs="+", default=["main", "cpu"], choices=sorted(SHAPES))
    p.add_argument("--cores", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--seconds", type=float, default=420.0, help="wall time of each run")
    p.add_argument("--log_every", type=float, default=10.0, help="seconds between metric rows (both sides)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds a run may take to stop after SIGINT")
    p.add_argument(
        "--parallel_one_core",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="1-core runs: ours on core 0 and the official on core 1 at the same time",
    )
    p.add_argument(
        "--dry_run", action="store_true", help="check both configs, print the commands, run nothing"
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the runs' logdirs and stdout logs (else deleted)"
    )
    p.add_argument(
        "--out", default=str(ROOT / "logdir" / "vs_official_run.md"), help="markdown file (+ .json)"
    )
    args, overrides = p.parse_known_args(argv)
    official_dir = pathlib.Path(args.official_dir)
    if (
        not (official_dir / "venv" / "bin" / "python").is_file()
        or not (official_dir / "src" / "recall2imagine" / "train.py").is_file()
    ):
        p.error(
            f"--official_dir {official_dir} has no venv or src: install it with official-r2i/setup.sh first"
        )
    if shutil.which("taskset") is None:
        p.error("taskset (util-linux) is needed to pin the runs to cores")
    need = 2 if (2 in args.cores or (1 in args.cores and args.parallel_one_core)) else 1
    if not set(range(need)) <= os.sched_getaffinity(0):
        p.error(f"cores 0-{need - 1} must be available (--no-parallel_one_core for a 1-core machine)")
    if args.seconds <= 0 or args.log_every <= 0:
        p.error("--seconds and --log_every must be positive")

    started, results, plans, pairs = time.time(), [], {}, 0
    base = pathlib.Path(tempfile.mkdtemp(prefix="vs_official_run-"))
    try:
        for shape in args.shapes:  # configs of both sides first: a mismatch stops before any run
            try:
                base_cfg, cfg = our_config(SHAPES[shape][0]), our_config(SHAPES[shape][0] + overrides)
            except Exception as e:  # noqa: BLE001 - recall2imagine.config.ConfigError
                p.error(f"ours, {shape}: {e}")
            ours, official, official_args = commands(
                shape, base_cfg, overrides, official_dir, base / "LOGDIR", args.log_every
            )
            try:
                values = official_config(official_dir, official_args)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                p.error(f"the official's config parser failed on {official_args}: {e}")
            bad = mismatches(cfg, values)
            stale = {k: v for k, v in official_expected(official_args).items() if values.get(k) != v}
            if stale:  # only the tests use the table; the runs go by the official's parser
                print(f"note: OFFICIAL_POPGYM differs from the official's parser: {stale}", flush=True)
            if bad:
                p.error(f"{shape}: the shapes differ: " + "; ".join(bad))
            plans[shape] = base_cfg
            print(
                f"{shape}: shapes match ({len(KEYS)} keys); envs ours {cfg['envs.parallel']}, official "
                f"{values.get('envs.parallel')}",
                flush=True,
            )
            if args.dry_run:
                for side, cmd in (("ours", ours), ("official", official)):
                    print(f"  {side}: {_shell(cmd).replace(str(base / 'LOGDIR'), 'LOGDIR')}")
        for shape in args.shapes if not args.dry_run else ():
            cfg = plans[shape]
            for cores in args.cores:
                logdir = base / f"{shape}-{cores}"
                ours, official, _ = commands(shape, cfg, overrides, official_dir, logdir, args.log_every)
                together = cores == 1 and args.parallel_one_core

                def make(side, first_cpu=0):
                    pin = ["taskset", "-c", cpus(cores, first_cpu)]
                    if side == "ours":
                        return Run("ours", pin + ours, ROOT, ours_env(), logdir / "ours")
                    return Run(
                        "official",
                        pin + official,
                        official_dir / "src",
                        official_env(logdir),
                        logdir / "official",
                        REPORT_MARK,
                    )

                if together:
                    runs = {"ours": make("ours", 0), "official": make("official", 1)}
                    how = "together: ours core 0, official core 1"
                    print(f"{shape}, 1 core: both at once for {args.seconds:.0f} s", flush=True)
                    run_together(list(runs.values()), args.seconds, args.grace)
                else:
                    order = ("official", "ours") if pairs % 2 == 0 else ("ours", "official")
                    pairs += 1
                    runs, how = {}, f"one after the other, {order[0]} first"
                    for side in order:
                        print(
                            f"{shape}, {cores} core{'s' if cores > 1 else ''}: {side} for {args.seconds:.0f} s",
                            flush=True,
                        )
                        runs[side] = make(side)
                        run_together([runs[side]], args.seconds, args.grace)
                res = dict(shapes=shape, cores=cores, how=how)
                for side, run in runs.items():
                    res[side] = result(run, args.seconds)
                    s = res[side]
                    print(
                        f"  {side:>8}: steady {_f(s['steady_sps'])} env steps/s over {s['steady_rows']} rows, "
                        f"average {_f(s['average_sps'])}, first update {_f(s['first_update_s'])} s, "
                        f"last step {s['last_step']}" + (f" ({s['note']})" if s.get("note") else ""),
                        flush=True,
                    )
                res["commands"] = {
                    side: _shell(run.cmd).replace(str(logdir), "LOGDIR") for side, run in runs.items()
                }
                results.append(res)
    finally:
        if args.keep:
            print(f"logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    if args.dry_run:
        return
    cmdline = " ".join(sys.argv[1:] if argv is None else argv)
    head = (
        f"{datetime.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} cores, ours at commit {commit()}; "
        f"`python benchmarks/vs_official_run.py {cmdline}` ({(time.time() - started) / 60:.0f} min); "
        f"{args.seconds:.0f} s per run, rows every {args.log_every:g} s\n\n"
        "Env steps/s (all envs). Steady: from the first row after the first update to the last row; whole-run "
        "average: env steps at the end / the run's seconds (prefill and compile included); first update: "
        "seconds from the start.\n\n"
    )
    seen, cmd_lines = set(), []
    for r in results:
        if r["shapes"] not in seen:
            seen.add(r["shapes"])
            cmd_lines.append(f"{r['shapes']} ({r['cores']} core{'s' if r['cores'] > 1 else ''}):\n")
            cmd_lines += [
                f"    # {side}\n    {r['commands'][side]}\n"
                for side in ("ours", "official")
                if side in r["commands"]
            ]
    notes = (
        "\nNotes: the official's metrics.jsonl rows hold `step` (env steps of all envs, its Counter goes up once "
        "per env per step, as ours) and, after the first, `fps`, but no wall time: rows are timed by arrival. "
        "It writes a row (with a report: a world-model loss pass, compiled at the first row) every "
        "run.log_every seconds. `imag_starts` has no official equivalent (it always imagines from all B x T "
        "states): ours runs with 0 = all. Ours keeps its envs in-process (envs.parallel none), the official "
        "runs one process per env; ours preloads TCMalloc.\n"
    )
    text = (
        head
        + table(results)
        + "\n"
        + details(results)
        + "\nCommands (LOGDIR: a temporary folder):\n\n"
        + "".join(cmd_lines)
        + notes
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print()
    print(text)
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
