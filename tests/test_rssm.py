"""The S5 world-model state: the training scan against acting step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import debug_agent


@pytest.mark.parametrize("parallel", ["True", "False"])
def test_observe_matches_step_mode_with_resets(parallel):
    """The training pass (whole sequence, scan) equals acting step by step (obs_step) given the same
    posterior samples, including an episode reset in mid-sequence."""
    cfg, env, agent = debug_agent("--ssm.parallel", parallel, "--rssm.hidden", "8")
    rssm = agent.state.wm.rssm
    B, T, A = 2, 12, agent.act_dim
    rng = np.random.default_rng(1)
    embed = jnp.asarray(rng.normal(size=(B, T, cfg.encoder.mlp_units)), jnp.float32)
    actions = jnp.asarray(np.eye(A)[rng.integers(0, A, (B, T))], jnp.float32)
    prev_action = jnp.concatenate([jnp.zeros((B, 1, A)), actions[:, :-1]], 1)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    is_first[0, 5] = is_first[1, 9] = True
    post, prior = rssm.observe(
        embed, prev_action, jnp.asarray(is_first), rssm.initial((B,)), jax.random.PRNGKey(3)
    )
    latent = rssm.initial((B,))
    action = jnp.zeros((B, A))
    for t in range(T):
        # reset as acting does, then feed the posterior sample the training pass drew
        keep = lambda x, y: jnp.where(is_first[:, t].reshape((B,) + (1,) * (x.ndim - 1)), y, x)
        latent = jax.tree.map(keep, latent, rssm.initial((B,)))
        act = action * (1.0 - is_first[:, t, None])
        step = rssm.img_step(latent, act, jax.random.PRNGKey(t))
        np.testing.assert_allclose(step["deter"], post["deter"][:, t], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(step["hidden"], post["hidden"][:, t], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(step["logit"], prior["logit"][:, t], rtol=1e-4, atol=1e-4)
        latent = dict(step, stoch=post["stoch"][:, t], logit=post["logit"][:, t])
        action = actions[:, t]
