"""The DreamerV3 (2023) recurrent RSSM: a layer-normed GRU as sequence model, posterior on (h, embed).

Selected with `--rssm.core gru`; a drop-in replacement for `rssm.RSSM` (same methods, same
latent layout minus the SSM state), so DreamerV3 and R2I run on the same data, heads and losses.

A latent is a dict of arrays with common leading batch dims `[...]`:
  stoch  [..., S, C]  one-hot sample of the categorical latent z
  logit  [..., S, C]  its log-probabilities (unimix applied)
  deter  [..., D]     the GRU state h: the memory carried over time

Sequence model: h_t = GRU(img_in(z_{t-1}, a_{t-1}), h_{t-1}); prior p(z_t | h_t);
posterior q(z_t | h_t, o_t). Because the posterior depends on h_t, which depends on the
previous posterior sample, `observe` is a sequential `lax.scan` over time (no parallel form).

The GRU cell (DreamerV3 `_gru`, one block, no bias because of the norm):
  parts = LN(W [x, h]);  reset, cand, update = split(parts, 3)
  reset = sigmoid(reset); cand = tanh(reset * cand); update = sigmoid(update - 1)
  h = update * cand + (1 - update) * h
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from recall2imagine.nets import dists
from recall2imagine.nets.layers import DenseNormAct, Linear, Norm
from recall2imagine.nets.rssm import clip_action, initial_latent, latent_logit


class GRUCell(eqx.Module):
    """Layer-normed GRU cell of DreamerV3: x [..., I], h [..., D] -> h [..., D]."""

    dense: Linear  # [I + D] -> 3D, no bias
    norm: Norm  # over the 3D pre-activations

    def __init__(self, din, deter, *, key):
        self.dense = Linear(din + deter, 3 * deter, key=key, bias=False)
        self.norm = Norm(3 * deter)

    def __call__(self, x, h):
        parts = self.norm(self.dense(jnp.concatenate([x, h.astype(x.dtype)], -1)))
        reset, cand, update = jnp.split(parts, 3, -1)
        reset = jax.nn.sigmoid(reset)
        cand = jnp.tanh(reset * cand)
        update = jax.nn.sigmoid(update - 1.0)
        return (update * cand + (1.0 - update) * h.astype(x.dtype)).astype(h.dtype)


class GRURSSM(eqx.Module):
    img_in: DenseNormAct  # [stoch*classes + A] -> units
    gru: GRUCell  # (units, deter) -> deter
    img_out: DenseNormAct  # deter -> units
    img_stats: Linear  # units -> S*C
    obs_out: DenseNormAct  # [deter + embed] -> units
    obs_stats: Linear  # units -> S*C
    initial_deter: jax.Array | None  # [D], learned
    deter: int = eqx.field(static=True)
    stoch: int = eqx.field(static=True)
    classes: int = eqx.field(static=True)
    unimix: float = eqx.field(static=True)
    action_clip: float = eqx.field(static=True)

    def __init__(self, cfg, embed_dim, act_dim, parallel, *, key):  # `parallel`: as RSSM's; the GRU has none
        r = cfg.rssm
        ks = jax.random.split(key, 6)
        zdim = r.stoch * r.classes
        self.img_in = DenseNormAct(zdim + act_dim, r.units, key=ks[0])
        self.gru = GRUCell(r.units, r.deter, key=ks[1])
        self.img_out = DenseNormAct(r.deter, r.units, key=ks[2])
        self.img_stats = Linear(r.units, zdim, key=ks[3])
        self.obs_out = DenseNormAct(r.deter + embed_dim, r.units, key=ks[4])
        self.obs_stats = Linear(r.units, zdim, key=ks[5])
        if r.initial == "learned":
            self.initial_deter = jnp.zeros((r.deter,), jnp.float32)
        else:  # zeros
            self.initial_deter = None
        self.deter, self.stoch, self.classes, self.unimix = r.deter, r.stoch, r.classes, r.unimix
        self.action_clip = r.action_clip

    def feature_sizes(self):
        """Width of each latent entry once flattened (see layers.features)."""
        return dict(deter=self.deter, stoch=self.stoch * self.classes)

    # ------------------------------------------------------------ pieces

    def prior_logit(self, deter):  # [..., D] -> [..., S, C]
        return latent_logit(deter, self.img_out, self.img_stats, self.stoch, self.classes, self.unimix)

    def post_logit(self, deter, embed):  # [..., D], [..., E] -> [..., S, C]
        x = jnp.concatenate([deter, embed.astype(deter.dtype)], -1)
        return latent_logit(x, self.obs_out, self.obs_stats, self.stoch, self.classes, self.unimix)

    def initial(self, batch_shape, dtype=jnp.float32):
        """The initial latent, broadcast to `batch_shape`."""
        return initial_latent(self, self.deter, batch_shape, dtype)

    def _deter(self, latent, action):  # one GRU step: latent [N], action [N, A] -> deter [N, D]
        z = latent["stoch"].reshape(latent["stoch"].shape[:-2] + (-1,))
        x = self.img_in(jnp.concatenate([z, action.astype(z.dtype)], -1))
        return self.gru(x, latent["deter"])

    def _reset(self, latent, action, is_first):
        """Where is_first: the latent becomes the initial one and the previous action zero."""
        N = is_first.shape[0]
        init = self.initial((N,), latent["deter"].dtype)
        keep = lambda x, y: jnp.where(is_first.reshape((N,) + (1,) * (x.ndim - 1)), y, x)
        latent = jax.tree.map(keep, latent, init)
        return latent, action * (1.0 - is_first[:, None].astype(action.dtype))

    def _post_step(self, latent, action, embed, is_first, key):
        """Reset, GRU step, posterior: returns (post latent [N], prior logit [N, S, C])."""
        latent, action = self._reset(latent, action, is_first)
        deter = self._deter(latent, clip_action(action, self.action_clip))
        logit = self.post_logit(deter, embed)
        stoch = dists.onehot_sample(key, logit).astype(deter.dtype)
        return dict(stoch=stoch, logit=logit, deter=deter), self.prior_logit(deter)

    # ------------------------------------------------------------ training pass

    def observe(self, embed, prev_action, is_first, start, key):
        """Posterior and prior latents of whole sequences, one step after the other.

        embed [B, T, E], prev_action [B, T, A] (action before each observation),
        is_first [B, T] bool, start: latent [B] that precedes the window.
        Step t uses key `jax.random.split(key, T)[t]` for its posterior sample, the key
        `obs_step` would get for that step. Returns (post, prior), latents [B, T].
        """
        B, T = is_first.shape
        dtype = embed.dtype
        start = dict(
            stoch=start["stoch"].astype(dtype), logit=start["logit"], deter=start["deter"].astype(dtype)
        )
        tm = lambda x: jnp.swapaxes(x, 0, 1)  # [B, T, ...] <-> [T, B, ...]

        def step(latent, inp):
            embed_t, action_t, first_t, key_t = inp
            post, prior_logit = self._post_step(latent, action_t, embed_t, first_t, key_t)
            return post, (post, prior_logit)

        inputs = (tm(embed), tm(prev_action), tm(is_first), jax.random.split(key, T))
        _, (post, prior_logit) = jax.lax.scan(step, start, inputs)
        post = jax.tree.map(tm, post)
        prior = dict(stoch=None, logit=tm(prior_logit), deter=post["deter"])
        return post, prior

    # ------------------------------------------------------------ step mode

    def img_step(self, latent, action, key):
        """One step of the prior: latent [N], action [N, A] -> prior latent [N]."""
        deter = self._deter(latent, clip_action(action, self.action_clip))
        logit = self.prior_logit(deter)
        stoch = dists.onehot_sample(key, logit).astype(deter.dtype)
        return dict(stoch=stoch, logit=logit, deter=deter)

    def obs_step(self, latent, action, embed, is_first, key):
        """Acting: reset where is_first, one GRU step, posterior from (deter, embedding)."""
        latent = dict(
            latent, stoch=latent["stoch"].astype(embed.dtype), deter=latent["deter"].astype(embed.dtype)
        )
        post, _ = self._post_step(latent, action, embed, is_first, key)
        return post
