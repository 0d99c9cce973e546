"""Train-step speed of R2I (`--rssm.core ssm`) vs DreamerV3 (`--rssm.core gru`) over sequence length.

  python benchmarks/train_step.py --quick                      # CPU check, a few minutes
  python benchmarks/train_step.py --configs popgym --jax.platform gpu --out bench/gpu
  python benchmarks/train_step.py --configs mmaze mmaze_small --obs image --quick   # 64x64 images, CPU
  python benchmarks/train_step.py --configs popgym popgym_main --jax.platform cpu --jax.precision float32 \
      --batch_size 4 --lengths 64 1024 --targets                # the issue's absolute CPU targets

For each sequence length L, observation kind and core, one fresh subprocess builds the agent with
batch size tokens // L (tokens per step constant) or --batch_size, compiles, and times
  * the world-model train step: loss, gradients and model_opt update (world_model_loss + wm_opt);
  * the full agent train step: Agent.train (world model, imagination, actor, critic).
Warm-up calls are not in the medians; the first call of each (compilation included, backend start-up
and model construction not) is reported separately as the first-update time. Peak memory per point
comes from the JAX device allocator (memory_stats, peak_bytes_in_use) where the backend has one, else
from the process's max RSS; the subprocess per point keeps these peaks separate.

Observations (--obs):
  * vector (default): the observation space and a random batch of the config's task (popgym), as
    before; outputs train_step.md / .csv / .png.
  * image: a 64x64x3 uint8 `image` key and 6 discrete actions (Memory Maze's spaces, without
    creating the environment), random uint8 batch. The config (--configs) must select the key with
    its CNN encoder and decoder (encoder/decoder.cnn_keys), e.g. `--configs mmaze mmaze_small`;
    otherwise the script stops with a message. Outputs train_step_image.md / .csv / .png.
  * both: every point for vector and for image. One config cannot select both, so the image points
    add `--encoder.cnn_keys image --decoder.cnn_keys image --encoder.mlp_keys $^ --decoder.mlp_keys $^`
    to it: the same model with the CNN encoder/decoder in place of the MLP ones. Outputs
    train_step_vector.md/.csv, train_step_image.md/.csv and one train_step.png with both.

--targets prints (and appends to the Markdown) the issue's absolute targets for the ssm core with
vector observations: median full update <= 0.7 s at batch 4 x 64 and <= 11 s at 4 x 1024, first
update (compilation included) <= 60 s at those points; they were set for `--configs popgym
popgym_main` in float32 on the 2-core CPU. Further `--key value` flags are config overrides applied
to every point (e.g. `--rssm.deter 256`).
"""

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))  # random_batch beside this script, also when loaded by path

from random_batch import rewards_flags_actions, vector_obs  # noqa: E402
from recall2imagine import config as configlib  # noqa: E402  (light: no JAX import)

FULL_LENGTHS = [64, 128, 256, 512, 1024, 2048, 4096]
QUICK = dict(lengths=[64, 256, 1024], tokens=1024, repeats=3, warmup=2)
FULL = dict(lengths=FULL_LENGTHS, tokens=4096, repeats=10, warmup=2)
CORES = ("ssm", "gru")
OBS_KINDS = ("vector", "image")
IMAGE_KEY, IMAGE_SHAPE, IMAGE_ACTIONS = "image", (64, 64, 3), 6  # Memory Maze's spaces
IMAGE_KEYS = [
    "--encoder.cnn_keys",
    IMAGE_KEY,
    "--decoder.cnn_keys",
    IMAGE_KEY,
    "--encoder.mlp_keys",
    "$^",
    "--decoder.mlp_keys",
    "$^",
]  # image points of --obs both
# (what, batch, length, result key, limit in seconds): the targets for the ssm core, vector obs
TARGETS = (
    ("median full update", 4, 64, "train_ms", 0.7),
    ("median full update", 4, 1024, "train_ms", 11.0),
    ("first update (compile incl.)", 4, 64, "train_first_s", 60.0),
    ("first update (compile incl.)", 4, 1024, "train_first_s", 60.0),
)
TARGET_CONDITIONS = "`--configs popgym popgym_main`, float32, CPU (2 cores), vector observations"


