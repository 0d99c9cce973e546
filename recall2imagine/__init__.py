"""recall2imagine: R2I (Recall to Imagine), a DreamerV3 agent with an S5 world model, in JAX."""

import os

# XLA's CPU backend (jaxlib 0.10) fuses elementwise work into YNNPACK kernels that materialise
# full-size temporaries (e.g. a LayerNorm scale broadcast to [T*B, units]): an update at 4 x 1024
# holds 4.2 GB of XLA buffers with them, 3.0 GB without, at the same speed (BENCHMARKS.md, "Where an
# update's time and memory go"). Off, unless the user's XLA_FLAGS names the option; set before JAX
# creates its CPU backend, which reads XLA_FLAGS once.
_YNN_FUSIONS = "--xla_cpu_experimental_ynn_fusion_type"
if _YNN_FUSIONS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_YNN_FUSIONS}=".strip()


def load_agent(logdir, greedy=True, seed=0):
    """The agent of a training run's newest checkpoint as a callable policy (recall2imagine.evaluate)."""
    from recall2imagine.evaluate import load_agent as load

    return load(logdir, greedy=greedy, seed=seed)
