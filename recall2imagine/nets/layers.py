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
