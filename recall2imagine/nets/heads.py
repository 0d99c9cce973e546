"""Observation encoder and decoder for vector observations (symlog MLPs).

Keys are picked from the environment's observation space by the regexes
`encoder.mlp_keys` / `encoder.cnn_keys` (rank-1 keys go to the MLP, rank-3 to the CNN).
"""
import re

import equinox as eqx
import jax.numpy as jnp

from recall2imagine.nets import dists
from recall2imagine.nets.layers import MLP


def select_keys(obs_space, mlp_pattern, cnn_pattern):
    """Split observation keys into (mlp_keys, cnn_keys) by rank and regex (full match)."""
    mlp, cnn = [], []
    for key, (shape, _) in sorted(obs_space.items()):
        if len(shape) in (0, 1) and re.fullmatch(mlp_pattern, key):
            mlp.append(key)
        elif len(shape) == 3 and re.fullmatch(cnn_pattern, key):
            cnn.append(key)
    if cnn:
        raise ValueError(
            f"observation keys {cnn} are images; the CNN encoder is not part of this build yet: "
            f"exclude them with --encoder.cnn_keys '$^' --decoder.cnn_keys '$^'")
    if not mlp:
        raise ValueError(f"no observation key matches encoder.mlp_keys {mlp_pattern!r}; "
                         f"available: {sorted(obs_space)}")
    return mlp


def vector_input(obs, keys):
    """Concatenate the selected vector keys [..., d_k] -> [..., sum d_k] float32."""
    batch = obs["is_first"].shape
    return jnp.concatenate([obs[k].astype(jnp.float32).reshape(batch + (-1,)) for k in keys], -1)


class VectorEncoder(eqx.Module):
    mlp: MLP
    keys: tuple = eqx.field(static=True)
    symlog_inputs: bool = eqx.field(static=True)

    def __init__(self, keys, dim, layers, units, symlog_inputs, *, key):
        self.mlp = MLP(dim, layers, units, key=key)
        self.keys = tuple(keys)
        self.symlog_inputs = symlog_inputs

    def __call__(self, obs, dtype):  # obs dict [..., d] -> embed [..., units]
        x = vector_input(obs, self.keys)
        if self.symlog_inputs:
            x = dists.symlog(x)
        return self.mlp(x.astype(dtype))


class VectorDecoder(eqx.Module):
    mlp: MLP
    keys: tuple = eqx.field(static=True)

    def __init__(self, keys, din, dout, layers, units, *, key):
        self.mlp = MLP(din, layers, units, dout, key=key)
        self.keys = tuple(keys)

    def loss(self, feat, obs):
        """symlog_mse summed over dims: [..., F] -> [...]."""
        target = dists.symlog(vector_input(obs, self.keys))
        return jnp.square(self.mlp(feat) - target).sum(-1)

    def predict(self, feat):  # predicted observation in the original space
        return dists.symexp(self.mlp(feat))
