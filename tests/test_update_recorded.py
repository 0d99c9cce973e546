"""Speed and memory work keeps the algorithm: the losses and the new actor and critic parameters of
one update, on a fixed agent state and batch, equal the values recorded from the code before that
work (commit 0e66ed8) within 1e-5 (BENCHMARKS.md, "Where an update's time and memory go").

Regenerate RECORDED only for a deliberate change of the algorithm, never to make a speed change pass:
`python tests/test_update_recorded.py` prints the current values.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from helpers import debug_agent, random_batch
from recall2imagine.world_model import world_model_loss

RECORDED = {
    'actor_loss': -0.047742582857608795,
    'cont_loss': 0.6801670789718628,
    'critic_loss': 3.465217113494873,
    'critic_value': 0.1787375658750534,
    'dyn_loss': 1.1563398838043213,
    'model_grad_sum_abs': 458.89111328125,
    'model_loss': 11.206223487854004,
    'new_actor_sum_abs': 118.26255798339844,
    'new_critic_sum_abs': 389.27252197265625,
    'policy_entropy': 1.1932260990142822,
    'rep_loss': 1.1563398838043213,
    'reward_loss': 5.522706985473633,
    'vector_loss': 4.309545993804932,
}


def _values():
    """{name: float} of one world-model loss and one actor-critic step from a fixed state."""
    cfg, env, agent = debug_agent(
        "--imag_horizon", "4", "--critic.outscale", "1.0", "--reward_head.outscale", "1.0"
    )
    batch = random_batch(cfg, env, agent.act_dim, terminal_rate=0.2)
    state = agent.state
    wm_params, wm_static = eqx.partition(state.wm, eqx.is_array)

    def wm_loss(params):
        return world_model_loss(eqx.combine(params, wm_static), batch, jax.random.PRNGKey(1), agent.setup)

    (loss, (post, metrics)), grads = jax.jit(jax.value_and_grad(wm_loss, has_aux=True))(wm_params)
    out = {"model_loss": loss, "model_grad_sum_abs": sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))}
    out.update({k: v for k, v in metrics.items() if k.endswith("_loss")})
    start = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), post)
    start_cont = 1.0 - jnp.asarray(batch["is_terminal"]).reshape(-1).astype(jnp.float32)
    new, ac = jax.jit(agent._actor_critic)(state, start, start_cont, jax.random.PRNGKey(2))
    out.update({k: ac[k] for k in ("actor_loss", "critic_loss", "critic_value", "policy_entropy")})
    for name in ("actor", "critic"):
        leaves = jax.tree.leaves(eqx.filter(getattr(new, name), eqx.is_array))
        out[f"new_{name}_sum_abs"] = sum(jnp.abs(x).sum() for x in leaves)
    return {k: float(v) for k, v in out.items()}


def test_update_equals_recorded_values():
    got = _values()
    assert set(got) == set(RECORDED), sorted(set(got) ^ set(RECORDED))
    for name, want in RECORDED.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


if __name__ == "__main__":
    for k, v in sorted(_values().items()):
        print(f"    {k!r}: {v!r},")