def _bool(text):
    if str(text) not in ("True", "False"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return str(text) == "True"


def parse_args(argv):
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description="World-model and agent train-step time of the ssm (R2I) and gru (DreamerV3) cores "
        "over sequence length, at constant tokens per step (or a fixed --batch_size). "
        "Unrecognised --key value pairs are config overrides.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"CPU check: lengths {QUICK['lengths']}, tokens {QUICK['tokens']}, "
        f"repeats {QUICK['repeats']} (explicit flags still win)",
    )
    p.add_argument("--lengths", type=int, nargs="+", help=f"sequence lengths (default {FULL['lengths']})")
    p.add_argument("--tokens", type=int, help=f"batch_size * length per step (default {FULL['tokens']})")
    p.add_argument(
        "--batch_size", type=int, help="fixed batch size at every length, instead of tokens // length"
    )
    p.add_argument(
        "--obs",
        default="vector",
        choices=["vector", "image", "both"],
        help="observations: the config task's vectors (default), 64x64x3 uint8 images "
        "(the config must select them with its CNN keys), or both",
    )
    p.add_argument(
        "--configs", nargs="+", default=["popgym", "cpu"], help="config blocks (default: popgym cpu)"
    )
    p.add_argument("--cores", nargs="+", default=list(CORES), choices=CORES)
    p.add_argument(
        "--parallel",
        default="auto",
        choices=["auto", "True", "False"],
        help="ssm.parallel: associative (True) or sequential (False) scan; auto: parallel off CPU",
    )
    p.add_argument("--repeats", type=int, help=f"timed calls per point (default {FULL['repeats']})")
    p.add_argument(
        "--warmup", type=int, help=f"untimed calls per point, compilation included (default {FULL['warmup']})"
    )
    p.add_argument(
        "--agent", type=_bool, default=True, help="also time the full agent train step (True|False)"
    )
    p.add_argument(
        "--targets",
        action="store_true",
        help="compare the ssm core with the issue's absolute targets ("
        + TARGET_CONDITIONS
        + "): median full update <= 0.7 s at 4 x 64, <= 11 s at 4 x 1024, first update <= 60 s",
    )
    p.add_argument(
        "--out",
        default=str(ROOT / "logdir" / "bench_train_step"),
        help="output folder (default logdir/bench_train_step in the repository, git-ignored)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per point")
    p.add_argument("--point", help=argparse.SUPPRESS)  # internal: run one point, print its JSON
    args, overrides = p.parse_known_args(argv)
    base = QUICK if args.quick else FULL
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if any(L < 1 for L in args.lengths) or args.tokens < 1 or args.repeats < 1 or args.warmup < 1:
        p.error("lengths, tokens, repeats and warmup must be positive (warmup >= 1 covers compilation)")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch_size must be positive")
    return args, overrides


def obs_kinds(args):
    return list(OBS_KINDS) if args.obs == "both" else [args.obs]


