"""Observation encoder and decoder: symlog MLPs for vectors, strided CNNs for images.

Keys are picked from the environment's observation space by the regexes
`encoder.mlp_keys` / `encoder.cnn_keys` (rank-0/1 keys go to the MLP, rank-3 [H, W, C] keys to
the CNN). Images stay uint8 up to the device and become `x / 255 - 0.5` in the compute dtype
inside the jitted step (spec 4.1-4.2, 4.6).
"""

import math
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from recall2imagine.nets import dists
from recall2imagine.nets.layers import MLP, Linear, Norm, dreamer_init


def select_keys(obs_space, mlp_pattern, cnn_pattern, what="encoder"):
    """Split observation keys into (mlp_keys, cnn_keys) by rank and regex (full match)."""
    mlp, cnn = [], []
    for key, (shape, _) in sorted(obs_space.items()):
        if len(shape) in (0, 1) and re.fullmatch(mlp_pattern, key):
            mlp.append(key)
        elif len(shape) == 3 and re.fullmatch(cnn_pattern, key):
            cnn.append(key)
    if not mlp and not cnn:
        raise ValueError(
            f"no observation key matches {what}.mlp_keys {mlp_pattern!r} (vectors) or "
            f"{what}.cnn_keys {cnn_pattern!r} (images); available: "
            + ", ".join(f"{k} {tuple(s)}" for k, (s, _) in sorted(obs_space.items()))
        )
    return mlp, cnn


def vector_input(obs, keys):
    """Concatenate the selected vector keys [..., d_k] -> [..., sum d_k] float32."""
    batch = obs["is_first"].shape
    return jnp.concatenate([obs[k].astype(jnp.float32).reshape(batch + (-1,)) for k in keys], -1)


def image_input(obs, keys, dtype):
    """Concatenate images on channels: [..., H, W, C_k] uint8 -> [..., H, W, sum C_k] in [0, 1]."""
    return jnp.concatenate([obs[k].astype(dtype) / 255 for k in keys], -1)


