"""Optimisers: the S5 parameter group, skipping non-finite updates, float16 loss scaling."""

import jax
import jax.numpy as jnp
import numpy as np

from helpers import debug_agent
from recall2imagine.optim import SSM_LEAVES, param_labels


def test_ssm_parameter_group():
    cfg, env, agent = debug_agent()
    import equinox as eqx

    labels = param_labels(eqx.filter(agent.state.wm, eqx.is_array))
    paths = jax.tree_util.tree_flatten_with_path(labels)[0]
    ssm = {str(p[-1].name) for p, l in paths if l == "ssm"}
    assert ssm == set(SSM_LEAVES)
    assert sum(l == "ssm" for _, l in paths) == len(SSM_LEAVES) * cfg.ssm.n_layers


def test_optimize_skips_nonfinite_and_scales_loss():
    import optax
    from recall2imagine.optim import optimize

    opt = optax.sgd(0.1)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    bad = lambda p: ((p["w"] * jnp.array([1.0, jnp.inf, 1.0])).sum(), None)
    p2, _, scale, good, _, _, _, finite = optimize(
        opt, bad, params, state, jnp.float32(1e4), jnp.int32(5), True
    )
    assert not bool(finite) and float(scale) == 5e3 and int(good) == 0
    np.testing.assert_array_equal(p2["w"], params["w"])  # skipped
    good_fn = lambda p: ((p["w"] ** 2).sum(), None)
    p3, _, scale, good, loss, _, grads, finite = optimize(
        opt, good_fn, params, state, jnp.float32(1e4), jnp.int32(999), True
    )
    assert bool(finite) and float(scale) == 1e4 and int(good) == 0  # doubled, clipped at 1e4
    np.testing.assert_allclose(grads["w"], 2.0)  # unscaled gradients
    np.testing.assert_allclose(p3["w"], 0.8)
    assert float(loss) == 3.0
