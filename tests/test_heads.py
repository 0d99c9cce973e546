"""CNN encoder/decoder against a numpy convolution, and an image world model that learns."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recall2imagine import config as configlib
from recall2imagine.agent import Agent
from recall2imagine.envs.base import ActSpace
from recall2imagine.nets.heads import (
    Conv,
    ConvDecoder,
    ConvEncoder,
    Decoder,
    Encoder,
    cnn_stages,
    select_keys,
)


def numpy_conv_stride2_same(x, w):
    """Reference: x [N, H, W, I], w [4, 4, I, O], stride 2, 'same' padding (1 before, 1 after)."""
    N, H, W, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((N, H // 2, W // 2, w.shape[3]))
    for i in range(H // 2):
        for j in range(W // 2):
            patch = xp[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4, :]  # [N, 4, 4, I]
            out[:, i, j] = np.einsum("nabi,abio->no", patch, w)
    return out


def test_conv_matches_numpy_reference():
    conv = Conv(3, 5, key=jax.random.PRNGKey(0), bias=False)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(
        conv(jnp.asarray(x)), numpy_conv_stride2_same(x, np.asarray(conv.w)), rtol=1e-4, atol=1e-4
    )


def numpy_conv_transpose_stride2(x, w):
    """Reference by definition: input pixel (i, j) adds x[i, j] @ w[a, b] to output pixel
    (2i + a - 1, 2j + b - 1), pixels outside the 2H x 2W output dropped."""
    N, H, W, _ = x.shape
    out = np.zeros((N, 2 * H + 2, 2 * W + 2, w.shape[3]))  # offset by 1 so that 2i + a - 1 >= -1 fits
    for i in range(H):
        for j in range(W):
            for a in range(4):
                for b in range(4):
                    out[:, 2 * i + a, 2 * j + b] += x[:, i, j] @ w[a, b]
    return out[:, 1 : 2 * H + 1, 1 : 2 * W + 1]


def test_conv_transpose_matches_numpy_reference():
    conv = Conv(4, 3, key=jax.random.PRNGKey(1), transpose=True, bias=False)
    x = np.random.default_rng(1).normal(size=(2, 4, 5, 4)).astype(np.float32)
    y = conv(jnp.asarray(x))
    assert y.shape == (2, 8, 10, 3)
    np.testing.assert_allclose(y, numpy_conv_transpose_stride2(x, np.asarray(conv.w)), rtol=1e-4, atol=1e-4)


def tap_loop_conv(x, w, transpose):
    """Slow JAX reference, one strided slice per kernel tap: the stride-2 conv reads padded pixel
    2i + a through tap a; its transpose adds x[i] @ w[a] to padded pixel 2i + a. Autodiff of this
    gives reference gradients for Conv's patch / unpatch matmuls."""
    N, H, W, _ = x.shape
    if not transpose:
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return sum(xp[:, a : a + H : 2, b : b + W : 2] @ w[a, b] for a in range(4) for b in range(4))
    out = jnp.zeros((N, 2 * H + 2, 2 * W + 2, w.shape[3]))
    for a in range(4):
        for b in range(4):
            out = out.at[:, a : a + 2 * H : 2, b : b + 2 * W : 2].add(x @ w[a, b])
    return out[:, 1:-1, 1:-1]


