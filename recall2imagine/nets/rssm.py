"""The R2I world-model state: an S5 stack as sequence model with a non-recurrent posterior.

A latent is a dict of arrays with common leading batch dims `[...]`:
  stoch  [..., S, C]  one-hot sample of the categorical latent z
  logit  [..., S, C]  its log-probabilities (unimix applied)
  deter  [..., D]     h = SiLU(out_proj(stack output)), never fed back
  hidden [..., L, P]  complex64 SSM states of all layers: the memory carried over time

Sequence model: (h_t, x_t) = f(z_{t-1}, a_{t-1}, x_{t-1}); prior p(z_t | h_t);
posterior q(z_t | o_t) from the observation embedding alone (spec sections 3-4).
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from recall2imagine.nets import dists
from recall2imagine.nets.layers import DenseNormAct, Linear
from recall2imagine.nets.ssm import SSMStack


# ------------------------------------------------------------ shared by both cores (rssm, gru)


def latent_logit(x, out, stats, stoch, classes, unimix):
    """x [..., *] -> out (Dense+LN+SiLU) -> stats -> unimix log-probs [..., S, C] float32."""
    logits = stats(out(x)).reshape(x.shape[:-1] + (stoch, classes))
    return dists.unimix_logits(logits.astype(jnp.float32), unimix)


def clip_action(action, clip):
    """Rescale so that max |a| <= clip, without a gradient through the factor (0: no clip)."""
    if not clip:
        return action
    mag = jnp.maximum(1.0, jnp.abs(action).max(-1, keepdims=True) / clip)
    return action / jax.lax.stop_gradient(mag)


def initial_latent(core, deter_size, batch_shape, dtype, **extra):
    """Initial latent of a core with fields initial_deter, stoch, classes and method prior_logit:
    learned (deter = tanh(initial_deter), stoch = prior mode) or zeros; broadcast to batch_shape."""
    if core.initial_deter is None:
        deter = jnp.zeros((deter_size,), dtype)
        stoch = jnp.zeros((core.stoch, core.classes), dtype)
        logit = jnp.zeros((core.stoch, core.classes), jnp.float32)
    else:
        deter = jnp.tanh(core.initial_deter).astype(dtype)
        logit = core.prior_logit(deter)
        stoch = dists.onehot_mode(logit).astype(dtype)
    latent = dict(stoch=stoch, logit=logit, deter=deter, **extra)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, tuple(batch_shape) + x.shape), latent)


class RSSM(eqx.Module):
    img_in: DenseNormAct  # [stoch*classes + A] -> H
    stack: SSMStack
    out_proj: Linear  # H -> deter
    img_out: DenseNormAct  # deter -> H
    img_stats: Linear  # H -> S*C
    obs_out: DenseNormAct  # embed -> H
    obs_stats: Linear  # H -> S*C
    initial_hidden: jax.Array | None  # [2, L, P] real/imag, learned
    initial_deter: jax.Array | None  # [D], learned
    stoch: int = eqx.field(static=True)
    classes: int = eqx.field(static=True)
    unimix: float = eqx.field(static=True)
    action_clip: float = eqx.field(static=True)
    reset: bool = eqx.field(static=True)  # reset to the initial state at is_first inside training windows
    parallel: bool = eqx.field(static=True)  # associative scan (True) or lax.scan (False)

    def __init__(self, cfg, embed_dim, act_dim, parallel, *, key):
        r, s = cfg.rssm, cfg.ssm
        ks = jax.random.split(key, 7)
        zdim = r.stoch * r.classes
        self.img_in = DenseNormAct(zdim + act_dim, r.units, key=ks[0])
        self.stack = SSMStack(
            r.units,
            r.hidden,
            s.n_layers,
            n_blocks=s.n_blocks,
            C_init=s.C_init,
            conj_sym=s.conj_sym,
            discretization=s.discretization,
            dt_min=s.dt_min,
            dt_max=s.dt_max,
            clip_eigs=s.clip_eigs,
            prenorm=s.prenorm,
            mlp=s.mlp,
            glu=s.glu,
            use_norm=s.use_norm,
            dropout=s.dropout,
            key=ks[1],
        )
        self.out_proj = Linear(r.units, r.deter, key=ks[2])
        self.img_out = DenseNormAct(r.deter, r.units, key=ks[3])
        self.img_stats = Linear(r.units, zdim, key=ks[4])
        self.obs_out = DenseNormAct(embed_dim, r.units, key=ks[5])
        self.obs_stats = Linear(r.units, zdim, key=ks[6])
        if r.initial == "learned":
            self.initial_hidden = jnp.zeros((2,) + self.stack.state_shape, jnp.float32)
            self.initial_deter = jnp.zeros((r.deter,), jnp.float32)
        else:  # zeros
            self.initial_hidden = self.initial_deter = None
        self.stoch, self.classes, self.unimix = r.stoch, r.classes, r.unimix
        self.action_clip = r.action_clip
        self.reset = s.reset_mode == "init"
        self.parallel = parallel

    def feature_sizes(self):
        """Width of each latent entry once flattened (see layers.features)."""
        L, P = self.stack.state_shape
        return dict(deter=self.out_proj.w.shape[1], stoch=self.stoch * self.classes, hidden=2 * L * P)

    # ------------------------------------------------------------ pieces

    def prior_logit(self, deter):  # [..., D] -> [..., S, C]
        return latent_logit(deter, self.img_out, self.img_stats, self.stoch, self.classes, self.unimix)

    def post_logit(self, embed):  # [..., E] -> [..., S, C]
        return latent_logit(embed, self.obs_out, self.obs_stats, self.stoch, self.classes, self.unimix)

    def _deter(self, out):  # stack output [..., H] -> deter [..., D]
        return jax.nn.silu(self.out_proj(out))

    def _init_hidden(self):  # [L, P] complex64
        if self.initial_hidden is None:
            return jnp.zeros(self.stack.state_shape, jnp.complex64)
        return jax.lax.complex(self.initial_hidden[0], self.initial_hidden[1])

    def initial(self, batch_shape, dtype=jnp.float32):
        """The initial latent, broadcast to `batch_shape`."""
        return initial_latent(self, self.out_proj.w.shape[1], batch_shape, dtype, hidden=self._init_hidden())

    def _input(self, stoch, action):  # [..., S, C], [..., A] -> [..., H]
        z = stoch.reshape(stoch.shape[:-2] + (-1,))
        return self.img_in(jnp.concatenate([z, action.astype(z.dtype)], -1))

    # ------------------------------------------------------------ training pass

    def observe(self, embed, prev_action, is_first, start, key):
        """Posterior and prior latents of whole sequences, all steps at once.

        embed [B, T, E], prev_action [B, T, A] (action before each observation),
        is_first [B, T] bool, start: latent [B] that precedes the window.
        At an `is_first` step the model restarts exactly as acting does: previous
        stoch and hidden from the initial state, previous action zero.
        Returns (post, prior), latents [B, T].
        """
        B, T = is_first.shape
        dtype = embed.dtype
        post_logit = self.post_logit(embed)  # [B, T, S, C]
        post_stoch = dists.onehot_sample(key, post_logit).astype(dtype)
        init = self.initial((), dtype)
        first = is_first[..., None, None]
        prev_stoch = jnp.concatenate([start["stoch"][:, None].astype(dtype), post_stoch[:, :-1]], 1)
        prev_stoch = jnp.where(first, init["stoch"], prev_stoch)  # [B, T, S, C]
        prev_action = clip_action(prev_action, self.action_clip) * (
            1.0 - is_first[..., None].astype(prev_action.dtype)
        )
        u = self._input(prev_stoch, prev_action)  # [B, T, H]
        x0 = jnp.where(is_first[:, 0, None, None], init["hidden"], start["hidden"])  # [B, L, P]
        resets = is_first if self.reset else jnp.zeros_like(is_first)
        out, hidden = jax.vmap(lambda u, x0, r: self.stack.scan(u, x0, r, init["hidden"], self.parallel))(
            u, x0, resets
        )
        deter = self._deter(out)  # [B, T, D]
        prior_logit = self.prior_logit(deter)
        prior = dict(stoch=None, logit=prior_logit, deter=deter, hidden=hidden)
        post = dict(stoch=post_stoch, logit=post_logit, deter=deter, hidden=hidden)
        return post, prior

    # ------------------------------------------------------------ step mode

    def img_step(self, latent, action, key):
        """One step of the prior: latent [N], action [N, A] -> prior latent [N]."""
        u = self._input(latent["stoch"], clip_action(action, self.action_clip))  # [N, H]
        out, hidden = jax.vmap(self.stack.step)(u, latent["hidden"])
        deter = self._deter(out)
        logit = self.prior_logit(deter)
        stoch = dists.onehot_sample(key, logit).astype(deter.dtype)
        return dict(stoch=stoch, logit=logit, deter=deter, hidden=hidden)

    def obs_step(self, latent, action, embed, is_first, key):
        """Acting: reset where is_first, one prior step, posterior from the embedding."""
        N = is_first.shape[0]
        init = self.initial((N,), embed.dtype)
        keep = lambda x, y: jnp.where(is_first.reshape((N,) + (1,) * (x.ndim - 1)), y, x)
        latent = jax.tree.map(keep, latent, init)
        action = action * (1.0 - is_first[:, None].astype(action.dtype))
        prior = self.img_step(latent, action, key)
        post_logit = self.post_logit(embed)
        post_stoch = dists.onehot_sample(jax.random.fold_in(key, 1), post_logit).astype(embed.dtype)
        return dict(stoch=post_stoch, logit=post_logit, deter=prior["deter"], hidden=prior["hidden"])
