"""Tests for recall2imagine.nets.ssm against slow, independent numpy references."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recall2imagine.nets.ssm import S5, SSMStack, discretize, hippo_diag_init

H, P, T = 6, 16, 48


def _close(got, ref, rtol=1e-4):
    got, ref = np.asarray(got), np.asarray(ref)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def _crandn(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _np_reference(m: S5, u, x0, reset, init):
    """Python loop in float64/complex128, from the raw leaves (bilinear or zoh)."""
    lam = np.asarray(m.Lambda_re, np.float64) + 1j * np.asarray(m.Lambda_im, np.float64)
    dt = np.exp(np.asarray(m.log_step, np.float64))
    if m.discretization == "bilinear":
        lbar = (1 + dt / 2 * lam) / (1 - dt / 2 * lam)
        gam = dt / (1 - dt / 2 * lam)
    else:
        lbar = np.exp(dt * lam)
        gam = (lbar - 1) / lam
    Bm = np.asarray(m.B, np.float64)
    Cm = np.asarray(m.C, np.float64)
    Bbar = gam[:, None] * (Bm[..., 0] + 1j * Bm[..., 1])
    Cc = Cm[..., 0] + 1j * Cm[..., 1]
    D = np.asarray(m.D, np.float64)
    x = np.asarray(x0, np.complex128)
    ys, xs = [], []
    for t in range(len(u)):
        prev = np.asarray(init, np.complex128) if reset[t] else x
        x = lbar * prev + Bbar @ u[t]
        y = (Cc @ x).real
        ys.append((2 * y if m.conj_sym else y) + D * u[t])
        xs.append(x)
    return np.array(ys), np.array(xs)


def _inputs(seed, S, T=T, p_reset=0.15):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((T, H)).astype(np.float32)
    x0 = _crandn(rng, S)
    init = _crandn(rng, S)
    reset = rng.random(T) < p_reset
    reset[0] = False
    reset[T // 2] = True
    return u, x0, reset, init


@eqx.filter_jit
def _scan(m, u, x0, reset, init, parallel):
    return m.scan(u, x0, reset, init, parallel)


@eqx.filter_jit
def _step_loop(m, u, x0):
    def body(x, ut):
        y, x = m.step(ut, x)
        return x, (y, x)

    _, (ys, xs) = jax.lax.scan(body, x0, u)
    return ys, xs


# ----------------------------------------------------------------------------- init


def test_hippo_init():
    N_b, nb = 8, 3
    Lam, V, Vinv = (np.asarray(a, np.complex128) for a in hippo_diag_init(N_b, nb))
    assert Lam.shape == (N_b * nb,) and V.shape == Vinv.shape == (N_b * nb, N_b * nb)
    np.testing.assert_allclose(Lam.real, -0.5, atol=1e-6)
    im = np.sort(Lam[:N_b].imag)
    np.testing.assert_allclose(im, -im[::-1], atol=1e-4)  # +/- pairs
    np.testing.assert_allclose(np.tile(Lam[:N_b], nb), Lam)
    # Independent normal HiPPO matrix S (loops over entries).
    S = np.zeros((N_b, N_b))
    for n in range(N_b):
        for k in range(N_b):
            a = -np.sqrt(2 * n + 1) * np.sqrt(2 * k + 1) if n > k else (-(n + 1.0) if n == k else 0.0)
            S[n, k] = a + np.sqrt(n + 0.5) * np.sqrt(k + 0.5)
    for blk in range(nb):
        sl = slice(blk * N_b, (blk + 1) * N_b)
        Vb = V[sl, sl]
        np.testing.assert_allclose(Vb.conj().T @ Vb, np.eye(N_b), atol=1e-5)
        skew = (S - S.T) / 2
        np.testing.assert_allclose(Vb @ np.diag(1j * Lam[sl].imag) @ Vb.conj().T, skew, atol=1e-4)
        np.testing.assert_allclose(Vb @ np.diag(Lam[sl]) @ Vb.conj().T, S, atol=1e-4)
    mask = np.kron(np.eye(nb), np.ones((N_b, N_b)))
    assert np.all(V[mask == 0] == 0)
    np.testing.assert_allclose(Vinv, V.conj().T, atol=1e-7)
    # Spec 3.2: for N_b = 16 the imaginary parts span +/-81.
    lam16 = np.asarray(hippo_diag_init(16, 1)[0])
    assert 80 < np.abs(lam16.imag).max() < 82


def test_param_shapes_and_init():
    m = S5(H, P, n_blocks=2, key=jax.random.PRNGKey(0))
    assert m.Lambda_re.shape == m.Lambda_im.shape == m.log_step.shape == (P,)
    assert m.B.shape == (P, H, 2) and m.C.shape == (H, P, 2) and m.D.shape == (H,)
    assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(m))
    assert np.all(np.exp(m.log_step) >= 1e-3 * 0.999) and np.all(np.exp(m.log_step) <= 0.1 * 1.001)


# ----------------------------------------------------------------------------- discretisation


def test_discretize_closed_forms():
    lam, dt = -0.7 + 2j, 0.05
    Lbar, gam = (
        complex(np.asarray(a)[0])
        for a in discretize(jnp.array([lam], jnp.complex64), jnp.array([dt], jnp.float32), "bilinear")
    )
    assert abs(Lbar - (1 + dt / 2 * lam) / (1 - dt / 2 * lam)) < 1e-6
    assert abs(gam - dt / (1 - dt / 2 * lam)) < 1e-6
    assert abs(Lbar - np.exp(lam * dt)) < 1e-4  # O(dt^3) agreement with the exact flow

    Lbar, gam = (
        complex(np.asarray(a)[0])
        for a in discretize(jnp.array([lam], jnp.complex64), jnp.array([dt], jnp.float32), "zoh")
    )
    assert abs(Lbar - np.exp(lam * dt)) < 1e-6
    assert abs(gam - (np.exp(lam * dt) - 1) / lam) < 1e-6
    # ZOH integrates x' = lam x + b u (constant u) exactly: compare with fine RK4.
    x0, bu = 0.3 - 1.1j, 0.8 + 0.4j
    f = lambda x: lam * x + bu
    x, n = x0, 2000
    h = dt / n
    for _ in range(n):
        k1 = f(x)
        k2 = f(x + h / 2 * k1)
        k3 = f(x + h / 2 * k2)
        k4 = f(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    assert abs(Lbar * x0 + gam * bu - x) < 1e-6


# ----------------------------------------------------------------------------- scan correctness


@pytest.mark.parametrize("discretization", ["bilinear", "zoh"])
def test_scan_matches_loop(discretization):
    m = S5(H, P, n_blocks=2, discretization=discretization, key=jax.random.PRNGKey(1))
    u, x0, reset, init = _inputs(0, P)
    y_ref, x_ref = _np_reference(m, u, x0, reset, init)
    for parallel in (True, False):
        y, xs = _scan(m, u, x0, reset, init, parallel)
        assert y.dtype == jnp.float32 and xs.dtype == jnp.complex64 and xs.shape == (T, P)
        _close(xs, x_ref)
        _close(y, y_ref)


def test_parallel_and_sequential_gradients_agree():
    m = S5(H, P, n_blocks=2, key=jax.random.PRNGKey(2))
    u, x0, reset, init = _inputs(1, P)
    rng = np.random.default_rng(5)
    wy = rng.standard_normal((T, H)).astype(np.float32)
    wx = _crandn(rng, T, P)

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(model_and_u, parallel):
        model, uu = model_and_u
        y, xs = model.scan(uu, x0, reset, init, parallel)
        return jnp.sum(y * wy) + jnp.sum((xs * wx).real)

    g_par = grad((m, jnp.asarray(u)), True)
    g_seq = grad((m, jnp.asarray(u)), False)
    for a, b in zip(jax.tree_util.tree_leaves(g_par), jax.tree_util.tree_leaves(g_seq)):
        _close(a, b, rtol=2e-4)


def test_scan_equals_step_loop_s5():
    m = S5(H, P, n_blocks=2, key=jax.random.PRNGKey(3))
    u, x0, _, init = _inputs(2, P)
    no_reset = np.zeros(T, bool)
    ys, xs = _step_loop(m, u, x0)
    for parallel in (True, False):
        y, x = _scan(m, u, x0, no_reset, init, parallel)
        _close(x, xs)
        _close(y, ys)


def test_reset_equals_fresh_sequence():
    m = S5(H, P, n_blocks=2, key=jax.random.PRNGKey(4))
    u, x0, _, init = _inputs(3, P)
    k = 20
    reset = np.zeros(T, bool)
    reset[k] = True
    for parallel in (True, False):
        y, xs = _scan(m, u, x0, reset, init, parallel)
        y_f, xs_f = _scan(m, u[k:], init, np.zeros(T - k, bool), init, parallel)
        _close(xs[k:], xs_f)
        _close(y[k:], y_f)
        # the part before the reset is untouched
        y_n, _ = _scan(m, u, x0, np.zeros(T, bool), init, parallel)
        _close(y[:k], y_n[:k])


def test_low_precision_input_dtype():
    m = S5(H, P, n_blocks=2, key=jax.random.PRNGKey(5))
    u, x0, reset, init = _inputs(4, P)
    y, xs = _scan(m, jnp.asarray(u, jnp.bfloat16), x0, reset, init, True)
    assert y.dtype == jnp.bfloat16 and xs.dtype == jnp.complex64


# ----------------------------------------------------------------------------- conj_sym


def test_conj_sym_matches_full_conjugate_system():
    """A conj_sym layer equals the full system made of its states plus their conjugates."""
    half = S5(H, P, n_blocks=2, conj_sym=True, key=jax.random.PRNGKey(6))
    assert half.state_size == P // 2 and half.B.shape == (P // 2, H, 2)
    assert np.all(np.asarray(half.Lambda_im) < 0)
    full = S5(H, P, n_blocks=2, key=jax.random.PRNGKey(7))
    neg = jnp.array([1.0, -1.0])
    full = eqx.tree_at(
        lambda m: (m.Lambda_re, m.Lambda_im, m.B, m.C, m.D, m.log_step),
        full,
        (
            jnp.concatenate([half.Lambda_re, half.Lambda_re]),
            jnp.concatenate([half.Lambda_im, -half.Lambda_im]),
            jnp.concatenate([half.B, half.B * neg], axis=0),
            jnp.concatenate([half.C, half.C * neg], axis=1),
            half.D,
            jnp.concatenate([half.log_step, half.log_step]),
        ),
    )
    u, x0, reset, init = _inputs(5, P // 2)
    y_h, _ = _scan(half, u, x0, reset, init, True)
    y_ref, _ = _np_reference(half, u, x0, reset, init)
    _close(y_h, y_ref)
    y_f, _ = _scan(full, u, np.concatenate([x0, x0.conj()]), reset, np.concatenate([init, init.conj()]), True)
    _close(y_h, y_f)


# ----------------------------------------------------------------------------- stack


def _stack(conj_sym, **kw):
    return SSMStack(
        H,
        P,
        2,
        n_blocks=2,
        C_init="trunc_standard_normal",
        conj_sym=conj_sym,
        discretization="bilinear",
        dt_min=1e-3,
        dt_max=0.1,
        clip_eigs=False,
        prenorm=False,
        mlp=True,
        glu=True,
        use_norm=True,
        dropout=0.0,
        key=jax.random.PRNGKey(8),
        **kw,
    )


@pytest.mark.parametrize("conj_sym", [False, True])
def test_stack_scan_equals_step(conj_sym):
    stack = _stack(conj_sym)
    L, S = stack.state_shape
    assert (L, S) == (2, P // 2 if conj_sym else P)
    rng = np.random.default_rng(9)
    u = rng.standard_normal((T, H)).astype(np.float32)
    x0 = _crandn(rng, L, S)
    init = _crandn(rng, L, S)

    @eqx.filter_jit
    def run_steps(st, u, x):
        def body(x, ut):
            o, x = st.step(ut, x)
            return x, (o, x)

        return jax.lax.scan(body, x, u)[1]

    outs, hs = run_steps(stack, u, x0)
    assert hs.shape == (T, L, S) and hs.dtype == jnp.complex64
    for parallel in (True, False):
        out, hidden = _scan(stack, u, x0, np.zeros(T, bool), init, parallel)
        assert out.shape == (T, H) and hidden.shape == (T, L, S)
        _close(hidden, hs)
        _close(out, outs)


def test_stack_dropout_only_with_key():
    stack = SSMStack(H, P, 2, n_blocks=2, dropout=0.5, key=jax.random.PRNGKey(10))
    L, S = stack.state_shape
    u = np.random.default_rng(0).standard_normal((T, H)).astype(np.float32)
    z = np.zeros((L, S), np.complex64)
    no_reset = np.zeros(T, bool)
    a, _ = stack.scan(u, z, no_reset, z, False)
    b, _ = stack.scan(u, z, no_reset, z, False)
    c, _ = stack.scan(u, z, no_reset, z, False, key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
