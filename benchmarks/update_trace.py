"""The metrics of N agent updates from a fixed seed, to check that a refactoring changes no number.

  git worktree add /tmp/before <commit>
  python benchmarks/update_trace.py --code /tmp/before --out before.json --configs popgym popgym_cpu
  python benchmarks/update_trace.py --out after.json --configs popgym popgym_cpu
  python benchmarks/update_trace.py --compare before.json after.json

`--code` imports `recall2imagine` from another checkout (default: this one); it runs on the CPU and uses only
`config.parse`, `envs.make_env`, `Agent(cfg, obs_space, act_space, key)` and `Agent.train(batch, key)`.
Each update trains on one random replay batch of the task's spaces (seeded), shifted by the update's
index along time (so every update sees other windows), with the key PRNGKey(update). Recorded: every
scalar metric of every update and, after the last one, the sum of absolute values of the world model,
actor, critic and slow critic parameters. `--compare` prints the largest relative difference per metric
and exits 1 when any exceeds --rtol.
"""

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # random_batch beside this script (numpy only)

from random_batch import rewards_flags_actions, vector_obs  # noqa: E402


def build(argv):
    """(jax, agent, batch): the agent of config arguments `argv` on its task's spaces and a random
    replay batch [B, T] of them (observations normal, actions one-hot, a few starts and terminals).
    The agent is built here rather than by `train_step.build`, which old checkouts traced with --code lack;
    the batch is `random_batch`'s, as train_step.py's."""
    import jax
    import numpy as np

    from recall2imagine import config as configlib
    from recall2imagine.agent import Agent
    from recall2imagine.envs import make_env

    cfg = configlib.parse(argv)
    jax.config.update("jax_platforms", "cpu")
    env = make_env(cfg.task, seed=0)
    agent = Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(0))
    rng, (B, T) = np.random.default_rng(0), (cfg.batch_size, cfg.batch_length)
    batch = vector_obs(rng, env.reset(), B, T)
    env.close()
    batch.update(rewards_flags_actions(rng, B, T, agent.act_dim))
    return jax, agent, batch


def trace(argv, updates):
    jax, agent, batch = build(argv)
    import equinox as eqx
    import numpy as np

    rows = []
    for i in range(updates):
        shifted = {k: np.roll(v, i, axis=1) for k, v in batch.items()}
        shifted["is_first"][:, 0] = True
        metrics = jax.device_get(agent.train(shifted, jax.random.PRNGKey(i)))
        rows.append({k: float(v) for k, v in sorted(metrics.items()) if np.ndim(v) == 0})
    sums = {
        name: float(
            sum(
                np.abs(np.asarray(x, np.float64)).sum()
                for x in jax.tree.leaves(eqx.filter(net, eqx.is_array))
            )
        )
        for name, net in zip(("wm", "actor", "critic", "slow_critic"), agent.state[:4])
    }
    return dict(argv=argv, updates=rows, param_abs_sums=sums)


def compare(a, b, rtol):
    """Largest relative difference per metric over the updates; True when all are within rtol."""
    worst = {}
    for ra, rb in zip(a["updates"], b["updates"]):
        for k in sorted(set(ra) | set(rb)):
            x, y = ra.get(k), rb.get(k)
            if x is None or y is None:
                worst[k] = float("inf")
                continue
            worst[k] = max(worst.get(k, 0.0), abs(x - y) / max(abs(x), abs(y), 1e-12))
    for k in a["param_abs_sums"]:
        x, y = a["param_abs_sums"][k], b["param_abs_sums"][k]
        worst[f"params {k} sum|.|"] = abs(x - y) / max(abs(x), abs(y), 1e-12)
    if len(a["updates"]) != len(b["updates"]):
        worst["number of updates"] = float("inf")
    for k, v in sorted(worst.items(), key=lambda kv: -kv[1]):
        print(f"{v:.2e}  {k}")
    ok = all(v <= rtol for v in worst.values())
    print(
        f"{len(a['updates'])} updates, {len(worst)} quantities: {'all' if ok else 'NOT all'} within rtol {rtol:g}"
    )
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=50)
    p.add_argument("--out", help="JSON file to write the trace to")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two traces instead")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--code", default=str(ROOT), help="checkout whose recall2imagine package to import")
    args, config = p.parse_known_args(argv)
    if args.compare:
        a, b = (json.loads(pathlib.Path(f).read_text()) for f in args.compare)
        return 0 if compare(a, b, args.rtol) else 1
    if not args.out:
        p.error("--out is required to record a trace")
    sys.path.insert(0, str(pathlib.Path(args.code).resolve()))
    import recall2imagine

    print(f"recall2imagine from {pathlib.Path(recall2imagine.__file__).parent}")
    result = trace(config, args.updates)
    result["code"] = str(pathlib.Path(recall2imagine.__file__).parent)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{args.updates} updates of {' '.join(config)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
