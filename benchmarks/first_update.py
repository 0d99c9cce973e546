"""Where the first update's time goes: tracing, XLA compilation, then each call, with the page faults
each call takes (the memory it touches fresh or again).

  python benchmarks/first_update.py --configs popgym popgym_main --jax.platform cpu --jax.precision float32 \\
      --batch_size 4 --batch_length 1024 [--calls 3]

Builds the agent and a random replay batch as `update_trace.py` does, lowers and compiles the agent's
update ahead of time, and calls the compiled program `--calls` times on the same batch. Prints seconds
per stage and, per call, the process's minor page faults (4 KiB each). Runs on the allocator `r2i-train`
would (`--jax.malloc`: TCMalloc where installed, `system` for glibc's; recall2imagine/allocator.py). Flags it
does not know are config overrides.
"""

import argparse
import resource
import sys
import time

from update_trace import build


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=3)
    args, overrides = p.parse_known_args(argv)
    from recall2imagine import allocator, config as configlib

    allocator.reexec(configlib.parse(overrides).jax.malloc)  # the allocator r2i-train runs with
    jax, agent, batch = build(overrides)
    key = agent.place.replicate(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    lowered = agent._train.lower(key, agent.state, agent.place.batch(batch))
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    print(f"allocator {'TCMalloc' if allocator.loaded() else 'system'}")
    print(f"trace and lower {t1 - t0:.1f} s, XLA compile {t2 - t1:.1f} s", flush=True)
    state = agent.state
    for i in range(args.calls):
        placed, f0, t = agent.place.batch(batch), faults(), time.perf_counter()
        state, metrics = compiled(key, state, placed)
        jax.block_until_ready(metrics)
        n = faults() - f0
        print(
            f"call {i}: {time.perf_counter() - t:.2f} s, {n} minor page faults ({n * 4 / 1024:.0f} MB)",
            flush=True,
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
