"""Train-step speed of R2I (`--rssm.core ssm`) vs DreamerV3 (`--rssm.core gru`) over sequence length.

  python benchmarks/train_step.py --quick                      # CPU check, a few minutes
  python benchmarks/train_step.py --configs popgym --jax.platform gpu --out bench/gpu

For each sequence length L and each core, one fresh subprocess builds the agent with batch size
tokens // L (tokens per step constant), compiles, and times
  * the world-model train step: loss, gradients and model_opt update (Agent._wm_loss + wm_opt);
  * the full agent train step: Agent.train (world model, imagination, actor, critic).
Warm-up calls (compilation included) are not timed; the reported time is the median of the
timed repeats. Peak memory per point comes from the JAX device allocator (memory_stats,
peak_bytes_in_use) where the backend has one, else from the process's max RSS; the subprocess
per point keeps these peaks separate. Observations are vectors (the popgym task): image
observations do not exist in this build yet.

Writes to --out: train_step.md (Markdown), train_step.csv (one row per core and length) and
train_step.png (time vs length, log-log, and the gru / ssm ratio). Further `--key value` flags
are config overrides applied to both cores (e.g. `--rssm.deter 256`).
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recall2imagine import config as configlib  # noqa: E402  (light: no JAX import)

FULL_LENGTHS = [64, 128, 256, 512, 1024, 2048, 4096]
QUICK = dict(lengths=[64, 256, 1024], tokens=1024, repeats=3, warmup=2)
FULL = dict(lengths=FULL_LENGTHS, tokens=4096, repeats=10, warmup=2)
CORES = ("ssm", "gru")
IMAGE_NOTE = "vector observations only: image observations (CNN encoder/decoder) do not exist in this build yet"


def _bool(text):
    if str(text) not in ("True", "False"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return str(text) == "True"


def parse_args(argv):
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description="World-model and agent train-step time of the ssm (R2I) and gru (DreamerV3) cores "
                    "over sequence length, at constant tokens per step. Unrecognised --key value pairs "
                    "are config overrides.")
    p.add_argument("--quick", action="store_true",
                   help=f"CPU check: lengths {QUICK['lengths']}, tokens {QUICK['tokens']}, "
                        f"repeats {QUICK['repeats']} (explicit flags still win)")
    p.add_argument("--lengths", type=int, nargs="+", help=f"sequence lengths (default {FULL['lengths']})")
    p.add_argument("--tokens", type=int, help=f"batch_size * length per step (default {FULL['tokens']})")
    p.add_argument("--configs", nargs="+", default=["popgym", "cpu"], help="config blocks (default: popgym cpu)")
    p.add_argument("--cores", nargs="+", default=list(CORES), choices=CORES)
    p.add_argument("--parallel", default="auto", choices=["auto", "True", "False"],
                   help="ssm.parallel: associative (True) or sequential (False) scan; auto: parallel off CPU")
    p.add_argument("--repeats", type=int, help=f"timed calls per point (default {FULL['repeats']})")
    p.add_argument("--warmup", type=int, help=f"untimed calls per point, compilation included "
                                              f"(default {FULL['warmup']})")
    p.add_argument("--agent", type=_bool, default=True, help="also time the full agent train step (True|False)")
    p.add_argument("--out", default=str(ROOT / "logdir" / "bench_train_step"),
                   help="output folder (default logdir/bench_train_step in the repository, git-ignored)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per point")
    p.add_argument("--point", help=argparse.SUPPRESS)  # internal: run one point, print its JSON
    args, overrides = p.parse_known_args(argv)
    base = QUICK if args.quick else FULL
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if any(L < 1 for L in args.lengths) or args.tokens < 1 or args.repeats < 1 or args.warmup < 1:
        p.error("lengths, tokens, repeats and warmup must be positive (warmup >= 1 covers compilation)")
    return args, overrides


def point_argv(args, overrides, core, length):
    """Config arguments of one point."""
    batch = max(1, args.tokens // length)
    argv = ["--configs", *args.configs, *overrides, "--rssm.core", core, "--batch_size", str(batch),
            "--batch_length", str(length), "--ssm.parallel", args.parallel]
    return argv


def gru_inputs(cfg):
    """The GRU core has no SSM state: actor/critic inputs with `hidden` become DreamerV3's (deter, stoch)."""
    fix = []
    for name in ("actor", "critic", "decoder", "reward_head", "cont_head"):
        if "hidden" in getattr(cfg, name).inputs:
            fix += [f"--{name}.inputs", "deter,stoch"]
    return fix