@pytest.mark.parametrize("transpose", [False, True])
def test_conv_gradients_match_tap_loop_reference(transpose):
    conv = Conv(3, 5, key=jax.random.PRNGKey(4), transpose=transpose, bias=False)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 6, 8, 3)), jnp.float32)
    with_w = lambda w: eqx.tree_at(lambda c: c.w, conv, w)
    ours = lambda x, w: jnp.sum(jnp.tanh(with_w(w)(x)) ** 2)
    ref = lambda x, w: jnp.sum(jnp.tanh(tap_loop_conv(x, w, transpose)) ** 2)
    np.testing.assert_allclose(conv(x), tap_loop_conv(x, conv.w, transpose), rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.grad(ours, argnums=(0, 1))(x, conv.w), jax.grad(ref, argnums=(0, 1))(x, conv.w)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_image_encoder_and_loss_match_whole_batch():
    """Decoding and encoding in rematerialised chunks (memory) give the same outputs and gradients
    as one pass."""
    whole = ConvDecoder(["image"], [3], (16, 16, 3), 6, 4, 4, key=jax.random.PRNGKey(2), chunk=512)
    chunked = ConvDecoder(["image"], [3], (16, 16, 3), 6, 4, 4, key=jax.random.PRNGKey(2), chunk=5)
    enc_whole = ConvEncoder(["image"], (16, 16, 3), 4, 4, key=jax.random.PRNGKey(3), chunk=512)
    enc_chunked = ConvEncoder(["image"], (16, 16, 3), 4, 4, key=jax.random.PRNGKey(3), chunk=5)
    # 2 x 6 = 12 frames in chunks of 4, the largest divisor of 12 up to 5
    rng = np.random.default_rng(2)
    feat = jnp.asarray(rng.normal(size=(2, 6, 6)), jnp.float32)
    obs = {"image": rng.integers(0, 256, (2, 6, 16, 16, 3), dtype=np.uint8)}
    loss = lambda dec, f: dec.loss(f, obs)
    np.testing.assert_allclose(loss(chunked, feat), loss(whole, feat), rtol=1e-5)
    assert loss(chunked, feat).shape == (2, 6)
    grad = lambda dec: jax.grad(lambda d, f: d.loss(f, obs).sum(), argnums=(0, 1))(dec, feat)
    for a, b in zip(jax.tree.leaves(grad(chunked)), jax.tree.leaves(grad(whole))):  # sums in another order
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    # the encoder likewise
    emb = lambda enc: enc(obs, jnp.float32)
    np.testing.assert_allclose(emb(enc_chunked), emb(enc_whole), rtol=1e-5, atol=1e-6)
    assert emb(enc_chunked).shape == (2, 6, enc_whole.out_dim)
    egrad = lambda enc: jax.grad(lambda e: jnp.square(emb(e)).sum())(enc)
    for a, b in zip(jax.tree.leaves(egrad(enc_chunked)), jax.tree.leaves(egrad(enc_whole))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_encoder_decoder_shapes_and_uint8_prediction():
    enc = ConvEncoder(["image"], (64, 64, 3), 4, 4, key=jax.random.PRNGKey(0))
    obs = {"image": np.zeros((2, 3, 64, 64, 3), np.uint8), "is_first": np.zeros((2, 3), bool)}
    assert enc(obs, jnp.float32).shape == (2, 3, 4 * 4 * 32) == (2, 3, enc.out_dim)
    dec = ConvDecoder(["image", "depth"], [3, 1], (64, 64, 4), 10, 4, 4, key=jax.random.PRNGKey(1))
    pred = dec.predict(jnp.zeros((2, 3, 10)))
    assert pred["image"].shape == (2, 3, 64, 64, 3) and pred["depth"].shape == (2, 3, 64, 64, 1)
    assert pred["image"].dtype == jnp.uint8


def test_key_selection_and_bad_sizes():
    space = {"image": ((64, 64, 3), np.uint8), "vector": ((5,), np.float32)}
    assert select_keys(space, "vector", "image") == (["vector"], ["image"])
    with pytest.raises(ValueError, match="no observation key matches"):
        select_keys(space, "nope", "$^")
    with pytest.raises(ValueError, match="minres"):
        cnn_stages(48, 48, 4)


def image_agent(*overrides, size=16):
    cfg = configlib.parse(
        [
            "--configs",
            "debug",
            "--encoder.mlp_keys",
            "$^",
            "--decoder.mlp_keys",
            "$^",
            "--encoder.cnn_keys",
            "image",
            "--decoder.cnn_keys",
            "image",
            *overrides,
        ]
    )
    space = {"image": ((size, size, 3), np.uint8)}
    return cfg, space, Agent(cfg, space, ActSpace(True, 3), jax.random.PRNGKey(0))


def image_batch(cfg, size=16, seed=0):
    """Images whose brightness encodes the action taken before them: learnable from (z, a)."""
    rng = np.random.default_rng(seed)
    B, T = cfg.batch_size, cfg.batch_length
    act = rng.integers(0, 3, (B, T))
    prev = np.concatenate([np.zeros((B, 1), int), act[:, :-1]], 1)
    image = np.broadcast_to((prev * 120)[:, :, None, None, None], (B, T, size, size, 3)).astype(np.uint8)
    batch = {
        "image": image.copy(),
        "reward": np.zeros((B, T), np.float32),
        "is_first": np.zeros((B, T), bool),
        "is_last": np.zeros((B, T), bool),
        "is_terminal": np.zeros((B, T), bool),
        "action": np.eye(3, dtype=np.float32)[act],
    }
    batch["is_first"][:, 0] = True
    return batch


def test_image_world_model_learns_reconstruction():
    cfg, _, agent = image_agent("--model_opt.lr", "1e-3")
    losses = []
    for i in range(40):
        metrics = agent.train(image_batch(cfg, seed=i), jax.random.PRNGKey(i))
        losses.append(float(metrics["image_loss"]))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses  # no learning stays at ~1.0


def test_combined_encoder_concatenates_mlp_and_cnn():
    cfg = configlib.parse(
        [
            "--configs",
            "debug",
            "--encoder.mlp_keys",
            "vector",
            "--encoder.cnn_keys",
            "image",
            "--decoder.mlp_keys",
            "vector",
            "--decoder.cnn_keys",
            "image",
        ]
    )
    space = {"image": ((16, 16, 3), np.uint8), "vector": ((5,), np.float32)}
    enc = Encoder(cfg, space, key=jax.random.PRNGKey(0))
    assert enc.out_dim == cfg.encoder.mlp_units + 4 * 4 * 2 * cfg.encoder.cnn_depth
    obs = {
        "image": np.zeros((2, 16, 16, 3), np.uint8),
        "vector": np.ones((2, 5), np.float32),
        "is_first": np.zeros(2, bool),
    }
    assert enc(obs, jnp.float32).shape == (2, enc.out_dim)
    dec = Decoder(cfg, space, 7, key=jax.random.PRNGKey(1))
    losses = dec.loss(jnp.zeros((2, 7)), obs)
    assert set(losses) == {"vector", "image"} and losses["image"].shape == (2,)
