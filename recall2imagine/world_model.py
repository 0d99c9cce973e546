"""The world model (paper, section 3): encoder, sequence model (S5 `RSSM` or the GRU baseline),
decoder, reward and continue heads; its loss on replayed windows and open-loop predictions.

`setup` is the agent's `agent.Setup` (config, compute dtype, two-hot bins).
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from recall2imagine.nets import dists
from recall2imagine.nets.gru import GRURSSM
from recall2imagine.nets.heads import Decoder, Encoder
from recall2imagine.nets.layers import MLP, feature_size, features
from recall2imagine.nets.rssm import RSSM

sg = jax.lax.stop_gradient


class WorldModel(eqx.Module):
    encoder: Encoder
    rssm: RSSM | GRURSSM
    decoder: Decoder
    reward: MLP
    cont: MLP

    def __init__(self, cfg, obs_space, act_dim, parallel, *, key):
        ks = jax.random.split(key, 5)
        self.encoder = Encoder(cfg, obs_space, key=ks[0])
        core = {"ssm": RSSM, "gru": GRURSSM}[cfg.rssm.core]
        self.rssm = core(cfg, self.encoder.out_dim, act_dim, parallel, key=ks[1])
        fs = lambda inputs, name: feature_size(inputs, self.rssm.feature_sizes(), name)
        self.decoder = Decoder(cfg, obs_space, fs(cfg.decoder.inputs, "decoder.inputs"), key=ks[2])
        r, c = cfg.reward_head, cfg.cont_head
        self.reward = MLP(
            fs(r.inputs, "reward_head.inputs"), r.layers, r.units, r.bins, key=ks[3], outscale=r.outscale
        )
        self.cont = MLP(
            fs(c.inputs, "cont_head.inputs"), c.layers, c.units, 1, key=ks[4], outscale=c.outscale
        )


def world_model_loss(wm, batch, key, setup, start=None):
    """World-model loss of replayed windows `batch` [B, T]: decoder, reward and continue negative
    log-likelihoods plus the dynamics and representation KLs with free bits (paper, eq. 5).

    `start`: None (each window starts from the initial latent, as in the paper) or (latent [B],
    action [B, A]): the state before the window and the action taken there, e.g. a latent carried
    over from the steps before the window. Returns (loss [], (posterior latents [B, T], metrics)).
    """
    cfg, dtype = setup.cfg, setup.dtype
    is_first = jnp.asarray(batch["is_first"])
    action = jnp.asarray(batch["action"], jnp.float32)  # [B, T, A], chosen after obs t
    if start is None:
        start = wm.rssm.initial((is_first.shape[0],), dtype), jnp.zeros_like(action[:, 0])
    start_latent, start_action = start
    prev_action = jnp.concatenate([start_action[:, None], action[:, :-1]], 1)
    post, prior = wm.rssm.observe(wm.encoder(batch, dtype), prev_action, is_first, start_latent, key)
    feat = lambda inputs: features(post, inputs, dtype)
    losses = dict(wm.decoder.loss(feat(cfg.decoder.inputs), batch))  # vector and/or image
    reward_logits = wm.reward(feat(cfg.reward_head.inputs))
    losses["reward"] = -dists.twohot_logprob(
        reward_logits, jnp.asarray(batch["reward"], jnp.float32), setup.reward_bins
    )
    cont_logit = wm.cont(feat(cfg.cont_head.inputs))[..., 0]
    cont = 1.0 - jnp.asarray(batch["is_terminal"], jnp.float32)
    losses["cont"] = -dists.bernoulli_logprob(cont_logit, cont)
    kl_dyn = dists.categorical_kl(sg(post["logit"]), prior["logit"]).sum(-1)  # [B, T]
    kl_rep = dists.categorical_kl(post["logit"], sg(prior["logit"])).sum(-1)
    losses["dyn"] = jnp.maximum(kl_dyn, cfg.free_bits)
    losses["rep"] = jnp.maximum(kl_rep, cfg.free_bits)
    s = cfg.loss_scales
    scales = dict(vector=s.vector, image=s.image, reward=s.reward, cont=s.cont, dyn=s.dyn, rep=s.rep)
    total = sum(scales[k] * v for k, v in losses.items()).mean()
    metrics = {f"{k}_loss": v.mean() for k, v in losses.items()}
    metrics.update(
        model_loss=total,
        kl_dyn=kl_dyn.mean(),
        prior_ent=dists.categorical_entropy(prior["logit"]).sum(-1).mean(),
        post_ent=dists.categorical_entropy(post["logit"]).sum(-1).mean(),
        reward_max_data=jnp.abs(batch["reward"]).max(),
        reward_max_pred=jnp.abs(dists.twohot_mean(reward_logits, setup.reward_bins)).max(),
        cont_acc=((cont_logit > 0) == (cont > 0.5)).mean(),
    )
    return total, (post, metrics)


def openloop(wm, batch, key, context, setup):
    """Predictions of a replay batch [B, T]: steps < `context` are reconstructions from the
    posterior; later steps are imagined open loop from the last context state with the recorded
    actions and never see an observation. Returns {decoded key or 'reward': [B, T, ...]}."""
    cfg, dtype = setup.cfg, setup.dtype
    k1, k2 = jax.random.split(key)
    obs = jax.tree.map(lambda x: jnp.asarray(x)[:, :context], batch)
    action = jnp.asarray(batch["action"], jnp.float32)  # [B, T, A], chosen after obs t
    prev_action = jnp.concatenate([jnp.zeros_like(action[:, :1]), action[:, : context - 1]], 1)
    post, _ = wm.rssm.observe(
        wm.encoder(obs, dtype),
        prev_action,
        jnp.asarray(obs["is_first"]),
        wm.rssm.initial((action.shape[0],), dtype),
        k1,
    )

    def step(latent, inp):
        act, k = inp
        latent = wm.rssm.img_step(latent, act, k)
        return latent, latent

    acts = jnp.swapaxes(action[:, context - 1 : -1], 0, 1)  # [T - context, B, A]
    _, imag = jax.lax.scan(
        step, jax.tree.map(lambda x: x[:, -1], post), (acts, jax.random.split(k2, acts.shape[0]))
    )
    imag = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), imag)  # [B, T - context, ...]
    seq = {
        k: jnp.concatenate([post[k], imag[k].astype(post[k].dtype)], 1)
        for k in ("stoch", "deter", "hidden")
        if k in post
    }
    pred = wm.decoder.predict(features(seq, cfg.decoder.inputs, dtype))
    pred["reward"] = dists.twohot_mean(
        wm.reward(features(seq, cfg.reward_head.inputs, dtype)), setup.reward_bins
    )
    return pred
