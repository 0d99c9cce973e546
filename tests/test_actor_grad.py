"""The actor's gradient from the rollout's saved activations against plain autodiff."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recall2imagine import actor_grad
from recall2imagine import config as configlib
from recall2imagine.nets.layers import MLP


def _close(got, want, tol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype == jnp.float32
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * float(jnp.abs(w).max()))


@pytest.mark.parametrize("dout, dtype", [(5, jnp.float32), (None, jnp.float32), (5, jnp.float16)])
def test_grads_from_saved_activations_match_autodiff(dout, dtype):
    """The backward pass from `call_saving`'s activations (no second forward pass) equals plain
    autodiff of the MLP; batch dims [K, N] flattened as the actor update does."""
    mlp = MLP(7, 2, 16, dout, key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 7)).astype(dtype)  # [K, N, F]
    out, pre = actor_grad.call_saving(mlp, x)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(mlp(x), np.float32), rtol=1e-6)
    assert [a.shape for a in pre] == [(3, 4, 16), (3, 4, 16)]
    d_out = jax.random.normal(jax.random.PRNGKey(2), out.shape).astype(out.dtype)
    params, static = eqx.partition(mlp, eqx.is_array)
    loss = lambda p: jnp.sum(eqx.combine(p, static)(x).astype(jnp.float32) * d_out.astype(jnp.float32))
    flat = lambda a: a.reshape((12,) + a.shape[2:])
    got = actor_grad.grads_from_saved(mlp, flat(x), [flat(a) for a in pre], flat(d_out))
    _close(eqx.filter(got, eqx.is_array), jax.grad(loss)(params), 1e-5 if dtype == jnp.float32 else 2e-2)


def test_actor_outputs_replayed_and_recomputed_give_the_same_loss_and_gradient():
    """`actor_outputs` with the rollout's activations and without them (a second forward pass):
    the same outputs and the same parameter gradient of a loss on them."""
    K, N, inputs = 4, 3, ("deter", "stoch")
    x = jax.random.normal(jax.random.PRNGKey(0), (K, N, 12))
    mlp = MLP(12, 2, 8, 5, key=jax.random.PRNGKey(2))
    outs, pre = actor_grad.call_saving(mlp, x)
    traj = dict(outs=outs, feat={inputs: x})
    params, static = eqx.partition(mlp, eqx.is_array)
    w = jax.random.normal(jax.random.PRNGKey(3), outs.shape)
    results = []
    for saved in (pre, None):
        outs_of = actor_grad.actor_outputs(static, traj, saved, inputs)
        loss = lambda p: jnp.sum(jnp.tanh(outs_of(p)) * w)
        results.append(jax.value_and_grad(loss)(params))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    _close(results[0][1], results[1][1], 1e-5)


def test_fits_counts_the_saved_bytes_against_actor_vjp_mb():
    """One switch: the activations of imag_horizon x n actor calls (input + hidden layers) fit
    `actor_vjp_mb` MiB or the actor is recomputed; 0 always recomputes."""
    cfg = configlib.parse(["--configs", "debug"])
    a = cfg.actor
    per_start = cfg.imag_horizon * (10 + a.layers * a.units) * 4  # float32 bytes
    n = (2**20) // per_start  # the most starts that fit in 1 MiB
    cfg = configlib.parse(["--configs", "debug", "--actor_vjp_mb", "1"])
    assert actor_grad.fits(cfg, n, 10, jnp.float32) and not actor_grad.fits(cfg, n + 1, 10, jnp.float32)
    assert actor_grad.fits(cfg, 2 * n, 10, jnp.float16)  # half the bytes
    cfg = configlib.parse(["--configs", "debug", "--actor_vjp_mb", "0"])
    assert not actor_grad.fits(cfg, 1, 10, jnp.float32)
