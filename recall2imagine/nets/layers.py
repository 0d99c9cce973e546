"""Dense building blocks with DreamerV3 initialisation, and feature assembly.

Parameters are float32; activations run in the dtype of their input (the compute
dtype chosen by `jax.precision`), norms and softmaxes in float32.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

# std of a standard normal truncated to [-2, 2]; dividing by it restores unit variance
_TRUNC_STD = 0.87962566103423978


def dreamer_init(key, fan_in, fan_out, shape, scale=1.0):
    """Truncated normal, variance scale / mean(fan_in, fan_out) (DreamerV3 `normal`, fan avg)."""
    if scale == 0.0:
        return jnp.zeros(shape, jnp.float32)
    std = jnp.sqrt(scale / ((fan_in + fan_out) / 2)) / _TRUNC_STD
    return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


class Linear(eqx.Module):
    w: jax.Array  # [in, out]
    b: jax.Array | None  # [out]

    def __init__(self, din, dout, *, key, bias=True, outscale=1.0):
        self.w = dreamer_init(key, din, dout, (din, dout), outscale**2 if outscale else 0.0)
        self.b = jnp.zeros((dout,), jnp.float32) if bias else None

    def __call__(self, x):  # [..., in] -> [..., out]
        y = x @ self.w.astype(x.dtype)
        return y if self.b is None else y + self.b.astype(x.dtype)


class Norm(eqx.Module):
    """LayerNorm over the last axis with learned scale and offset."""

    scale: jax.Array
    offset: jax.Array
    eps: float = eqx.field(static=True)

    def __init__(self, dim, eps=1e-3):
        self.scale = jnp.ones((dim,), jnp.float32)
        self.offset = jnp.zeros((dim,), jnp.float32)
        self.eps = eps

    def __call__(self, x):
        dtype = x.dtype
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        x = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return (x * self.scale + self.offset).astype(dtype)


class DenseNormAct(eqx.Module):
    """Dense (no bias) -> LayerNorm -> SiLU."""

    dense: Linear
    norm: Norm

    def __init__(self, din, dout, *, key):
        self.dense = Linear(din, dout, key=key, bias=False)
        self.norm = Norm(dout)

    def __call__(self, x):
        return jax.nn.silu(self.norm(self.dense(x)))


class MLP(eqx.Module):
    """`layers` x DenseNormAct, then an optional linear output layer."""

    hidden: list
    out: Linear | None

    def __init__(self, din, layers, units, dout=None, *, key, outscale=1.0):
        keys = jax.random.split(key, layers + 1)
        dims = [din] + [units] * layers
        self.hidden = [DenseNormAct(a, b, key=k) for a, b, k in zip(dims[:-1], dims[1:], keys)]
        self.out = None if dout is None else Linear(dims[-1], dout, key=keys[-1], outscale=outscale)

    def __call__(self, x):
        for layer in self.hidden:
            x = layer(x)
        if self.out is not None:
            x = self.out(x).astype(jnp.float32)  # output logits / means in float32
        return x

    def call_saving(self, x):
        """x [N, F] -> (self(x), saved): saved is [x, then each hidden layer's pre-norm activation],
        all `grads_from_saved` needs (the rest is elementwise and recomputed there)."""
        saved = [x]
        for layer in self.hidden:
            a = layer.dense(x)
            saved.append(a)
            x = _norm_silu(layer.norm, a)
        return (x if self.out is None else _apply_f32(self.out, x)), saved

    def grads_from_saved(self, saved, d_out):
        """Parameter gradient of <d_out, self(x)> from `call_saving`'s `saved` (any batch shape, the
        same for all): a module-shaped tree like `self`. No matmul of the forward pass runs again,
        and each weight gradient contracts over the whole batch in one matmul."""
        x, pullbacks = saved[0], []
        for layer, a in zip(self.hidden, saved[1:]):
            pullbacks.append(jax.vjp(_apply, layer.dense, x)[1])  # its output is `a`: never computed
            x, pb = jax.vjp(_norm_silu, layer.norm, a)
            pullbacks.append(pb)
        if self.out is not None:
            y, pb = jax.vjp(_apply_f32, self.out, x)
            pullbacks.append(pb)
            d_out = d_out.astype(y.dtype)
        grads = []
        for pb in reversed(pullbacks):
            g, d_out = pb(d_out)
            grads.append(g)
        return eqx.tree_at(modules_of, self, grads[::-1])


def replayed_outputs(static):
    """f(params, saved, outs) -> outs: the outputs [K, N, O] an MLP (`static` its non-array part)
    computed earlier with `call_saving` at these same `params`, with what that kept (`saved`,
    arrays [K, N, ...]), as a function of the parameters. Its gradient runs the MLP's backward pass
    from `saved`, so a loss on those outputs is differentiated without a second forward pass."""
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # [K, N, ...] -> [K N, ...]

    @jax.custom_vjp
    def f(params, saved, outs):
        return outs

    def fwd(params, saved, outs):
        return outs, (params, saved)

    def bwd(res, d_outs):
        params, saved = res
        grads = eqx.combine(params, static).grads_from_saved([flat(x) for x in saved], flat(d_outs))
        return eqx.filter(grads, eqx.is_array), jax.tree.map(jnp.zeros_like, saved), jnp.zeros_like(d_outs)

    f.defvjp(fwd, bwd)
    return f


def modules_of(mlp):  # MLP -> its parametrised modules in forward order
    return [m for layer in mlp.hidden for m in (layer.dense, layer.norm)] + (
        [mlp.out] if mlp.out is not None else []
    )


def _apply(module, x):
    return module(x)


def _apply_f32(module, x):
    return module(x).astype(jnp.float32)


def _norm_silu(norm, x):
    return jax.nn.silu(norm(x))


def feature_size(inputs, sizes, name="inputs"):
    """Width of `features(...)` for the given input keys; `sizes` from `rssm.feature_sizes()`."""
    if "hidden" in inputs and "hidden" not in sizes:
        raise ValueError(
            f"{name} asks for 'hidden', the SSM state, which --rssm.core gru does not have; "
            f"use e.g. --actor.inputs deter,stoch --critic.inputs deter,stoch"
        )
    unknown = [k for k in inputs if k not in sizes]
    if unknown:
        raise ValueError(f"unknown network input {unknown} in {name}; choose among {sorted(sizes)}")
    return sum(sizes[k] for k in inputs)


def features(latent, inputs, dtype):
    """Concatenate latent entries: deter [..., D], stoch [..., S, C], hidden [..., L, P] complex.

    Complex states become [real, imag]; everything past the batch dims is flattened.
    """
    batch = latent["deter"].shape[:-1]
    parts = []
    for k in inputs:
        x = latent[k]
        if jnp.iscomplexobj(x):
            x = jnp.stack([x.real, x.imag], -1)
        parts.append(x.reshape(batch + (-1,)).astype(dtype))
    return jnp.concatenate(parts, -1)
