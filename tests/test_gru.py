"""The DreamerV3 GRU core (`--rssm.core gru`) and scan-mode equivalences at the world-model level."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recall2imagine import config as configlib
from recall2imagine.agent import Agent
from recall2imagine.world_model import world_model_loss
from recall2imagine.envs import make_env
from recall2imagine.nets.gru import GRURSSM
from helpers import debug_agent, random_batch

GRU_INPUTS = ["--rssm.core", "gru", "--actor.inputs", "deter,stoch", "--critic.inputs", "deter,stoch"]


def _cfg(*overrides):
    return configlib.parse(["--configs", "popgym", "debug", *overrides])


def test_gru_observe_matches_step_loop_with_resets():
    """observe (lax.scan over time) equals a Python loop of obs_step with the same keys, including a
    mid-sequence reset and a window that continues from a non-initial start latent."""
    cfg = _cfg("--rssm.core", "gru")
    E, A, B, T = 16, 4, 2, 12
    rssm = GRURSSM(cfg, E, A, False, key=jax.random.PRNGKey(0))
    # a non-trivial learned initial state, so that resets are visible
    rssm = eqx.tree_at(
        lambda m: m.initial_deter, rssm, jax.random.normal(jax.random.PRNGKey(1), (cfg.rssm.deter,))
    )
    rng = np.random.default_rng(1)
    embed = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    actions = jnp.asarray(np.eye(A)[rng.integers(0, A, (B, T))], jnp.float32)
    prev_action = jnp.concatenate([jnp.asarray(np.eye(A)[[1, 2]], jnp.float32)[:, None], actions[:, :-1]], 1)
    is_first = np.zeros((B, T), bool)
    is_first[0, 0] = True  # element 1 continues from `start`
    is_first[0, 5] = is_first[1, 9] = True
    start = rssm.initial((B,))
    start = dict(
        start,
        deter=jnp.asarray(rng.normal(size=(B, cfg.rssm.deter)), jnp.float32),
        stoch=jnp.asarray(
            np.eye(cfg.rssm.classes)[rng.integers(0, cfg.rssm.classes, (B, cfg.rssm.stoch))], jnp.float32
        ),
    )
    key = jax.random.PRNGKey(3)
    post, prior = eqx.filter_jit(GRURSSM.observe)(rssm, embed, prev_action, jnp.asarray(is_first), start, key)
    assert set(post) == {"stoch", "logit", "deter"}
    assert post["deter"].shape == (B, T, cfg.rssm.deter)
    assert post["stoch"].shape == prior["logit"].shape == (B, T, cfg.rssm.stoch, cfg.rssm.classes)
    keys = jax.random.split(key, T)
    obs_step, img_step = eqx.filter_jit(GRURSSM.obs_step), eqx.filter_jit(GRURSSM.img_step)
    fresh = img_step(rssm, rssm.initial((1,)), jnp.zeros((1, A)), keys[0])["deter"][0]
    latent = start
    for t in range(T):
        step = obs_step(rssm, latent, prev_action[:, t], embed[:, t], jnp.asarray(is_first[:, t]), keys[t])
        np.testing.assert_allclose(step["deter"], post["deter"][:, t], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(step["logit"], post["logit"][:, t], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(step["stoch"], post["stoch"][:, t], atol=1e-5)  # same samples
        np.testing.assert_allclose(
            rssm.prior_logit(step["deter"]), prior["logit"][:, t], rtol=1e-4, atol=1e-4
        )
        # the prior path (img_step after an explicit reset) gives the same deterministic state
        keep = lambda x, y: jnp.where(is_first[:, t].reshape((B,) + (1,) * (x.ndim - 1)), y, x)
        reset = jax.tree.map(keep, latent, rssm.initial((B,)))
        img = img_step(rssm, reset, prev_action[:, t] * (1.0 - is_first[:, t, None]), keys[t])
        np.testing.assert_allclose(img["deter"], post["deter"][:, t], rtol=1e-4, atol=1e-5)
        for b in np.flatnonzero(is_first[:, t]):  # a reset forgets everything before it
            np.testing.assert_allclose(post["deter"][b, t], fresh, rtol=1e-4, atol=1e-5)
        latent = dict(step, stoch=post["stoch"][:, t])
    # without the reset, element 0 would have continued differently
    assert not np.allclose(post["deter"][0, 5], post["deter"][0, 4])


@pytest.mark.parametrize("core", ["ssm", "gru"])
def test_both_cores_train(core):
    extra = GRU_INPUTS if core == "gru" else []
    cfg, env, agent = debug_agent(*extra)
    assert type(agent.state.wm.rssm).__name__ == {"ssm": "RSSM", "gru": "GRURSSM"}[core]
    batch = random_batch(cfg, env, agent.act_dim)
    before = jax.tree.map(np.asarray, agent.state.wm)
    for i in range(2):
        metrics = jax.device_get(agent.train(batch, jax.random.PRNGKey(i)))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    after = jax.tree.map(np.asarray, agent.state.wm)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    obs = env.reset()
    action, state = agent.policy({k: np.stack([v, v]) for k, v in obs.items()}, None, jax.random.PRNGKey(0))
    assert action.shape == (2, agent.act_dim) and np.allclose(action.sum(-1), 1)
    assert ("hidden" in state[0]) == (core == "ssm")


def test_gru_rejects_hidden_input_and_unknown_core():
    from recall2imagine.config import ConfigError

    cfg = _cfg("--rssm.core", "gru")  # popgym asks for (stoch, hidden) as actor/critic inputs
    env = make_env(cfg.task, seed=0)
    with pytest.raises(ValueError, match="--actor.inputs deter,stoch --critic.inputs deter,stoch"):
        Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="not one of: ssm, gru"):
        _cfg("--rssm.core", "lstm")


def test_wm_loss_parallel_equals_sequential():
    """world_model_loss with the associative scan and with lax.scan: same loss and gradients."""
    results = []
    for parallel in ("True", "False"):
        cfg, env, agent = debug_agent("--ssm.parallel", parallel)
        assert agent.state.wm.rssm.parallel == (parallel == "True")
        batch = {k: jnp.asarray(v) for k, v in random_batch(cfg, env, agent.act_dim, seed=2).items()}
        params, static = eqx.partition(agent.state.wm, eqx.is_array)

        @eqx.filter_jit
        def loss_and_grad(params):
            fn = lambda p: world_model_loss(eqx.combine(p, static), batch, jax.random.PRNGKey(5), agent.setup)
            (loss, (_, metrics)), grads = jax.value_and_grad(fn, has_aux=True)(params)
            return loss, metrics, grads

        results.append((params, *loss_and_grad(params)))
    (p1, l1, m1, g1), (p2, l2, m2, g2) = results
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(a, b)  # same initial parameters
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, atol=1e-5, err_msg=k)
    leaves1, leaves2 = jax.tree.leaves(g1), jax.tree.leaves(g2)
    assert len(leaves1) == len(leaves2) > 0
    for a, b in zip(leaves1, leaves2):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * max(np.abs(b).max(), 1e-3))
    assert max(np.abs(np.asarray(g)).max() for g in leaves1) > 0
