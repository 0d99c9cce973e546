"""S5 state-space sequence model used by R2I (spec section 3).

Every module here works on a single example (no batch axis); callers vmap over batch.
Internally everything is float32 / complex64. Complex tensors are never cast to a
low-precision dtype, and outputs come back in the input's dtype.

Shape names: T time, H model width, P nominal state size, S stored state size
(P, or P // 2 with conj_sym), L layers.
"""

from typing import Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_lecun = jax.nn.initializers.lecun_normal()  # truncated normal, variance 1 / fan_in


def hippo_diag_init(N_b: int, n_blocks: int):
    """Diagonalised HiPPO-N init, block-diagonal (spec 3.2).

    Returns Lambda [P] complex64, V [P, P] complex64, Vinv = V^H [P, P] complex64,
    with P = N_b * n_blocks and S = V diag(Lambda) V^H per block.
    """
    n = np.arange(N_b, dtype=np.float64)
    q = np.sqrt(2 * n + 1)
    A = -np.tril(np.outer(q, q), -1) - np.diag(n + 1)  # HiPPO-LegS [N_b, N_b]
    p = np.sqrt(n + 0.5)
    S = A + np.outer(p, p)  # normal matrix: -0.5 I + skew  [N_b, N_b]
    skew = 0.5 * (S - S.T)
    w, Vb = np.linalg.eigh(-1j * skew)  # Hermitian; skew = Vb diag(i w) Vb^H, w sorted ascending
    Lambda_b = np.mean(np.diag(S)) + 1j * w  # [N_b]
    Lambda = np.tile(Lambda_b, n_blocks)  # [P]
    V = np.kron(np.eye(n_blocks), Vb)  # [P, P] block-diagonal
    return (
        jnp.asarray(Lambda, jnp.complex64),
        jnp.asarray(V, jnp.complex64),
        jnp.asarray(V.conj().T, jnp.complex64),
    )


def discretize(Lambda, step, method: str):
    """Lambda [S] complex, step [S] real -> (Lbar [S], gamma [S]); Bbar = gamma[:, None] * B."""
    if method == "bilinear":
        denom = 1.0 - 0.5 * step * Lambda
        return (1.0 + 0.5 * step * Lambda) / denom, step / denom
    if method == "zoh":
        Lbar = jnp.exp(step * Lambda)
        return Lbar, (Lbar - 1.0) / Lambda
    raise ValueError(f"unknown discretization {method!r}")


def _complex(x):  # [..., 2] real -> [...] complex64
    return jax.lax.complex(x[..., 0], x[..., 1])


def _split(z):  # [...] complex -> [..., 2] float32
    return jnp.stack([z.real, z.imag], axis=-1).astype(jnp.float32)