def batch_of(args, length):
    return args.batch_size if args.batch_size is not None else max(1, args.tokens // length)


def point_argv(args, overrides, core, length, obs="vector"):
    """Config arguments of one point."""
    keys = IMAGE_KEYS if obs == "image" and args.obs == "both" else []
    argv = [
        "--configs",
        *args.configs,
        *keys,
        *overrides,
        "--rssm.core",
        core,
        "--batch_size",
        str(batch_of(args, length)),
        "--batch_length",
        str(length),
        "--ssm.parallel",
        args.parallel,
    ]
    return argv


def check_obs(cfg, obs):
    """None if the config can encode and decode `obs` observations, else the reason."""
    if obs == "image":
        bad = [
            f"{w}.cnn_keys {getattr(cfg, w).cnn_keys!r}"
            for w in ("encoder", "decoder")
            if not re.fullmatch(str(getattr(cfg, w).cnn_keys), IMAGE_KEY)
        ]
        if bad:
            return (
                f"--obs image: the config's {' and '.join(bad)} do not select the {IMAGE_KEY!r} key "
                f"({'x'.join(map(str, IMAGE_SHAPE))} uint8); use an image config such as "
                f"`--configs mmaze mmaze_small`, add `--encoder.cnn_keys image --decoder.cnn_keys image`, "
                f"or use --obs both (which adds them to the image points)"
            )
    else:
        bad = [f"{w}.mlp_keys" for w in ("encoder", "decoder") if str(getattr(cfg, w).mlp_keys) == "$^"]
        if bad:
            return (
                f"--obs vector: the config's {' and '.join(bad)} are '$^' (no vector keys; an image "
                f"config?): use --obs image, or a vector task config such as `--configs popgym cpu`"
            )
    return None


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


def build(argv, obs_kind="vector"):
    """(cfg, jax, agent, batch) for config arguments `argv`: the agent on the config's task (vector)
    or on Memory Maze's image spaces (image), and a random replay batch [B, T] of its spaces."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    cfg = configlib.parse(argv)
    if cfg.rssm.core == "gru":
        cfg = configlib.parse(argv + gru_inputs(cfg))
    import jax

    if cfg.jax.platform != "auto":
        jax.config.update("jax_platforms", {"gpu": "cuda"}.get(cfg.jax.platform, cfg.jax.platform))
    import numpy as np

    from recall2imagine.agent import Agent

    rng = np.random.default_rng(0)
    B, T = cfg.batch_size, cfg.batch_length
    if obs_kind == "image":  # Memory Maze's spaces, without the environment (~0.6 GB and seconds)
        from recall2imagine.envs.base import ActSpace

        obs_space, act_space = {IMAGE_KEY: (IMAGE_SHAPE, np.uint8)}, ActSpace(True, IMAGE_ACTIONS)
        agent = Agent(cfg, obs_space, act_space, jax.random.PRNGKey(0))
        batch = {IMAGE_KEY: rng.integers(0, 256, (B, T) + IMAGE_SHAPE, dtype=np.uint8)}
    else:
        from recall2imagine.envs import make_env

        env = make_env(cfg.task, seed=0)
        agent = Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(0))
        batch = vector_obs(rng, env.reset(), B, T)
        env.close()
    batch.update(rewards_flags_actions(rng, B, T, agent.act_dim))
    batch["is_first"][:, 0] = True
    return cfg, jax, agent, batch


def run_point(spec):
    from recall2imagine import allocator

    allocator.reexec(configlib.parse(spec["argv"]).jax.malloc)  # the allocator r2i-train runs with
    obs_kind = spec.get("obs", "vector")
    cfg, jax, agent, batch = build(spec["argv"], obs_kind)
    import equinox as eqx
    import optax

    from recall2imagine.agent import n_imagination_starts
    from recall2imagine.devices import resolve_precision
    from recall2imagine.world_model import world_model_loss

    B, T = cfg.batch_size, cfg.batch_length

    def wm_step(key, wm, opt_state, batch):
        params, static = eqx.partition(wm, eqx.is_array)
        loss_fn = lambda p: world_model_loss(eqx.combine(p, static), batch, key, agent.setup)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, inner = agent.wm_opt.tx.update(grads, opt_state.inner, params)
        new = eqx.combine(optax.apply_updates(params, updates), static)
        return new, opt_state._replace(inner=inner), loss

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

    res = dict(
        obs=obs_kind,
        core=cfg.rssm.core,
        length=T,
        batch=B,
        tokens=B * T,
        parallel=bool(agent.state.wm.rssm.parallel),
        device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        precision=resolve_precision(cfg.jax.precision),
        actor_inputs=",".join(cfg.actor.inputs),
        encoder="+".join(n for n in ("cnn", "mlp") if getattr(agent.state.wm.encoder, n) is not None),
        imag_starts=n_imagination_starts(cfg.imag_starts, B * T),
        imag_horizon=cfg.imag_horizon,
    )
    if spec.get("wm", True):  # False: the full update alone (its peak memory unmixed, vs_official.py)
        # Commit the initial state to the train device: the optimiser state from init is uncommitted, the
        # step's outputs are committed, and that difference alone made the second call compile again.
        wm = jax.tree.map(lambda x: x, agent.state.wm)
        dev = agent.train_devices[0]
        carry = [
            jax.tree.map(lambda x: jax.device_put(x, dev) if eqx.is_array(x) else x, tree)
            for tree in (wm, agent.wm_opt.init(eqx.filter(wm, eqx.is_array)))
        ]
        dev_batch = jax.device_put(batch)

        def one_wm(key):
            carry[0], carry[1], loss = wm_step(key, carry[0], carry[1], dev_batch)
            jax.block_until_ready((carry, loss))

        times, first = timed(one_wm)
        res.update(wm_ms=1e3 * statistics.median(times), wm_min_ms=1e3 * min(times), wm_first_s=first)
        res["wm_peak_mb"], res["mem_source"] = _peak_memory(jax)
        del carry[:]
    if spec["agent"]:

        def one_train(key):
            jax.block_until_ready(agent.train(batch, key))
            jax.block_until_ready(agent.state)

        times, first = timed(one_train)
        res.update(
            train_ms=1e3 * statistics.median(times), train_min_ms=1e3 * min(times), train_first_s=first
        )
        res["train_peak_mb"] = _peak_memory(jax)[0]
    return res


# ---------------------------------------------------------------- driver


def _fmt(x, digits=1):
    return "" if x is None else f"{x:.{digits}f}"


def _ratio(a, b):
    return a / b if a and b else None


def _s(ms):
    return None if ms is None else ms / 1e3


def _first(r):
    """First update (compilation included): the full agent step's, else the world model's, marked."""
    if r.get("train_first_s") is not None:
        return _fmt(r["train_first_s"], 2)
    return f"{r['wm_first_s']:.2f} (wm)" if r.get("wm_first_s") is not None else ""


def file_names(args):
    """{obs kind: stem of its .md/.csv}, and the PNG's name."""
    if args.obs == "vector":
        return {"vector": "train_step"}, "train_step.png"
    if args.obs == "image":
        return {"image": "train_step_image"}, "train_step_image.png"
    return {k: f"train_step_{k}" for k in OBS_KINDS}, "train_step.png"


def target_rows(args, rows):
    """[(what, point, ssm value s, gru value s, limit s, result)] for the issue's targets."""
    by = {
        (r["core"], r["batch"], r["length"]): r
        for r in rows
        if "error" not in r and r.get("obs", "vector") == "vector"
    }
    out = []
    for what, b, L, key, limit in TARGETS:
        s, g = by.get(("ssm", b, L)), by.get(("gru", b, L))
        conv = _s if key.endswith("_ms") else (lambda x: x)
        sv = conv(s.get(key)) if s else None
        gv = conv(g.get(key)) if g else None
        if sv is None:
            result = "not measured" + (" (--agent False)" if s and not args.agent else "")
        else:
            result = "pass" if sv <= limit else "FAIL"
        out.append((what, f"{b} x {L}", sv, gv, limit, result))
    return out


def target_text(args, rows):
    trs = target_rows(args, rows)
    lines = [
        f"Targets (ssm core; set for {TARGET_CONDITIONS}; gru for reference):",
        "",
        "| target | batch x length | ssm s | limit s | result | gru s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for what, point, sv, gv, limit, result in trs:
        lines.append(f"| {what} | {point} | {_fmt(sv, 2)} | <= {limit:g} | {result} | {_fmt(gv, 2)} |")
    ok = [r for r in rows if "error" not in r and r.get("obs", "vector") == "vector"]
    notes = []
    if "popgym" not in args.configs or "popgym_main" not in args.configs:
        notes.append(f"configs `{' '.join(args.configs)}` are not `popgym popgym_main`")
    if ok and not ok[0].get("device", "").startswith("cpu"):
        notes.append(f"device {ok[0].get('device')} is not the CPU")
    if ok and ok[0].get("precision") != "float32":
        notes.append(f"precision {ok[0].get('precision')} is not float32")
    if "vector" not in obs_kinds(args):
        notes.append("no vector-observation points (--obs image)")
    if notes:
        lines += ["", "Note: the conditions differ from the targets': " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def markdown(args, overrides, obs, rows, elapsed):
    by = {(r["core"], r["length"]): r for r in rows if "error" not in r}
    lengths = sorted({r["length"] for r in rows})
    first = next(iter(by.values()), {})
    if args.batch_size is not None:
        sizing = f"batch fixed at {args.batch_size} (--batch_size; tokens per step = batch x length)"
    else:
        sizing = f"tokens per step {args.tokens} (batch = tokens // length)"
    if obs == "image":
        obs_line = (
            f"observations: {IMAGE_KEY} {'x'.join(map(str, IMAGE_SHAPE))} uint8, {IMAGE_ACTIONS} discrete "
            f"actions (Memory Maze's spaces, no environment), random batch; encoder {first.get('encoder', '?')}"
            + (" (--obs both: the config plus `" + " ".join(IMAGE_KEYS) + "`)" if args.obs == "both" else "")
        )
    else:
        obs_line = (
            f"observations: the config task's vectors, random batch; encoder {first.get('encoder', '?')}"
        )
    lines = [
        f"# Train-step time: R2I (ssm) vs DreamerV3 (gru), {obs} observations",
        "",
        f"- {obs_line}",
        f"- configs: `{' '.join(args.configs)}`"
        + (f", overrides `{' '.join(overrides)}`" if overrides else ""),
        f"- device: {first.get('device', '?')}, precision {first.get('precision', '?')}, "
        f"ssm parallel scan: {first.get('parallel', '?')} (--parallel {args.parallel})",
        f"- {sizing}; lengths {' '.join(map(str, args.lengths))}"
        + (
            " (--quick subset; the full set is " + " ".join(map(str, FULL_LENGTHS)) + ")"
            if args.quick and args.lengths != FULL_LENGTHS
            else ""
        ),
        f"- times: median of {args.repeats} timed calls after {args.warmup} warm-up calls (compilation excluded)"
        + (" (--quick)" if args.quick else "")
        + "; `first` is the first full update, compilation included "
        "(`(wm)`: the world-model step's, with --agent False)",
        f"- gru actor/critic inputs: {by.get(('gru', lengths[0]), {}).get('actor_inputs', '-') if lengths else '-'}"
        f"; ssm: {by.get(('ssm', lengths[0]), {}).get('actor_inputs', '-') if lengths else '-'}",
        "- full agent step imagines from "
        + " / ".join(sorted({str(r["imag_starts"]) for r in rows if "imag_starts" in r}, key=int) or ["?"])
        + f" posterior states (`imag_starts`, capped at batch x length) x {first.get('imag_horizon', '?')} steps",
        f"- peak memory: {first.get('mem_source', '?')}, one process per point",
        f"- wall time of the benchmark: {elapsed:.0f} s",
        "",
        "| length | batch | wm ssm ms | wm gru ms | wm gru/ssm | train ssm s | train gru s | train gru/ssm "
        "| first ssm s | first gru s | mem ssm MB | mem gru MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for L in lengths:
        s, g = by.get(("ssm", L), {}), by.get(("gru", L), {})
        b = s.get("batch", g.get("batch", ""))
        mem = lambda r: _fmt(r.get("train_peak_mb", r.get("wm_peak_mb")), 0)
        lines.append(
            f"| {L} | {b} | {_fmt(s.get('wm_ms'))} | {_fmt(g.get('wm_ms'))} | "
            f"{_fmt(_ratio(g.get('wm_ms'), s.get('wm_ms')), 2)} | {_fmt(_s(s.get('train_ms')), 3)} | "
            f"{_fmt(_s(g.get('train_ms')), 3)} | {_fmt(_ratio(g.get('train_ms'), s.get('train_ms')), 2)} | "
            f"{_first(s)} | {_first(g)} | {mem(s)} | {mem(g)} |"
        )
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Failed points:"] + [f"- {r['core']} L={r['length']}: {r['error']}" for r in errors]
    text = "\n".join(lines) + "\n"
    if args.targets and obs == "vector":
        text += "\n" + target_text(args, rows)
    return text


def write_outputs(out, args, overrides, rows, elapsed):
    """Writes the .md and .csv per observation kind and the PNG; returns the Markdown texts joined."""
    out.mkdir(parents=True, exist_ok=True)
    stems, png = file_names(args)
    cols = [
        "obs",
        "core",
        "length",
        "batch",
        "tokens",
        "parallel",
        "wm_ms",
        "wm_min_ms",
        "wm_first_s",
        "train_ms",
        "train_min_ms",
        "train_first_s",
        "wm_peak_mb",
        "train_peak_mb",
        "mem_source",
        "device",
        "precision",
        "encoder",
        "actor_inputs",
        "imag_starts",
        "error",
    ]
    texts = []
    for obs, stem in stems.items():
        mine = [r for r in rows if r.get("obs", "vector") == obs]
        with open(out / f"{stem}.csv", "w") as f:
            f.write(",".join(cols) + "\n")
            for r in mine:
                f.write(",".join(str(r.get(c, "")).replace(",", ";") for c in cols) + "\n")
        text = markdown(args, overrides, obs, mine, elapsed)
        (out / f"{stem}.md").write_text(text)
        texts.append(text)
    write_png(out / png, args, rows, list(stems))
    return "\n".join(texts)


def write_png(path, args, rows, kinds):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no PNG written", flush=True)
        return
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 4.2 * len(kinds)), squeeze=False)
    sizing = f"batch {args.batch_size}" if args.batch_size is not None else f"{args.tokens} tokens per step"
    for obs, (ax1, ax2) in zip(kinds, axes):
        by = {(r["core"], r["length"]): r for r in rows if "error" not in r and r.get("obs", "vector") == obs}
        lengths = sorted({r["length"] for r in rows if r.get("obs", "vector") == obs})
        device = next(iter(by.values()), {}).get("device", "")
        for core, color in zip(CORES, ("C0", "C3")):
            for key, style, label in (("wm_ms", "-o", "world model"), ("train_ms", "--s", "full agent")):
                pts = [(L, by[(core, L)][key] / 1e3) for L in lengths if key in by.get((core, L), {})]
                if pts:
                    ax1.plot(*zip(*pts), style, color=color, label=f"{core} {label}")
        for key, style, label in (("wm_ms", "-o", "world model"), ("train_ms", "--s", "full agent")):
            pts = [
                (L, _ratio(by.get(("gru", L), {}).get(key), by.get(("ssm", L), {}).get(key))) for L in lengths
            ]
            pts = [p for p in pts if p[1]]
            if pts:
                ax2.plot(*zip(*pts), style, color="k", label=label)
        ax1.set(
            xscale="log",
            yscale="log",
            xlabel="sequence length",
            ylabel="train step time (s)",
            title=f"{obs} observations, {sizing}, {device}",
        )
        ax2.axhline(1.0, color="grey", lw=0.8)
        ax2.set(
            xscale="log",
            xlabel="sequence length",
            ylabel="time gru / time ssm",
            title=f"speed-up of ssm (R2I), {obs} observations",
        )
        for ax in (ax1, ax2):
            if lengths:
                ax.set_xticks(lengths, [str(L) for L in lengths])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.point:
        print("RESULT " + json.dumps(run_point(json.loads(args.point))), flush=True)
        return 0
    try:  # fail early, in one line, on a bad config or observations the config cannot take
        for obs in obs_kinds(args):
            for core in args.cores:
                problem = check_obs(
                    configlib.parse(point_argv(args, overrides, core, args.lengths[0], obs)), obs
                )
                if problem:
                    print(f"error: {problem}", file=sys.stderr)
                    return 2
    except configlib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizing = f"batch {args.batch_size}" if args.batch_size is not None else f"tokens {args.tokens}"
    print(
        f"lengths {args.lengths}, {sizing}, repeats {args.repeats}, warm-up {args.warmup}, "
        f"cores {args.cores}, obs {obs_kinds(args)}, configs {args.configs}"
        + (" (--quick)" if args.quick else ""),
        flush=True,
    )
    if args.batch_size is None and args.tokens < max(args.lengths):
        print(
            f"note: lengths above --tokens {args.tokens} run with batch 1 (more tokens per step)", flush=True
        )
    out = pathlib.Path(args.out)
    rows, start = [], time.time()
    for L in args.lengths:
        for obs in obs_kinds(args):
            for core in args.cores:
                spec = dict(
                    argv=point_argv(args, overrides, core, L, obs),
                    warmup=args.warmup,
                    repeats=args.repeats,
                    agent=args.agent,
                    obs=obs,
                )
                t0 = time.time()
                try:
                    proc = subprocess.run(
                        [sys.executable, __file__, "--point", json.dumps(spec)],
                        capture_output=True,
                        text=True,
                        timeout=args.timeout,
                    )
                    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                    if proc.returncode == 0 and lines:
                        row = json.loads(lines[-1][len("RESULT ") :])
                    else:
                        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                        row = dict(obs=obs, core=core, length=L, batch=batch_of(args, L), error=tail[:300])
                except subprocess.TimeoutExpired:
                    row = dict(
                        obs=obs,
                        core=core,
                        length=L,
                        batch=batch_of(args, L),
                        error=f"timeout {args.timeout:.0f} s",
                    )
                rows.append(row)
                if "error" in row:
                    print(f"{obs:>6} {core:>3} L={L:<5} FAILED: {row['error']}", flush=True)
                else:
                    print(
                        f"{obs:>6} {core:>3} L={L:<5} B={row['batch']:<4} wm {row['wm_ms']:9.1f} ms"
                        + (
                            f" | train {row['train_ms'] / 1e3:8.3f} s, first {row['train_first_s']:6.1f} s"
                            if "train_ms" in row
                            else f" | wm first {row['wm_first_s']:6.1f} s"
                        )
                        + f" | peak {row.get('train_peak_mb', row['wm_peak_mb']):7.0f} MB"
                        + f" | point {time.time() - t0:5.1f} s",
                        flush=True,
                    )
                write_outputs(
                    out, args, overrides, rows, time.time() - start
                )  # partial results survive a stop
    text = write_outputs(out, args, overrides, rows, time.time() - start)
    print()
    print(text)
    if args.targets and "vector" not in obs_kinds(args):
        print(target_text(args, rows))  # all "not measured", with the reason
    stems, png = file_names(args)
    names = [str(out / f"{s}{e}") for s in stems.values() for e in (".md", ".csv")] + [str(out / png)]
    print("wrote " + ", ".join(names), flush=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