def chunked(fn, size, *xs):
    """fn over the leading axis (n frames) of the pytrees xs, at most `size` frames at a time.

    Chunks (the largest divisor of n up to `size`) run in a lax.map under jax.checkpoint, so
    the activations inside fn are held for one chunk at a time, also under differentiation, at
    the price of a second forward pass; n <= size calls fn once, unchanged."""
    n = jax.tree.leaves(xs)[0].shape[0]
    step = max(d for d in range(1, min(n, size) + 1) if n % d == 0)
    if step == n:
        return fn(*xs)
    out = jax.lax.map(
        jax.checkpoint(lambda a: fn(*a)),
        jax.tree.map(lambda x: x.reshape((n // step, step) + x.shape[1:]), xs),
    )
    return jax.tree.map(lambda y: y.reshape((n,) + y.shape[2:]), out)


def image_shape(obs_space, keys):
    """(H, W, sum C) of the images under `keys`; they must share H and W."""
    shapes = {tuple(obs_space[k][0][:2]) for k in keys}
    if len(shapes) != 1:
        raise ValueError(
            f"images {keys} differ in size {sorted(shapes)}; select one size with encoder.cnn_keys"
        )
    ((h, w),) = shapes
    return h, w, sum(obs_space[k][0][2] for k in keys)


def cnn_stages(h, w, minres):
    """Number of stride-2 stages that take an [h, w] image down to [minres, minres]."""
    stages = math.log2(h / minres) if minres > 0 else -1
    if h != w or stages < 1 or stages != int(stages):
        raise ValueError(
            f"the CNN needs square images of size minres * 2^k (minres {minres}), got {h}x{w}; "
            f"set --encoder.minres / --decoder.minres"
        )
    return int(stages)


# A 4x4 stride-2 convolution with padding 1 is one matmul over patches, and its transpose is one
# matmul followed by the adjoint gather. `patches` [N, 2h, 2w, C] -> [N, h, w, 16 C] gathers the 4x4
# window of every output pixel from the zero-padded input seen as [h + 1, w + 1] cells of 2x2 pixels
# (space to depth): window row 2e + p (e, p in {0, 1}) is cell row i + e, pixel row p; channels are
# ordered (e, f, p, q, c) for rows (e, p) and columns (f, q). `unpatches` is its exact adjoint: it
# adds every window back onto the padded image and crops the padding. Each is given the other as
# its gradient, so every convolution and its gradients are matmuls plus one gather or scatter.
# XLA's own conv gradients on the CPU were slow, and 10x slower again inside `chunked`'s lax.map
# (encoder gradient for 1,024 64x64 frames, depth 8: 15.6 s vs 0.9 s with these).


def _patches(x):  # [N, 2h, 2w, C] -> [N, h, w, 16 C]
    N, H, W, C = x.shape
    h, w = H // 2, W // 2
    cells = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(N, h + 1, 2, w + 1, 2, C)
    cells = cells.transpose(0, 1, 3, 2, 4, 5).reshape(N, h + 1, w + 1, 4 * C)
    return jnp.concatenate([cells[:, e : e + h, f : f + w] for e in (0, 1) for f in (0, 1)], -1)


def _unpatches(z):  # [N, h, w, 16 C] -> [N, 2h, 2w, C], the adjoint of _patches
    N, h, w, D = z.shape
    C = D // 16
    blocks = jnp.split(z, 4, -1)  # (e, f) = (0, 0), (0, 1), (1, 0), (1, 1); each [N, h, w, (p, q, c)]
    cells = sum(
        jnp.pad(blocks[2 * e + f], ((0, 0), (e, 1 - e), (f, 1 - f), (0, 0))) for e in (0, 1) for f in (0, 1)
    )
    image = (
        cells.reshape(N, h + 1, w + 1, 2, 2, C)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(N, 2 * h + 2, 2 * w + 2, C)
    )
    return image[:, 1:-1, 1:-1]


patches = jax.custom_vjp(_patches)
patches.defvjp(lambda x: (_patches(x), None), lambda _, g: (unpatches(g),))
unpatches = jax.custom_vjp(_unpatches)
unpatches.defvjp(lambda z: (_unpatches(z), None), lambda _, g: (patches(g),))


class Conv(eqx.Module):
    """4x4 stride-2 convolution with padding 1, NHWC, halving H and W; with `transpose`, its
    transposed form (output pixel 2i + a - 1 receives input pixel i through kernel tap a),
    doubling H and W. Both through `patches` / `unpatches` (see above)."""

    w: jax.Array  # [4, 4, in, out]
    b: jax.Array | None  # [out]
    transpose: bool = eqx.field(static=True)

    def __init__(self, din, dout, *, key, transpose=False, bias=True):
        self.w = dreamer_init(key, 16 * din, 16 * dout, (4, 4, din, dout))
        self.b = jnp.zeros((dout,), jnp.float32) if bias else None
        self.transpose = transpose

    def __call__(self, x):  # [N, H, W, in] -> [N, H/2, W/2, out] (transpose: [N, 2H, 2W, out])
        din, dout = self.w.shape[2:]
        taps = self.w.astype(x.dtype).reshape(2, 2, 2, 2, din, dout)  # [e, p, f, q, in, out]
        if not self.transpose:
            y = patches(x) @ taps.transpose(0, 2, 1, 3, 4, 5).reshape(16 * din, dout)
        else:
            y = unpatches(x @ taps.transpose(4, 0, 2, 1, 3, 5).reshape(din, 16 * dout))
        return y if self.b is None else y + self.b.astype(x.dtype)


class ConvEncoder(eqx.Module):
    """image - 0.5 -> `stages` x [Conv 4x4/2 -> LayerNorm(channels) -> SiLU], channels d, 2d, 4d, ..."""

    convs: list
    norms: list
    keys: tuple = eqx.field(static=True)
    out_dim: int = eqx.field(static=True)
    chunk: int = eqx.field(static=True)  # frames encoded at once (see `chunked`)

    def __init__(self, keys, shape, depth, minres, *, key, chunk=512):
        h, w, c = shape
        stages = cnn_stages(h, w, minres)
        chans = [c] + [depth * 2**i for i in range(stages)]
        ks = jax.random.split(key, stages)
        self.convs = [Conv(a, b, key=k, bias=False) for a, b, k in zip(chans[:-1], chans[1:], ks)]
        self.norms = [Norm(b) for b in chans[1:]]
        self.keys = tuple(keys)
        self.out_dim = minres * minres * chans[-1]
        if chunk < 1:
            raise ValueError(f"encoder.cnn_chunk must be >= 1 frame, got {chunk}")
        self.chunk = int(chunk)

    def __call__(self, obs, dtype):  # obs dict of [..., H, W, C] uint8 -> [..., out_dim]
        first = obs[self.keys[0]]
        batch = first.shape[:-3]
        images = {k: obs[k].reshape((-1,) + obs[k].shape[-3:]) for k in self.keys}

        def encode(imgs):  # [n, H, W, C] uint8 -> [n, out_dim]
            x = image_input(imgs, self.keys, dtype) - 0.5
            for conv, norm in zip(self.convs, self.norms):
                x = jax.nn.silu(norm(conv(x)))
            return x.reshape(x.shape[0], -1)

        return chunked(encode, self.chunk, images).reshape(batch + (-1,))


class ConvDecoder(eqx.Module):
    """feat -> Dense to [minres, minres, 2^(s-1) d] -> transposed convs with LN+SiLU halving the
    channels; the last outputs the image channels (no norm) -> + 0.5. Loss: summed squared error."""

    inp: Linear
    convs: list
    norms: list
    keys: tuple = eqx.field(static=True)
    channels: tuple = eqx.field(static=True)  # channels per key, in `keys` order
    minres: int = eqx.field(static=True)
    chunk: int = eqx.field(static=True)  # frames per decoding chunk in `loss`

    def __init__(self, keys, channels, shape, din, depth, minres, *, key, chunk=512):
        h, w, c = shape
        stages = cnn_stages(h, w, minres)
        chans = [depth * 2**i for i in reversed(range(stages))] + [c]  # 8d, 4d, 2d, d, C
        ks = jax.random.split(key, stages + 1)
        self.inp = Linear(din, minres * minres * chans[0], key=ks[0])
        self.convs = [
            Conv(a, b, key=k, transpose=True, bias=(i == stages - 1))
            for i, (a, b, k) in enumerate(zip(chans[:-1], chans[1:], ks[1:]))
        ]
        self.norms = [Norm(b) for b in chans[1:-1]]
        self.keys, self.channels, self.minres = tuple(keys), tuple(channels), minres
        if chunk < 1:
            raise ValueError(f"decoder.cnn_chunk must be >= 1 frame, got {chunk}")
        self.chunk = int(chunk)

    def mean(self, feat):  # [..., F] -> [..., H, W, C] float32, image in [0, 1] (unclipped)
        batch = feat.shape[:-1]
        x = self.inp(feat).reshape((-1, self.minres, self.minres, self.convs[0].w.shape[2]))
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.norms):
                x = jax.nn.silu(self.norms[i](x))
        x = x.astype(jnp.float32) + 0.5
        return x.reshape(batch + x.shape[1:])

    def loss(self, feat, obs):  # -> [...]
        """Summed squared error per frame, decoded `chunk` frames at a time (see `chunked`): the
        full `mmaze` batch of 4,096 frames at once needed ~46 GiB on the CPU."""
        batch, n = feat.shape[:-1], int(np.prod(feat.shape[:-1]))
        images = {k: obs[k].reshape((n,) + obs[k].shape[len(batch) :]) for k in self.keys}
        frame_loss = lambda f, imgs: jnp.square(self.mean(f) - image_input(imgs, self.keys, jnp.float32)).sum(
            (-3, -2, -1)
        )
        return chunked(frame_loss, self.chunk, feat.reshape(n, -1), images).reshape(batch)

    def predict(self, feat):  # {key: [..., H, W, C_k] uint8}
        x = jnp.clip(jnp.round(self.mean(feat) * 255), 0, 255).astype(jnp.uint8)
        splits = np.cumsum(self.channels)[:-1].tolist()
        return dict(zip(self.keys, jnp.split(x, splits, -1)))


class VectorEncoder(eqx.Module):
    mlp: MLP
    keys: tuple = eqx.field(static=True)
    symlog_inputs: bool = eqx.field(static=True)
    out_dim: int = eqx.field(static=True)

    def __init__(self, keys, dim, layers, units, symlog_inputs, *, key):
        self.mlp = MLP(dim, layers, units, key=key)
        self.keys = tuple(keys)
        self.symlog_inputs = symlog_inputs
        self.out_dim = units if layers else dim

    def __call__(self, obs, dtype):  # obs dict [..., d] -> embed [..., units]
        x = vector_input(obs, self.keys)
        if self.symlog_inputs:
            x = dists.symlog(x)
        return self.mlp(x.astype(dtype))


class VectorDecoder(eqx.Module):
    mlp: MLP
    keys: tuple = eqx.field(static=True)
    sizes: tuple = eqx.field(static=True)  # flat size per key, in `keys` order
    shapes: tuple = eqx.field(static=True)

    def __init__(self, keys, shapes, din, layers, units, *, key):
        self.sizes = tuple(math.prod(s) for s in shapes)
        self.mlp = MLP(din, layers, units, sum(self.sizes), key=key)
        self.keys, self.shapes = tuple(keys), tuple(tuple(s) for s in shapes)

    def loss(self, feat, obs):
        """symlog_mse summed over dims: [..., F] -> [...]."""
        target = dists.symlog(vector_input(obs, self.keys))
        return jnp.square(self.mlp(feat) - target).sum(-1)

    def predict(self, feat):  # {key: [..., *shape]} in the original space
        x = dists.symexp(self.mlp(feat))
        parts = jnp.split(x, np.cumsum(self.sizes)[:-1].tolist(), -1)
        return {k: p.reshape(feat.shape[:-1] + s) for k, p, s in zip(self.keys, parts, self.shapes)}


class Encoder(eqx.Module):
    """Vector MLP and image CNN side by side; their outputs concatenated into the embedding."""

    mlp: VectorEncoder | None
    cnn: ConvEncoder | None
    out_dim: int = eqx.field(static=True)

    def __init__(self, cfg, obs_space, *, key):
        e = cfg.encoder
        mlp_keys, cnn_keys = select_keys(obs_space, e.mlp_keys, e.cnn_keys, "encoder")
        k1, k2 = jax.random.split(key)
        dim = sum(math.prod(obs_space[k][0]) for k in mlp_keys)
        self.mlp = (
            VectorEncoder(mlp_keys, dim, e.mlp_layers, e.mlp_units, e.symlog_inputs, key=k1)
            if mlp_keys
            else None
        )
        self.cnn = (
            ConvEncoder(
                cnn_keys, image_shape(obs_space, cnn_keys), e.cnn_depth, e.minres, key=k2, chunk=e.cnn_chunk
            )
            if cnn_keys
            else None
        )
        self.out_dim = sum(m.out_dim for m in (self.mlp, self.cnn) if m is not None)

    def __call__(self, obs, dtype):  # -> [..., out_dim]
        return jnp.concatenate(
            [m(obs, dtype).astype(dtype) for m in (self.mlp, self.cnn) if m is not None], -1
        )


class Decoder(eqx.Module):
    """Reconstructs the selected keys from features; loss terms 'vector' and 'image' per step."""

    mlp: VectorDecoder | None
    cnn: ConvDecoder | None

    def __init__(self, cfg, obs_space, din, *, key):
        d = cfg.decoder
        mlp_keys, cnn_keys = select_keys(obs_space, d.mlp_keys, d.cnn_keys, "decoder")
        k1, k2 = jax.random.split(key)
        self.mlp = (
            VectorDecoder(
                mlp_keys, [obs_space[k][0] for k in mlp_keys], din, d.mlp_layers, d.mlp_units, key=k1
            )
            if mlp_keys
            else None
        )
        self.cnn = (
            ConvDecoder(
                cnn_keys,
                [obs_space[k][0][2] for k in cnn_keys],
                image_shape(obs_space, cnn_keys),
                din,
                d.cnn_depth,
                d.minres,
                key=k2,
                chunk=d.cnn_chunk,
            )
            if cnn_keys
            else None
        )

    def loss(self, feat, obs):  # {'vector' | 'image': [...]}
        out = {}
        if self.mlp is not None:
            out["vector"] = self.mlp.loss(feat, obs)
        if self.cnn is not None:
            out["image"] = self.cnn.loss(feat, obs)
        return out

    def predict(self, feat):  # {obs key: [..., *shape]}
        out = {}
        for m in (self.mlp, self.cnn):
            if m is not None:
                out.update(m.predict(feat))
        return out
