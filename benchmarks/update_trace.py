"""The metrics of N agent updates from a fixed seed, to check that a refactoring changes no number.

  python benchmarks/update_trace.py --updates 50 --out before.json --configs popgym popgym_cpu
  (check out the other commit, or run from its worktree)
  python benchmarks/update_trace.py --updates 50 --out after.json --configs popgym popgym_cpu
  python benchmarks/update_trace.py --compare before.json after.json

Each update trains on the same random replay batch as `train_step.py` builds, shifted by the update's
index along time (so every update sees other windows), with the key PRNGKey(update). Recorded: every
scalar metric of every update and, after the last one, the sum of absolute values of the world model,
actor, critic and slow critic parameters. `--compare` prints the largest relative difference per metric
and exits 1 when any exceeds --rtol.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def trace(argv, updates):
    from train_step import build

    cfg, jax, agent, batch = build(argv)
    import equinox as eqx
    import numpy as np

    rows = []
    for i in range(updates):
        shifted = {k: np.roll(v, i, axis=1) for k, v in batch.items()}
        shifted["is_first"][:, 0] = True
        metrics = jax.device_get(agent.train(shifted, jax.random.PRNGKey(i)))
        rows.append({k: float(v) for k, v in sorted(metrics.items()) if np.ndim(v) == 0})
    sums = {
        name: float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(eqx.filter(net, eqx.is_array))))
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
    print(f"{len(a['updates'])} updates, {len(worst)} quantities: {'all' if ok else 'NOT all'} within rtol {rtol:g}")
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=50)
    p.add_argument("--out", help="JSON file to write the trace to")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two traces instead")
    p.add_argument("--rtol", type=float, default=1e-5)
    args, config = p.parse_known_args(argv)
    if args.compare:
        a, b = (json.loads(pathlib.Path(f).read_text()) for f in args.compare)
        return 0 if compare(a, b, args.rtol) else 1
    if not args.out:
        p.error("--out is required to record a trace")
    result = trace(config, args.updates)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{args.updates} updates of {' '.join(config)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