# ---------------------------------------------------------------- one point (subprocess)

def _peak_memory(jax):
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"


def run_point(spec):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    cfg = configlib.parse(spec["argv"])
    if cfg.rssm.core == "gru":
        cfg = configlib.parse(spec["argv"] + gru_inputs(cfg))
    import jax
    if cfg.jax.platform != "auto":
        jax.config.update("jax_platforms", {"gpu": "cuda"}.get(cfg.jax.platform, cfg.jax.platform))
    import equinox as eqx
    import numpy as np
    import optax

    from recall2imagine.agent import Agent
    from recall2imagine.envs import make_env

    env = make_env(cfg.task, seed=0)
    agent = Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(0))
    B, T, A = cfg.batch_size, cfg.batch_length, agent.act_dim
    rng = np.random.default_rng(0)
    obs = env.reset()
    batch = {k: rng.normal(size=(B, T) + np.shape(v)).astype(np.float32) for k, v in obs.items()
             if not k.startswith("is_") and not k.startswith("log_") and k != "reward"}
    batch.update(reward=rng.normal(size=(B, T)).astype(np.float32),
                 is_first=rng.random((B, T)) < 0.01, is_last=np.zeros((B, T), bool),
                 is_terminal=rng.random((B, T)) < 0.01,
                 action=np.eye(A, dtype=np.float32)[rng.integers(0, A, (B, T))])
    batch["is_first"][:, 0] = True
    env.close()

    def wm_step(key, wm, opt_state, batch):
        params, static = eqx.partition(wm, eqx.is_array)
        loss_fn = lambda p: agent._wm_loss(eqx.combine(p, static), batch, key)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = agent.wm_opt.update(grads, opt_state, params)
        return eqx.combine(optax.apply_updates(params, updates), static), opt_state, loss

    wm_step = eqx.filter_jit(wm_step)
    n = spec["warmup"] + spec["repeats"]
    keys = jax.random.split(jax.random.PRNGKey(1), n)

    def timed(fn):
        times, first = [], None
        for i in range(n):
            t0 = time.perf_counter()
            fn(keys[i])
            dt = time.perf_counter() - t0
            if i == 0:
                first = dt
            if i >= spec["warmup"]:
                times.append(dt)
        return times, first

    wm = jax.tree.map(lambda x: x, agent.state.wm)
    carry = [wm, agent.wm_opt.init(eqx.filter(wm, eqx.is_array))]
    dev_batch = jax.device_put(batch)

    def one_wm(key):
        carry[0], carry[1], loss = wm_step(key, carry[0], carry[1], dev_batch)
        jax.block_until_ready((carry, loss))

    res = dict(core=cfg.rssm.core, length=T, batch=B, tokens=B * T, parallel=bool(agent.state.wm.rssm.parallel),
               device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
               precision=cfg.jax.precision, actor_inputs=",".join(cfg.actor.inputs),
               imag_starts=min(int(cfg.get("imag_starts", 0) or 0) or B * T, B * T), imag_horizon=cfg.imag_horizon)
    times, first = timed(one_wm)
    res.update(wm_ms=1e3 * statistics.median(times), wm_min_ms=1e3 * min(times), wm_first_s=first)
    res["wm_peak_mb"], res["mem_source"] = _peak_memory(jax)
    del carry[:]
    if spec["agent"]:
        def one_train(key):
            jax.block_until_ready(agent.train(batch, key))
            jax.block_until_ready(agent.state)

        times, first = timed(one_train)
        res.update(train_ms=1e3 * statistics.median(times), train_min_ms=1e3 * min(times), train_first_s=first)
        res["train_peak_mb"] = _peak_memory(jax)[0]
    return res


