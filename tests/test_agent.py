"""The agent against slow references: lambda-returns, the actor-critic update, a train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recall2imagine.agent import act, lambda_return
from recall2imagine.nets import dists
from helpers import debug_agent, random_batch


def test_lambda_return_matches_loop():
    rng = np.random.default_rng(0)
    K, N, gamma, lam = 7, 5, 0.97, 0.95
    reward = rng.normal(size=(K, N)).astype(np.float32)
    cont = (rng.random((K, N)) > 0.2).astype(np.float32)
    value = rng.normal(size=(K + 1, N)).astype(np.float32)
    expected = np.zeros((K, N))
    for n in range(N):
        nxt = value[K, n]
        for t in reversed(range(K)):
            nxt = reward[t, n] + gamma * cont[t, n] * ((1 - lam) * value[t + 1, n] + lam * nxt)
            expected[t, n] = nxt
    got = np.asarray(lambda_return(jnp.asarray(reward), jnp.asarray(cont), jnp.asarray(value), gamma, lam))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # lam = 0 gives one-step TD targets
    got0 = np.asarray(lambda_return(jnp.asarray(reward), jnp.asarray(cont), jnp.asarray(value), gamma, 0.0))
    np.testing.assert_allclose(got0, reward + gamma * cont * value[1:], rtol=1e-5, atol=1e-5)


def test_train_step_updates_everything_and_is_finite():
    cfg, env, agent = debug_agent()
    batch = random_batch(cfg, env, agent.act_dim, resets=False)
    obs = env.reset()
    before = jax.tree.map(np.asarray, agent.state)
    for i in range(3):
        metrics = jax.device_get(agent.train(batch, jax.random.PRNGKey(i)))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    for name in ("wm", "actor", "critic", "slow_critic"):
        a = jax.tree.leaves(getattr(before, name))
        b = jax.tree.leaves(jax.tree.map(np.asarray, getattr(agent.state, name)))
        assert any(not np.array_equal(x, y) for x, y in zip(a, b)), f"{name} did not change"
    assert int(agent.state.updates) == 3
    # the policy runs on the updated parameters and returns valid one-hot actions
    obs_b = {k: np.stack([v, v]) for k, v in obs.items()}
    action, state = agent.policy(obs_b, None, jax.random.PRNGKey(0))
    assert action.shape == (2, agent.act_dim) and np.allclose(action.sum(-1), 1)


def test_float16_train_step_is_finite():
    cfg, env, agent = debug_agent("--jax.precision", "float16")
    batch = random_batch(cfg, env, agent.act_dim, terminal_rate=0.0)
    metrics = jax.device_get(agent.train(batch, jax.random.PRNGKey(0)))
    assert np.isfinite(metrics["model_loss"]) and metrics["model_opt_loss_scale"] > 0
    assert agent.state.wm.rssm.stack.blocks[0].ssm.B.dtype == jnp.float32  # params stay float32


def _reference_actor_critic(agent, state, start, start_cont, key):
    """Slow reference of one discrete actor-critic update: a Python loop over imagination steps,
    per-step heads, returns by a backward loop, separate jax.grad of each loss, one optimiser step."""
    import equinox as eqx
    import optax
    from recall2imagine.nets.layers import features

    cfg, wm = agent.cfg, state.wm
    K, gamma, lam = cfg.imag_horizon, 1.0 - 1.0 / cfg.horizon, cfg.return_lambda
    f = lambda latent, inputs: features(latent, inputs, jnp.float32)
    lats, acts, keys = [start], [], jax.random.split(key, K)
    for i in range(K):  # same key use as the agent: per step (action key, prior key)
        k_act, k_img = jax.random.split(keys[i])
        acts.append(act(state.actor, lats[-1], k_act, agent.setup))
        lats.append(wm.rssm.img_step(lats[-1], acts[-1], k_img))
    reward = [dists.twohot_mean(wm.reward(f(l, cfg.reward_head.inputs)), agent.reward_bins) for l in lats[1:]]
    cont = [start_cont] + [
        (wm.cont(f(l, cfg.cont_head.inputs))[..., 0] > 0).astype(jnp.float32) for l in lats[1:]
    ]
    value = [dists.twohot_mean(state.critic(f(l, cfg.critic.inputs)), agent.value_bins) for l in lats]
    ret, nxt = [None] * K, value[K]
    for t in reversed(range(K)):
        nxt = reward[t] + gamma * cont[t + 1] * ((1 - lam) * value[t + 1] + lam * nxt)
        ret[t] = nxt
    weight, w = [], 1.0 / gamma
    for t in range(K):
        w = w * gamma * cont[t]
        weight.append(w)
    ret_all = jnp.stack(ret)
    lo, hi = jnp.percentile(ret_all, cfg.retnorm.perclo), jnp.percentile(ret_all, cfg.retnorm.perchi)
    retnorm = cfg.retnorm.decay * state.retnorm + (1 - cfg.retnorm.decay) * jnp.stack([lo, hi])
    scale = jnp.maximum(cfg.retnorm.max, retnorm[1] - retnorm[0])

    def actor_loss(params):
        actor = eqx.combine(params, eqx.filter(state.actor, eqx.is_array, inverse=True))
        total = 0.0
        for t in range(K):
            logits = dists.unimix_logits(actor(f(lats[t], cfg.actor.inputs)), cfg.actor.unimix)
            adv = (ret[t] - value[t]) / scale
            obj = dists.onehot_logprob(logits, acts[t]) * adv + cfg.actent * dists.categorical_entropy(logits)
            total = total - (weight[t] * obj).mean()
        return total / K * cfg.loss_scales.actor

    def critic_loss(params):
        critic = eqx.combine(params, eqx.filter(state.critic, eqx.is_array, inverse=True))
        total = 0.0
        for t in range(K):
            logits = critic(f(lats[t], cfg.critic.inputs))
            slow = dists.twohot_mean(state.slow_critic(f(lats[t], cfg.critic.inputs)), agent.value_bins)
            loss = -dists.twohot_logprob(logits, ret[t], agent.value_bins)
            loss = loss - cfg.loss_scales.slowreg * dists.twohot_logprob(logits, slow, agent.value_bins)
            total = total + (weight[t] * loss).mean()
        return total / K * cfg.loss_scales.critic

    out = {}
    for name, loss_fn, opt in (
        ("actor", actor_loss, agent.actor_opt),
        ("critic", critic_loss, agent.critic_opt),
    ):
        params = eqx.filter(getattr(state, name), eqx.is_array)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, _ = opt.tx.update(grads, getattr(state, name + "_opt").inner, params)
        out[name], out[name + "_loss"] = optax.apply_updates(params, updates), loss
    return out, retnorm


@pytest.mark.parametrize("actor_vjp_mb", [1024, 0])  # reuse the rollout's actor VJPs / recompute the actor
def test_actor_critic_update_matches_slow_reference(actor_vjp_mb):
    import equinox as eqx

    cfg, env, agent = debug_agent(
        "--imag_horizon",
        "4",
        "--critic.outscale",
        "1.0",
        "--reward_head.outscale",
        "1.0",
        "--actor_vjp_mb",
        str(actor_vjp_mb),
    )
    batch = random_batch(cfg, env, agent.act_dim, terminal_rate=0.2)
    agent.train(batch, jax.random.PRNGKey(0))  # trained a little: non-trivial critic and slow critic
    state = agent.state
    N, k = 12, jax.random.split(jax.random.PRNGKey(3), 4)
    start = dict(state.wm.rssm.initial((N,)))
    start["stoch"] = jax.nn.one_hot(
        jax.random.randint(k[0], (N, cfg.rssm.stoch), 0, cfg.rssm.classes), cfg.rssm.classes
    )
    start["deter"] = jax.random.normal(k[1], start["deter"].shape)
    start["hidden"] = jax.lax.complex(*jax.random.normal(k[2], (2,) + start["hidden"].shape))
    start_cont = (jax.random.uniform(k[3], (N,)) > 0.3).astype(jnp.float32)
    new, metrics = jax.jit(agent._actor_critic)(state, start, start_cont, jax.random.PRNGKey(7))
    ref, retnorm = _reference_actor_critic(agent, state, start, start_cont, jax.random.PRNGKey(7))
    np.testing.assert_allclose(metrics["actor_loss"], ref["actor_loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["critic_loss"], ref["critic_loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new.retnorm, retnorm, rtol=1e-5, atol=1e-6)
    for name in ("actor", "critic"):
        got, want = jax.tree.leaves(eqx.filter(getattr(new, name), eqx.is_array)), jax.tree.leaves(ref[name])
        before = jax.tree.leaves(eqx.filter(getattr(state, name), eqx.is_array))
        assert any(not np.allclose(g, b) for g, b in zip(got, before)), f"{name} did not move"
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_continuous_actions_train_through_the_dynamics():
    """Continuous actions take the other actor path (returns backpropagated through the rollout)."""
    cfg, env, agent = debug_agent("--task", "gym_popgym:popgym-PositionOnlyPendulumEasy-v0")
    assert not agent.discrete
    batch = random_batch(cfg, env, agent.act_dim, terminal_rate=0.0)
    before = jax.tree.map(np.asarray, agent.state.actor)
    for i in range(2):
        metrics = jax.device_get(agent.train(batch, jax.random.PRNGKey(i)))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert metrics["actor_opt_grad_norm"] > 0
    after = jax.tree.leaves(jax.tree.map(np.asarray, agent.state.actor))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), after))


def test_precision_auto_is_float32_on_cpu():
    from recall2imagine.devices import resolve_precision

    _, _, agent = debug_agent("--jax.precision", "auto")
    assert agent.dtype == jnp.float32 and not agent.fp16
    assert resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="jax.precision must be auto, float32"):
        resolve_precision("float8")


def test_two_hot_bin_range_follows_config():
    _, _, agent = debug_agent("--reward_head.bin_max", "1.5", "--critic.bin_max", "3")
    np.testing.assert_allclose([agent.reward_bins[0], agent.reward_bins[-1]], [-1.5, 1.5])
    np.testing.assert_allclose([agent.value_bins[0], agent.value_bins[-1]], [-3.0, 3.0])
    assert len(agent.reward_bins) == 255
