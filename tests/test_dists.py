"""Distributions against direct computations: two-hot, unimix, sampling, the actor's ActionDist."""

import jax
import jax.numpy as jnp
import numpy as np

from recall2imagine.nets import dists


def test_twohot_round_trip():
    bins = dists.twohot_bins(255)
    y = np.concatenate([np.linspace(-1000, 1000, 101), [0.0, 1e-3, -0.5, 3.7]]).astype(np.float32)
    w = np.asarray(dists.twohot_encode(dists.symlog(jnp.asarray(y)), bins))
    assert np.allclose(w.sum(-1), 1.0, atol=1e-6)
    assert ((w > 0).sum(-1) <= 2).all()
    # decode: expected bin in symlog space, back through symexp
    decoded = np.sign(w @ np.asarray(bins)) * np.expm1(np.abs(w @ np.asarray(bins)))
    np.testing.assert_allclose(decoded, y, rtol=1e-4, atol=1e-4)
    # logits that put the two-hot mass on the bins decode to the same value
    mean = np.asarray(dists.twohot_mean(jnp.log(jnp.asarray(w) + 1e-30), bins))
    np.testing.assert_allclose(mean, y, rtol=1e-3, atol=1e-3)


def test_twohot_logprob_peaks_at_target():
    bins = dists.twohot_bins(255)
    logits = jnp.log(dists.twohot_encode(dists.symlog(jnp.float32(5.0)), bins) + 1e-8)
    lp = [float(dists.twohot_logprob(logits, jnp.float32(t), bins)) for t in (-3.0, 0.0, 5.0, 40.0)]
    assert np.argmax(lp) == 2


def test_unimix_floor():
    logits = jnp.array([[50.0, -50.0, -50.0, -50.0]])
    probs = np.exp(np.asarray(dists.unimix_logits(logits, 0.01)))
    assert probs.min() >= 0.01 / 4 - 1e-7 and abs(probs.sum() - 1) < 1e-6


def test_inverse_cdf_sampling_frequencies():
    logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
    idx = np.asarray(dists.categorical_sample(jax.random.PRNGKey(0), jnp.broadcast_to(logits, (20000, 4))))
    freq = np.bincount(idx, minlength=4) / len(idx)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_action_dist_discrete_and_continuous():
    out = jnp.array([[2.0, 0.0, -1.0]])
    d = dists.ActionDist(True, 3, 0.01, 0.1, 1.0)
    probs = 0.99 * np.exp(out[0]) / np.exp(out[0]).sum() + 0.01 / 3
    np.testing.assert_array_equal(d.sample(out, None, greedy=True), [[1.0, 0.0, 0.0]])
    logp, ent = d.logprob_entropy(out, jnp.array([[0.0, 1.0, 0.0]]))
    np.testing.assert_allclose(logp, [np.log(probs[1])], rtol=1e-5)
    np.testing.assert_allclose(ent, [-(probs * np.log(probs)).sum()], rtol=1e-5)

    c = dists.ActionDist(False, 2, 0.0, 0.1, 1.0)
    out = jnp.array([[0.5, -0.3, 0.0, 1.0]])  # mean params, std params
    mean, std = np.tanh([0.5, -0.3]), 0.9 / (1 + np.exp(-np.array([2.0, 3.0]))) + 0.1
    np.testing.assert_allclose(c.sample(out, None, greedy=True), [mean], rtol=1e-6)
    draws = np.asarray(c.sample(jnp.broadcast_to(out, (40000, 4)), jax.random.PRNGKey(0)))
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(draws.std(0), std, rtol=0.02)
    x = np.array([[0.1, 0.2]])
    logp, ent = c.logprob_entropy(out, jnp.asarray(x))
    want = (-0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(logp, want, rtol=1e-5)
    np.testing.assert_allclose(ent, [(0.5 * np.log(2 * np.pi * np.e * std**2)).sum()], rtol=1e-5)