class S5(eqx.Module):
    """One MIMO diagonal SSM layer (spec 3.1-3.3)."""

    Lambda_re: jax.Array  # [S]
    Lambda_im: jax.Array  # [S]
    B: jax.Array  # [S, H, 2]
    C: jax.Array  # [H, S, 2]
    D: jax.Array  # [H]
    log_step: jax.Array  # [S]
    discretization: str = eqx.field(static=True)
    conj_sym: bool = eqx.field(static=True)
    clip_eigs: bool = eqx.field(static=True)

    def __init__(
        self,
        H,
        P,
        *,
        n_blocks=8,
        C_init="trunc_standard_normal",
        conj_sym=False,
        discretization="bilinear",
        dt_min=1e-3,
        dt_max=0.1,
        clip_eigs=False,
        key,
    ):
        if P % n_blocks:
            raise ValueError(f"P={P} not divisible by n_blocks={n_blocks}")
        N_b = P // n_blocks
        Lambda, V, Vinv = hippo_diag_init(N_b, n_blocks)
        if conj_sym:
            if N_b % 2:
                raise ValueError("conj_sym needs an even block size")
            # eigh sorts ascending, so the first half of each block holds one member of every
            # conjugate pair (Im < 0); the other member is its complex conjugate.
            keep = np.flatnonzero(np.arange(P) % N_b < N_b // 2)
            Lambda, V = Lambda[keep], V[:, keep]  # [S], [P, S]
            Vinv = V.conj().T  # [S, P]
        S = Lambda.shape[0]
        kB, kC, kD, kS = jax.random.split(key, 4)

        B = _lecun(kB, (P, H), jnp.float32)  # real, fan_in = P
        self.B = _split(Vinv @ B.astype(jnp.complex64))  # [S, H, 2]
        if C_init in ("trunc_standard_normal", "lecun_normal"):
            C = _complex(_lecun(kC, (H, P, 2), jnp.float32))  # fan_in = H * P
            self.C = _split(C @ V)  # [H, S, 2]
        elif C_init == "complex_normal":
            self.C = jax.random.normal(kC, (H, S, 2), jnp.float32) * np.sqrt(0.5)
        else:
            raise ValueError(f"unknown C_init {C_init!r}")
        self.D = jax.random.normal(kD, (H,), jnp.float32)
        self.log_step = jax.random.uniform(kS, (S,), jnp.float32, np.log(dt_min), np.log(dt_max))
        self.Lambda_re = Lambda.real.astype(jnp.float32)
        self.Lambda_im = Lambda.imag.astype(jnp.float32)
        self.discretization = discretization
        self.conj_sym = conj_sym
        self.clip_eigs = clip_eigs

    @property
    def state_size(self) -> int:
        return self.Lambda_re.shape[0]

    def _discrete(self):
        re = jnp.minimum(self.Lambda_re, -1e-4) if self.clip_eigs else self.Lambda_re
        Lambda = jax.lax.complex(re, self.Lambda_im)  # [S]
        step = jnp.exp(self.log_step)  # [S]
        Lbar, gamma = discretize(Lambda, step, self.discretization)
        return Lbar, gamma[:, None] * _complex(self.B), _complex(self.C)  # [S], [S, H], [H, S]

    @staticmethod
    def _input(Bbar, u):
        # u [..., H] real -> Bbar u [..., S]; two real matmuls (complex dots are slow on CPU)
        return jax.lax.complex(u @ Bbar.real.T, u @ Bbar.imag.T)

    def _readout(self, C, x, u):  # x [..., S] complex, u [..., H] float32 -> [..., H]
        y = x.real @ C.real.T - x.imag @ C.imag.T  # Re(C x)
        return (2.0 * y if self.conj_sym else y) + self.D * u

    def scan(self, u, x0, reset, init, parallel: bool):
        """u [T, H], x0 [S], reset [T] bool, init [S] -> (y [T, H], xs [T, S] complex64).

        x_t = Lbar * (reset_t ? init : x_{t-1}) + Bbar u_t with x_{-1} = x0;
        y_t = Re(C x_t) (x2 with conj_sym) + D * u_t.
        """
        dtype = u.dtype
        u = u.astype(jnp.float32)
        x0 = x0.astype(jnp.complex64)
        init = init.astype(jnp.complex64)
        Lbar, Bbar, C = self._discrete()
        Bu = self._input(Bbar, u)  # [T, S]
        if parallel:
            d = reset.astype(jnp.float32)[:, None]  # [T, 1]
            A = Lbar * (1.0 - d)  # [T, S]
            b = Bu + d * (Lbar * init)  # [T, S]
            b = b.at[0].add(A[0] * x0)  # fold the carried-in state into element 0

            def combine(earlier, later):
                A_i, b_i = earlier
                A_j, b_j = later
                return A_j * A_i, A_j * b_i + b_j

            _, xs = jax.lax.associative_scan(combine, (A, b))  # [T, S]
        else:

            def body(x, inp):
                bu, r = inp
                x = Lbar * jnp.where(r, init, x) + bu
                return x, x

            _, xs = jax.lax.scan(body, x0, (Bu, reset))  # [T, S]
        return self._readout(C, xs, u).astype(dtype), xs

    def step(self, u, x):
        """u [H], x [S] -> (y [H], x_new [S]); one recurrent update, no reset logic."""
        dtype = u.dtype
        u = u.astype(jnp.float32)
        Lbar, Bbar, C = self._discrete()
        x = Lbar * x.astype(jnp.complex64) + self._input(Bbar, u)  # [S]
        return self._readout(C, x, u).astype(dtype), x


def _per_step(f, v):  # apply a per-vector module to [H] or [T, H]
    return f(v) if v.ndim == 1 else jax.vmap(f)(v)


def _dropout(x, rate, key):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _dense(H, key):  # H -> H, LeCun-normal kernel, zero bias
    lin = eqx.nn.Linear(H, H, key=key)
    w = _lecun(key, (H, H), jnp.float32)  # square, so fan_in = H either way
    return eqx.tree_at(lambda m: (m.weight, m.bias), lin, (w, jnp.zeros((H,), jnp.float32)))


class SSMBlock(eqx.Module):
    """One "SingleLayer" (spec 3.6): SSM -> GELU -> GLU -> residual -> post LayerNorm."""

    ssm: S5
    dense_a: Optional[eqx.nn.Linear]
    dense_b: Optional[eqx.nn.Linear]
    norm: Optional[eqx.nn.LayerNorm]
    prenorm: bool = eqx.field(static=True)
    mlp: bool = eqx.field(static=True)
    glu: bool = eqx.field(static=True)
    use_norm: bool = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        H,
        P,
        *,
        n_blocks=8,
        C_init="trunc_standard_normal",
        conj_sym=False,
        discretization="bilinear",
        dt_min=1e-3,
        dt_max=0.1,
        clip_eigs=False,
        prenorm=False,
        mlp=True,
        glu=True,
        use_norm=True,
        dropout=0.0,
        key,
    ):
        k_ssm, k_a, k_b = jax.random.split(key, 3)
        self.ssm = S5(
            H,
            P,
            n_blocks=n_blocks,
            C_init=C_init,
            conj_sym=conj_sym,
            discretization=discretization,
            dt_min=dt_min,
            dt_max=dt_max,
            clip_eigs=clip_eigs,
            key=k_ssm,
        )
        self.dense_a = _dense(H, k_a) if mlp else None
        self.dense_b = _dense(H, k_b) if mlp and glu else None
        self.norm = eqx.nn.LayerNorm(H, eps=1e-6) if (prenorm or use_norm) else None
        self.prenorm, self.mlp, self.glu = prenorm, mlp, glu
        self.use_norm, self.dropout = use_norm, float(dropout)

    def _post(self, skip, y, key):  # skip, y [..., H] float32
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        y = _dropout(jax.nn.gelu(y, approximate=True), self.dropout, k1)
        if self.mlp:
            a = _per_step(self.dense_a, y)
            y = a * jax.nn.sigmoid(_per_step(self.dense_b, y)) if self.glu else a
        v = skip + _dropout(y, self.dropout, k2)
        if self.use_norm and not self.prenorm:
            v = _per_step(self.norm, v)
        return v

    def scan(self, u, x0, reset, init, parallel: bool, *, key=None):
        """u [T, H], x0 [S], reset [T], init [S] -> (v [T, H], xs [T, S]). key=None: no dropout."""
        skip = u.astype(jnp.float32)
        v = _per_step(self.norm, skip) if self.prenorm else skip
        y, xs = self.ssm.scan(v, x0, reset, init, parallel)
        return self._post(skip, y, key).astype(u.dtype), xs

    def step(self, u, x, *, key=None):
        """u [H], x [S] -> (v [H], x_new [S])."""
        skip = u.astype(jnp.float32)
        v = self.norm(skip) if self.prenorm else skip
        y, x = self.ssm.step(v, x)
        return self._post(skip, y, key).astype(u.dtype), x


