"""POPGym adapter (gymnasium API, popgym 1.0.x).

Observations: Discrete, MultiDiscrete and Tuple/Dict-of-Discrete parts become
concatenated float32 one-hots; Box (and MultiBinary) parts are passed through
as float32 values. Everything is concatenated, in space order, into one vector
under key ``vector``.

Actions: Discrete stays Discrete; MultiDiscrete(n_1..n_k) becomes one Discrete
of size prod(n_i), decoded mixed radix with the last component fastest; Box
actions are continuous, normalised to [-1, 1] on the agent side.

``terminated or truncated`` ends the episode and counts as terminal (R2I
treats the time limit as terminal). The adapter is ``envs/gym.py``'s with these conventions.
"""

from __future__ import annotations

from recall2imagine.envs.gym import GymEnv, flatten_multidiscrete, unflatten_multidiscrete

__all__ = ['PopGym', 'flatten_multidiscrete', 'popgym_horizon', 'popgym_ids', 'unflatten_multidiscrete']


def popgym_ids() -> list[str]:
    """All registered POPGym ids (``popgym-<Name><Easy|Medium|Hard>-v0``)."""
    import gymnasium
    import popgym  # noqa: F401  (registers the ids)

    return sorted(k for k in gymnasium.registry if k.startswith('popgym-'))


def popgym_horizon(env_id: str) -> tuple[int, str] | None:
    """(steps, what) of the longest dependency of a POPGym task: RepeatPrevious acts on the card
    ``k`` steps back; every other POPGym task is a memory task over its whole (bounded) episode."""
    import gymnasium
    import popgym  # noqa: F401

    env = gymnasium.make(env_id, disable_env_checker=True).unwrapped
    if hasattr(env, 'k'):
        return int(env.k), f'repeats the card {int(env.k)} steps back'
    for attr in ('max_episode_length', 'episode_length', 'deck_size'):
        if hasattr(env, attr):
            n = int(getattr(env, attr))
            return n, f'recalls over its whole {n}-step episode'
    return None


class PopGym(GymEnv):
    """One POPGym environment: a Gymnasium env whose observations all go to ``vector`` and whose
    time limit is terminal (module docstring)."""

    truncation_is_terminal = True
    route_images = False

    def __init__(self, env_id: str, seed: int = 0):
        import popgym  # noqa: F401  (registers the ids)

        super().__init__(env_id, seed=seed)
