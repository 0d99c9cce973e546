"""Distributions used by DreamerV3/R2I heads, as small pure functions on float32 logits."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def symlog(x):
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x):
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


# ---------------------------------------------------------------- two-hot symlog


def twohot_bins(n=255, low=-20.0, high=20.0):
    """Bin centres in symlog space."""
    return jnp.linspace(low, high, n, dtype=jnp.float32)


def twohot_encode(y, bins):
    """Two-hot weights [..., K] of the symlog-space scalar y [...] over `bins` [K]."""
    y = jnp.clip(y, bins[0], bins[-1])
    above = jnp.clip(jnp.searchsorted(bins, y, side="right"), 1, len(bins) - 1)  # [...]
    below = above - 1
    lo, hi = bins[below], bins[above]
    w_hi = (y - lo) / (hi - lo)
    return (
        jax.nn.one_hot(below, len(bins)) * (1 - w_hi)[..., None]
        + jax.nn.one_hot(above, len(bins)) * w_hi[..., None]
    )


def twohot_mean(logits, bins):
    """Expected value, back in the original space: symexp(sum p * bins)."""
    return symexp((jax.nn.softmax(logits, -1) * bins).sum(-1))


def twohot_logprob(logits, target, bins):
    """log p(target) for a raw (not symlog) target [...]."""
    weights = twohot_encode(symlog(target), bins)
    return (weights * jax.nn.log_softmax(logits, -1)).sum(-1)


# ---------------------------------------------------------------- categoricals


def unimix_logits(logits, unimix):
    """Mix softmax(logits) with `unimix` of uniform; returns log-probabilities."""
    if unimix == 0.0:
        return jax.nn.log_softmax(logits, -1)
    probs = jax.nn.softmax(logits, -1)
    probs = (1 - unimix) * probs + unimix / logits.shape[-1]
    return jnp.log(probs)


def categorical_sample(key, logits):
    """Class indices [...] drawn by inverse CDF: one uniform per variable, no Gumbel logs
    (several times faster on CPU than jax.random.categorical for small class counts)."""
    probs = jax.nn.softmax(logits, -1)
    u = jax.random.uniform(key, logits.shape[:-1] + (1,), probs.dtype)
    idx = (jnp.cumsum(probs, -1) < u).sum(-1)
    return jnp.minimum(idx, logits.shape[-1] - 1)


def onehot_sample(key, logits):
    """One-hot sample with straight-through gradients: sample + probs - sg(probs)."""
    probs = jax.nn.softmax(logits, -1)
    sample = jax.nn.one_hot(categorical_sample(key, logits), logits.shape[-1], dtype=probs.dtype)
    return sample + probs - sg(probs)


def onehot_mode(logits):
    probs = jax.nn.softmax(logits, -1)
    mode = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=probs.dtype)
    return mode + probs - sg(probs)


def categorical_entropy(logits):
    logp = jax.nn.log_softmax(logits, -1)
    return -(jnp.exp(logp) * logp).sum(-1)


def categorical_kl(logits_p, logits_q):
    """KL[p || q] over the last axis."""
    logp, logq = jax.nn.log_softmax(logits_p, -1), jax.nn.log_softmax(logits_q, -1)
    return (jnp.exp(logp) * (logp - logq)).sum(-1)


def onehot_logprob(logits, onehot):
    return (jax.nn.log_softmax(logits, -1) * onehot).sum(-1)


# ---------------------------------------------------------------- Bernoulli and Normal


def bernoulli_logprob(logits, target):
    return target * jax.nn.log_sigmoid(logits) + (1 - target) * jax.nn.log_sigmoid(-logits)


def normal_logprob(mean, std, x):
    return (-0.5 * jnp.square((x - mean) / std) - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)


def normal_entropy(std):
    return (0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(std)).sum(-1)


class ActionDist(NamedTuple):
    """The actor's outputs [..., O] as a distribution over actions. Discrete: O = n logits mixed with
    `unimix` of the uniform, actions one-hot [..., n]. Continuous: O = 2 n, mean tanh(m) and std in
    [minstd, maxstd] from a sigmoid, actions [..., n] (paper appendix: actor)."""

    discrete: bool
    n: int
    unimix: float
    minstd: float
    maxstd: float

    def params(self, out):
        """unimix logits [..., n], or (mean, std) [..., n] each."""
        if self.discrete:
            return unimix_logits(out, self.unimix)
        mean, std = jnp.split(out, 2, -1)
        return jnp.tanh(mean), (self.maxstd - self.minstd) * jax.nn.sigmoid(std + 2.0) + self.minstd

    def sample(self, out, key, greedy=False):
        """An action [..., n]: sampled, or with `greedy` the mode."""
        d = self.params(out)
        if self.discrete:
            idx = jnp.argmax(d, -1) if greedy else categorical_sample(key, d)
            return jax.nn.one_hot(idx, self.n, dtype=jnp.float32)
        mean, std = d
        return mean if greedy else mean + std * jax.random.normal(key, mean.shape)

    def logprob_entropy(self, out, action):
        """(log-probability of `action` [...], entropy [...])."""
        d = self.params(out)
        if self.discrete:
            return onehot_logprob(d, action), categorical_entropy(d)
        mean, std = d
        return normal_logprob(mean, std, action), normal_entropy(std)
