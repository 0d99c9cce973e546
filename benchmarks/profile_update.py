"""Where one agent update spends its time, arithmetic and memory, phase by phase.

  python benchmarks/profile_update.py --configs popgym popgym_main --jax.platform cpu \
      --jax.precision float32 --batch_size 4 --lengths 64 1024

For each length (one subprocess each, so their memory stays apart) the script builds the agent and a
random replay batch as `benchmarks/train_step.py` does and times, separately jitted, the phases that
`Agent.train` runs in one program:

  transfer      the replay batch from host to device (`Placement.batch`)
  wm forward    the world-model loss (encoder, S5 stack or GRU, decoder, heads, KL)
  wm backward   its gradient, minus the forward time
  wm optimiser  the optimiser update of the world model from its gradient
  imagination   the `imag_horizon`-step rollout of the prior with the actor from the posterior starts
  critic        critic loss, gradient and optimiser update on the imagined trajectory
  actor         actor loss, gradient and optimiser update (REINFORCE for discrete actions)
  full update   `Agent.train` itself: every phase in one XLA program

and, per phase: matmul GFLOP (dot and convolution products counted through the jaxpr, scans times
their length; elementwise work is not counted), the achieved GFLOP/s, XLA's own cost-analysis FLOPs
(which count a loop body once), and XLA's buffer assignment (arguments + outputs + temporaries - aliased
= the phase's peak device memory). A matmul of --peak_size squared float32 matrices gives this
machine's achievable GFLOP/s for scale. The sum of the phases differs from the full update by what
fusing them in one program saves or costs. Each length runs on the allocator `r2i-train` would
(`--jax.malloc`).
"""

import argparse
import json
import math
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from train_step import build  # noqa: E402

PHASES = (
    "transfer",
    "wm forward",
    "wm backward",
    "wm optimiser",
    "imagination",
    "critic",
    "actor",
    "full update",
)


def live_flops(closed):
    """`matmul_flops` of a ClosedJaxpr after dead-code elimination (as XLA would: e.g. the forward
    products `jax.vjp` traces in `actor_grad.grads_from_saved` whose outputs are never used)."""
    from jax._src.interpreters import partial_eval as pe

    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return matmul_flops(jaxpr)


def matmul_flops(jaxpr):
    """Floating-point operations of the dot and convolution products in `jaxpr` (a Jaxpr), counting
    each scan's body `length` times and the costlier branch of a cond; a complex product counts 4
    real ones."""
    from jax.extend import core

    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        out = eqn.outvars[0].aval if eqn.outvars else None
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            k = math.prod(lhs.shape[i] for i in contract)
            complex_ = "complex" in str(lhs.dtype) or "complex" in str(eqn.invars[1].aval.dtype)
            total += 2 * math.prod(out.shape) * k * (4 if complex_ else 1)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
            per_output = math.prod(rhs.shape) // rhs.shape[spec[0]]
            total += 2 * math.prod(out.shape) * per_output // eqn.params["feature_group_count"]
        subs = []
        for value in eqn.params.values():
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(v, core.ClosedJaxpr):
                    subs.append(v.jaxpr)
                elif isinstance(v, core.Jaxpr):
                    subs.append(v)
        if name == "cond":
            total += max((matmul_flops(s) for s in subs), default=0)
        else:
            times = eqn.params["length"] if name == "scan" else 1
            total += times * sum(matmul_flops(s) for s in subs)
    return total


