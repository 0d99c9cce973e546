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


def test_optimizer_skips_nonfinite_and_scales_loss():
    import optax

    from recall2imagine.optim import Optimizer, OptState

    opt = Optimizer(optax.sgd(0.1), fp16=True)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    assert float(state.scale) == 1e4 and int(state.good) == 0
    bad = lambda p: ((p["w"] * jnp.array([1.0, jnp.inf, 1.0])).sum(), None)
    step = opt.step(bad, params, state._replace(good=jnp.int32(5)))
    assert not bool(step.finite) and float(step.state.scale) == 5e3 and int(step.state.good) == 0
    np.testing.assert_array_equal(step.params["w"], params["w"])  # skipped
    good_fn = lambda p: ((p["w"] ** 2).sum(), None)
    step = opt.step(good_fn, params, state._replace(good=jnp.int32(999)))
    assert (
        bool(step.finite) and float(step.state.scale) == 1e4 and int(step.state.good) == 0
    )  # doubled, clipped
    np.testing.assert_allclose(step.grads["w"], 2.0)  # unscaled gradients
    np.testing.assert_allclose(step.params["w"], 0.8)
    assert float(step.loss) == 3.0
    step = opt.step(good_fn, params, OptState(state.inner, jnp.float32(8.0), jnp.int32(3)))
    assert float(step.state.scale) == 8.0 and int(step.state.good) == 4  # counts up below 1000


def test_float32_optimizer_counts_finite_steps_and_keeps_scale():
    import optax

    from recall2imagine.optim import Optimizer

    opt = Optimizer(optax.sgd(0.1), fp16=False)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    assert float(state.scale) == 1.0
    step = opt.step(lambda p: ((p["w"] ** 2).sum(), None), params, state)
    assert int(step.state.good) == 1 and float(step.state.scale) == 1.0
    step = opt.step(lambda p: ((p["w"] * jnp.nan).sum(), None), step.params, step.state)
    assert int(step.state.good) == 0 and not bool(step.finite)