# ---------------------------------------------------------------- driver

def _fmt(x, digits=1):
    return "" if x is None else f"{x:.{digits}f}"


def _ratio(a, b):
    return a / b if a and b else None


def write_outputs(out, args, overrides, rows, elapsed):
    out.mkdir(parents=True, exist_ok=True)
    by = {(r["core"], r["length"]): r for r in rows if "error" not in r}
    lengths = sorted({r["length"] for r in rows})
    first = next(iter(by.values()), {})
    # CSV, one row per core and length
    cols = ["core", "length", "batch", "tokens", "parallel", "wm_ms", "wm_min_ms", "wm_first_s", "train_ms",
            "train_min_ms", "train_first_s", "wm_peak_mb", "train_peak_mb", "mem_source", "device", "precision",
            "actor_inputs", "imag_starts", "error"]
    with open(out / "train_step.csv", "w") as f:
        f.write(",".join(cols) + "\n")
        for r in rows:
            f.write(",".join(str(r.get(c, "")).replace(",", ";") for c in cols) + "\n")
    # Markdown
    lines = [
        "# Train-step time: R2I (ssm) vs DreamerV3 (gru)", "",
        f"- {IMAGE_NOTE}.",
        f"- configs: `{' '.join(args.configs)}`" + (f", overrides `{' '.join(overrides)}`" if overrides else ""),
        f"- device: {first.get('device', '?')}, precision {first.get('precision', '?')}, "
        f"ssm parallel scan: {first.get('parallel', '?')} (--parallel {args.parallel})",
        f"- tokens per step {args.tokens} (batch = tokens // length); lengths {' '.join(map(str, args.lengths))}"
        + (" (--quick subset; the full set is " + " ".join(map(str, FULL_LENGTHS)) + ")"
           if args.quick and args.lengths != FULL_LENGTHS else ""),
        f"- median of {args.repeats} timed calls after {args.warmup} warm-up calls (compilation excluded)"
        + (" (--quick)" if args.quick else ""),
        f"- gru actor/critic inputs: {by.get(('gru', lengths[0]), {}).get('actor_inputs', '-') if lengths else '-'}"
        f"; ssm: {by.get(('ssm', lengths[0]), {}).get('actor_inputs', '-') if lengths else '-'}",
        f"- full agent step imagines from {first.get('imag_starts', '?')} posterior states "
        f"(`imag_starts`; 0 means all batch*length) x {first.get('imag_horizon', '?')} steps",
        f"- peak memory: {first.get('mem_source', '?')}, one process per point",
        f"- wall time of the benchmark: {elapsed:.0f} s", "",
        "| length | batch | wm ssm ms | wm gru ms | wm gru/ssm | train ssm ms | train gru ms | train gru/ssm "
        "| mem ssm MB | mem gru MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for L in lengths:
        s, g = by.get(("ssm", L), {}), by.get(("gru", L), {})
        b = s.get("batch", g.get("batch", ""))
        mem = lambda r: _fmt(r.get("train_peak_mb", r.get("wm_peak_mb")), 0)
        lines.append(f"| {L} | {b} | {_fmt(s.get('wm_ms'))} | {_fmt(g.get('wm_ms'))} | "
                     f"{_fmt(_ratio(g.get('wm_ms'), s.get('wm_ms')), 2)} | {_fmt(s.get('train_ms'))} | "
                     f"{_fmt(g.get('train_ms'))} | {_fmt(_ratio(g.get('train_ms'), s.get('train_ms')), 2)} | "
                     f"{mem(s)} | {mem(g)} |")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Failed points:"] + [f"- {r['core']} L={r['length']}: {r['error']}" for r in errors]
    text = "\n".join(lines) + "\n"
    (out / "train_step.md").write_text(text)
    # PNG
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no PNG written", flush=True)
        return text
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for core, color in zip(CORES, ("C0", "C3")):
        for key, style, label in (("wm_ms", "-o", "world model"), ("train_ms", "--s", "full agent")):
            pts = [(L, by[(core, L)][key] / 1e3) for L in lengths if key in by.get((core, L), {})]
            if pts:
                ax1.plot(*zip(*pts), style, color=color, label=f"{core} {label}")
    for key, style, label in (("wm_ms", "-o", "world model"), ("train_ms", "--s", "full agent")):
        pts = [(L, _ratio(by.get(("gru", L), {}).get(key), by.get(("ssm", L), {}).get(key))) for L in lengths]
        pts = [p for p in pts if p[1]]
        if pts:
            ax2.plot(*zip(*pts), style, color="k", label=label)
    ax1.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="train step time (s)",
            title=f"{args.tokens} tokens per step, {first.get('device', '')}")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set(xscale="log", xlabel="sequence length", ylabel="time gru / time ssm", title="speed-up of ssm (R2I)")
    for ax in (ax1, ax2):
        ax.set_xticks(lengths, [str(L) for L in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(IMAGE_NOTE, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "train_step.png", dpi=120)
    plt.close(fig)
    return text


def main(argv=None):
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.point:
        print("RESULT " + json.dumps(run_point(json.loads(args.point))), flush=True)
        return 0
    try:  # fail early, in one line, on a bad config
        for core in args.cores:
            configlib.parse(point_argv(args, overrides, core, args.lengths[0]))
    except configlib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"note: {IMAGE_NOTE}", flush=True)
    print(f"lengths {args.lengths}, tokens {args.tokens}, repeats {args.repeats}, warm-up {args.warmup}, "
          f"cores {args.cores}, configs {args.configs}" + (" (--quick)" if args.quick else ""), flush=True)
    if args.tokens < max(args.lengths):
        print(f"note: lengths above --tokens {args.tokens} run with batch 1 (more tokens per step)", flush=True)
    out = pathlib.Path(args.out)
    rows, start = [], time.time()
    for L in args.lengths:
        for core in args.cores:
            spec = dict(argv=point_argv(args, overrides, core, L), warmup=args.warmup, repeats=args.repeats,
                        agent=args.agent)
            t0 = time.time()
            try:
                proc = subprocess.run([sys.executable, __file__, "--point", json.dumps(spec)], capture_output=True,
                                      text=True, timeout=args.timeout)
                lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode == 0 and lines:
                    row = json.loads(lines[-1][len("RESULT "):])
                else:
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    row = dict(core=core, length=L, batch=max(1, args.tokens // L), error=tail[:300])
            except subprocess.TimeoutExpired:
                row = dict(core=core, length=L, batch=max(1, args.tokens // L), error=f"timeout {args.timeout:.0f} s")
            rows.append(row)
            if "error" in row:
                print(f"{core:>3} L={L:<5} FAILED: {row['error']}", flush=True)
            else:
                print(f"{core:>3} L={L:<5} B={row['batch']:<4} wm {row['wm_ms']:9.1f} ms"
                      + (f" | train {row['train_ms']:9.1f} ms" if "train_ms" in row else "")
                      + f" | peak {row.get('train_peak_mb', row['wm_peak_mb']):7.0f} MB"
                      + f" | point {time.time() - t0:5.1f} s", flush=True)
            write_outputs(out, args, overrides, rows, time.time() - start)  # partial results survive a stop
    text = write_outputs(out, args, overrides, rows, time.time() - start)
    print()
    print(text)
    print(f"wrote {out / 'train_step.md'}, {out / 'train_step.csv'}, {out / 'train_step.png'}", flush=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
