"""recall2imagine: R2I (Recall to Imagine), a DreamerV3 agent with an S5 world model, in JAX."""


def load_agent(logdir, greedy=True, seed=0):
    """The agent of a training run's newest checkpoint as a callable policy (recall2imagine.evaluate)."""
    from recall2imagine.evaluate import load_agent as load

    return load(logdir, greedy=greedy, seed=seed)