class SSMStack(eqx.Module):
    """n_layers SSMBlocks; hidden state [L, S] complex64."""

    blocks: list

    def __init__(
        self,
        H,
        P,
        n_layers,
        *,
        n_blocks=8,
        C_init="trunc_standard_normal",
        conj_sym=False,
        discretization="bilinear",
        dt_min=1e-3,
        dt_max=0.1,
        clip_eigs=False,
        prenorm=False,
        mlp=True,
        glu=True,
        use_norm=True,
        dropout=0.0,
        key,
    ):
        self.blocks = [
            SSMBlock(
                H,
                P,
                n_blocks=n_blocks,
                C_init=C_init,
                conj_sym=conj_sym,
                discretization=discretization,
                dt_min=dt_min,
                dt_max=dt_max,
                clip_eigs=clip_eigs,
                prenorm=prenorm,
                mlp=mlp,
                glu=glu,
                use_norm=use_norm,
                dropout=dropout,
                key=k,
            )
            for k in jax.random.split(key, n_layers)
        ]

    @property
    def state_shape(self):
        return (len(self.blocks), self.blocks[0].ssm.state_size)

    def _keys(self, key):
        return [None] * len(self.blocks) if key is None else list(jax.random.split(key, len(self.blocks)))

    def scan(self, u, x0, reset, init, parallel: bool, *, key=None):
        """u [T, H], x0 [L, S], reset [T], init [L, S] -> (out [T, H], hidden [T, L, S])."""
        v, hidden = u, []
        for l, (blk, k) in enumerate(zip(self.blocks, self._keys(key))):
            v, xs = blk.scan(v, x0[l], reset, init[l], parallel, key=k)
            hidden.append(xs)
        return v, jnp.stack(hidden, axis=1)

    def step(self, u, x, *, key=None):
        """u [H], x [L, S] -> (out [H], x_new [L, S])."""
        v, new = u, []
        for l, (blk, k) in enumerate(zip(self.blocks, self._keys(key))):
            v, xl = blk.step(v, x[l], key=k)
            new.append(xl)
        return v, jnp.stack(new)
