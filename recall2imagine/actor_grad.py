"""The actor's gradient without a second forward pass (one switch: config `actor_vjp_mb`).

With discrete actions the actor learns by REINFORCE, so the imagination rollout needs no gradient
and runs once, outside the actor's loss. The plain way then runs the actor again on the imagined
states to differentiate its outputs. Instead, when they fit in `actor_vjp_mb` MiB, the rollout keeps
each hidden layer's pre-norm activation (`call_saving`), and the actor's gradient is its backward
pass from those (`grads_from_saved`); its input is taken from the trajectory's features. BENCHMARKS.md
("actor-gradient reuse") has the measured gain.
"""

import equinox as eqx
import jax
import jax.numpy as jnp


def fits(cfg, n, actor_in, dtype):
    """Whether the activations of the rollout's actor calls from n starts fit `actor_vjp_mb` MiB
    (0 turns the reuse off: the actor's outputs are recomputed). actor_in: the actor's input width."""
    a = cfg.actor
    size = cfg.imag_horizon * n * (actor_in + a.layers * a.units) * jnp.dtype(dtype).itemsize
    return size <= cfg.actor_vjp_mb * 2**20


def call_saving(mlp, x):
    """x [..., F] -> (mlp(x), pre): pre is each hidden layer's pre-norm activation [..., U], all that
    `grads_from_saved` needs besides x (the rest is elementwise and recomputed there)."""
    pre = []
    for layer in mlp.hidden:
        a = layer.dense(x)
        pre.append(a)
        x = _norm_silu(layer.norm, a)
    return (x if mlp.out is None else _apply_f32(mlp.out, x)), pre


def grads_from_saved(mlp, x, pre, d_out):
    """Parameter gradient of <d_out, mlp(x)> from x and `call_saving`'s `pre` (any batch shape, the
    same for all): a module-shaped tree like `mlp`. No matmul of the forward pass runs again, and
    each weight gradient contracts over the whole batch in one matmul."""
    pullbacks = []
    for layer, a in zip(mlp.hidden, pre):
        pullbacks.append(jax.vjp(_apply, layer.dense, x)[1])  # its output is `a`: never computed
        x, pb = jax.vjp(_norm_silu, layer.norm, a)
        pullbacks.append(pb)
    if mlp.out is not None:
        y, pb = jax.vjp(_apply_f32, mlp.out, x)
        pullbacks.append(pb)
        d_out = d_out.astype(y.dtype)
    grads = []
    for pb in reversed(pullbacks):
        g, d_out = pb(d_out)
        grads.append(g)
    return eqx.tree_at(_modules_of, mlp, grads[::-1])


def replayed_outputs(static):
    """f(params, x, pre, outs) -> outs: the outputs [K, N, O] an MLP (`static` its non-array part)
    computed earlier with `call_saving` from x [K, N, F] at these same `params`, as a function of the
    parameters. Its gradient is the MLP's backward pass from x and `pre`, so a loss on those outputs
    is differentiated without a second forward pass."""
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # [K, N, ...] -> [K N, ...]

    @jax.custom_vjp
    def f(params, x, pre, outs):
        return outs

    def fwd(params, x, pre, outs):
        return outs, (params, x, pre)

    def bwd(res, d_outs):
        params, x, pre = res
        mlp = eqx.combine(params, static)
        grads = grads_from_saved(mlp, flat(x), [flat(a) for a in pre], flat(d_outs))
        zeros = jax.tree.map(jnp.zeros_like, (x, pre, d_outs))
        return (eqx.filter(grads, eqx.is_array),) + zeros

    f.defvjp(fwd, bwd)
    return f


def actor_outputs(actor_static, traj, pre, inputs):
    """params -> the actor's outputs [K, N, O] in the imagined states 0..K-1 of `traj` (`imagine`,
    whose features include the actor's inputs): replayed from the rollout's `pre` activations, or
    (pre None) a second forward pass."""
    x = traj["feat"][tuple(inputs)]
    if pre is not None:
        replay = replayed_outputs(actor_static)
        return lambda p: replay(p, x, pre, traj["outs"])
    return lambda p: eqx.combine(p, actor_static)(x)


def _modules_of(mlp):  # MLP -> its parametrised modules in forward order
    return [m for layer in mlp.hidden for m in (layer.dense, layer.norm)] + (
        [mlp.out] if mlp.out is not None else []
    )


def _apply(module, x):
    return module(x)


def _apply_f32(module, x):
    return module(x).astype(jnp.float32)


def _norm_silu(norm, x):
    return jax.nn.silu(norm(x))