def peak_gflops(jax, size, repeats=5):
    """Best GFLOP/s of a [size, size] x [size, size] float32 matmul on the default device."""
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = min(_seconds(lambda: jax.block_until_ready(f(a))) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def phase_functions(agent, jax):
    """{phase: (function, args)} with every phase jitted separately, in `Agent._train_impl`'s order;
    the arguments come from running the earlier phases once."""
    import equinox as eqx

    from recall2imagine import actor_grad
    from recall2imagine import agent as agentlib
    from recall2imagine.world_model import world_model_loss

    setup, state, cfg = agent.setup, agent.state, agent.cfg
    sg = jax.lax.stop_gradient
    wm_params, wm_static = eqx.partition(state.wm, eqx.is_array)
    actor_params, actor_static = eqx.partition(state.actor, eqx.is_array)
    critic_params, critic_static = eqx.partition(state.critic, eqx.is_array)

    def wm_loss(params, batch, key):
        return world_model_loss(eqx.combine(params, wm_static), batch, key, setup)

    def wm_forward(params, batch, key):
        return wm_loss(params, batch, key)[0]

    def wm_grad(params, batch, key):
        return jax.value_and_grad(lambda p: wm_loss(p, batch, key)[0])(params)

    def wm_optimiser(grads, opt_state, params):
        updates, inner = agent.wm_opt.tx.update(grads, opt_state.inner, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), opt_state._replace(inner=inner)

    def starts(params, batch, key):
        k_wm, k_start = jax.random.split(key)
        post = wm_loss(params, batch, k_wm)[1][0]
        return agentlib.imagination_starts(post, batch["is_terminal"], cfg.imag_starts, k_start)

    n_starts = agentlib.n_imagination_starts(cfg.imag_starts, cfg.batch_size * cfg.batch_length)
    reuse = agent.discrete and actor_grad.fits(cfg, n_starts, agent.actor_in, agent.dtype)

    def imagination(params, actor, start, start_cont, key):
        wm = jax.tree.map(sg, eqx.combine(params, wm_static))
        return agentlib.imagine(wm, actor, start, start_cont, key, setup, save=reuse)

    def critic(params, opt_state, traj):
        loss = lambda p: agentlib.critic_loss(eqx.combine(p, critic_static), state.slow_critic, traj, setup)
        step = agent.critic_opt.step(loss, params, opt_state)
        return step.params, step.state, step.aux

    def actor(params, opt_state, traj, saved, value, ret):
        outs_of = actor_grad.actor_outputs(actor_static, traj, saved, cfg.actor.inputs)
        loss = lambda p: agentlib.actor_loss(outs_of(p), traj, value, ret, state.retnorm, setup)
        step = agent.actor_opt.step(loss, params, opt_state)
        return step.params, step.state, step.aux[0]

    return dict(
        wm_forward=wm_forward,
        wm_grad=wm_grad,
        wm_optimiser=wm_optimiser,
        starts=starts,
        imagination=imagination,
        critic=critic,
        actor=actor,
        params=(wm_params, actor_params, critic_params),
    )


def _xla_peak_mb(compiled):
    """XLA's buffer assignment of a compiled program: arguments + outputs + temporaries - aliased, MB."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    size = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    return (size - mem.alias_size_in_bytes) / 2**20


def run_length(spec):
    """One length: {phase: {ms, gflop, xla_gflop, mem_mb}} and the machine's matmul peak."""
    from recall2imagine import allocator, config as configlib

    allocator.reexec(configlib.parse(spec["argv"]).jax.malloc)  # the allocator r2i-train runs with
    cfg, jax, agent, batch = build(spec["argv"])
    import equinox as eqx

    from recall2imagine import agent as agentlib

    if not agent.discrete:
        raise SystemExit("profile_update.py profiles discrete-action tasks (REINFORCE actor) only")
    fns = phase_functions(agent, jax)
    wm_params, actor_params, critic_params = fns.pop("params")
    state = agent.state
    key = jax.random.PRNGKey(1)
    dev_batch = jax.block_until_ready(agent.place.batch(batch))
    repeats = spec["repeats"]

    def measure(fn, *args):
        """(median seconds, matmul GFLOP, XLA GFLOP, XLA peak MB, outputs) of jit(fn)(*args)."""
        flops = live_flops(jax.make_jaxpr(fn)(*args))
        compiled = jax.jit(fn).lower(*args).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        peak = _xla_peak_mb(compiled)
        out = jax.block_until_ready(compiled(*args))
        times = [_seconds(lambda: jax.block_until_ready(compiled(*args))) for _ in range(repeats)]
        return statistics.median(times), flops / 1e9, (cost or {}).get("flops", 0) / 1e9, peak, out

    res = {}

    def record(name, t, gflop=None, xla=None, mem=None):
        res[name] = dict(ms=1e3 * t, gflop=gflop, xla_gflop=xla, mem_mb=mem)

    t = statistics.median(
        _seconds(lambda: jax.block_until_ready(agent.place.batch(batch))) for _ in range(repeats)
    )
    record("transfer", t)
    t_fwd, g_fwd, x_fwd, m_fwd, _ = measure(fns["wm_forward"], wm_params, dev_batch, key)
    record("wm forward", t_fwd, g_fwd, x_fwd, m_fwd)
    t_grad, g_grad, x_grad, m_grad, (_, grads) = measure(fns["wm_grad"], wm_params, dev_batch, key)
    record("wm backward", t_grad - t_fwd, g_grad - g_fwd, x_grad - x_fwd, m_grad)
    t, g, x, m, _ = measure(fns["wm_optimiser"], grads, state.wm_opt, wm_params)
    record("wm optimiser", t, g, x, m)
    start, start_cont = jax.block_until_ready(jax.jit(fns["starts"])(wm_params, dev_batch, key))
    actor = eqx.combine(actor_params, eqx.filter(state.actor, eqx.is_array, inverse=True))
    t, g, x, m, (traj, saved) = measure(fns["imagination"], wm_params, actor, start, start_cont, key)
    record("imagination", t, g, x, m)
    t, g, x, m, (_, _, (value, ret)) = measure(fns["critic"], critic_params, state.critic_opt, traj)
    record("critic", t, g, x, m)
    t, g, x, m, _ = measure(fns["actor"], actor_params, state.actor_opt, traj, saved, value, ret)
    record("actor", t, g, x, m)

    # the full update: Agent.train (donates its state, so it runs on its own copies)
    full_fn = agent._train_impl
    args = (key, state, dev_batch)
    flops = live_flops(jax.make_jaxpr(lambda k, s, b: full_fn(k, s, b))(*args))
    peak = _xla_peak_mb(jax.jit(full_fn, donate_argnums=(1, 2)).lower(*args).compile())
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        jax.block_until_ready(agent.train(batch, jax.random.PRNGKey(i)))
        jax.block_until_ready(agent.state)
        if i:
            times.append(time.perf_counter() - t0)
    import resource

    record("full update", statistics.median(times), flops / 1e9, mem=peak)
    res["full update"]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(
        batch=cfg.batch_size,
        length=cfg.batch_length,
        imag_starts=agentlib.n_imagination_starts(cfg.imag_starts, cfg.batch_size * cfg.batch_length),
        imag_horizon=cfg.imag_horizon,
        core=cfg.rssm.core,
        parallel=bool(agent.state.wm.rssm.parallel),
        device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        peak_gflops=peak_gflops(jax, spec["peak_size"]),
        phases=res,
    )


def markdown(r):
    f = lambda x, d=1: "" if x is None else f"{x:.{d}f}"
    full = r["phases"]["full update"]["ms"]
    lines = [
        f"batch {r['batch']} x length {r['length']} ({r['core']}, parallel scan {r['parallel']}; "
        f"imagination {r['imag_starts']} starts x {r['imag_horizon']} steps); {r['device']}; "
        f"matmul peak {r['peak_gflops']:.0f} GFLOP/s",
        "",
        "| phase | ms | share of full update | matmul GFLOP | GFLOP/s | % of peak | XLA GFLOP | XLA peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = 0.0
    for name in PHASES:
        p = r["phases"][name]
        rate = p["gflop"] / (p["ms"] / 1e3) if p["gflop"] and p["ms"] > 0 else None
        if name != "full update":
            total += p["ms"]
        lines.append(
            f"| {name} | {p['ms']:.1f} | {100 * p['ms'] / full:.0f}% | {f(p['gflop'], 2)} | {f(rate)} | "
            f"{f(rate and 100 * rate / r['peak_gflops'], 0)} | {f(p['xla_gflop'], 2)} | {f(p['mem_mb'], 0)} |"
        )
    lines.append(f"| sum of the phases | {total:.1f} | {100 * total / full:.0f}% | | | | | |")
    lines.append("")
    lines.append(f"Peak RSS of the process: {r['phases']['full update']['peak_rss_mb']:.0f} MB.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Per-phase time, matmul FLOPs and memory of one agent update. "
        "Unrecognised --key value pairs are config overrides.",
    )
    p.add_argument("--configs", nargs="+", default=["popgym", "popgym_main"])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per phase (median)")
    p.add_argument("--peak_size", type=int, default=2048, help="matrix size of the peak matmul")
    p.add_argument("--out", default=str(ROOT / "logdir" / "profile_update"), help="output folder")
    p.add_argument("--point", help=argparse.SUPPRESS)
    args, overrides = p.parse_known_args(argv)
    if args.point:
        print("RESULT " + json.dumps(run_length(json.loads(args.point))), flush=True)
        return
    if args.repeats < 1 or args.batch_size < 1 or any(L < 2 for L in args.lengths):
        p.error("--repeats and --batch_size must be positive and lengths at least 2")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, text = [], []
    for L in args.lengths:
        spec = dict(
            argv=["--configs", *args.configs, *overrides]
            + ["--batch_size", str(args.batch_size), "--batch_length", str(L)],
            repeats=args.repeats,
            peak_size=args.peak_size,
        )
        proc = subprocess.run(
            [sys.executable, __file__, "--point", json.dumps(spec)], capture_output=True, text=True
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"length {L} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        r = json.loads(line[-1][len("RESULT ") :])
        results.append(r)
        text.append(markdown(r))
        print(text[-1], flush=True)
    (out / "profile_update.json").write_text(json.dumps(results, indent=1))
    head = f"`python benchmarks/profile_update.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
    (out / "profile_update.md").write_text(head + "\n".join(text))
    print(f"wrote {out / 'profile_update.md'}")


if __name__ == "__main__":
    main()
