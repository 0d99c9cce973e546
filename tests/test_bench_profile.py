"""benchmarks/profile_update.py's FLOP counter against hand counts and XLA's own count, and
benchmarks/vs_official.py's parsing of the official bench and its ratio table."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_matmul_flops_match_hand_counts():
    prof = _module("profile_update")

    def f(x, w, wc, y, img, ker, p):
        step = lambda c, _: (jnp.tanh(c @ w), None)  # [4, 8] @ [8, 8]: 2*4*8*8 = 512 per step
        c, _ = jax.lax.scan(step, x, None, length=5)  # 2,560
        z = wc @ wc  # complex [3, 3] @ [3, 3]: 4 real products of 2*3*3*3 = 54 -> 216
        unused = y @ y.T  # [6, 2] @ [2, 6]: 144, dead code
        conv = jax.lax.conv_general_dilated(img, ker, (1, 1), "VALID")  # [1, 3, 3, 3] outputs x 2*2*3*3
        branch = jax.lax.cond(p, lambda: (x @ w).sum(), lambda: x.sum())  # the costlier branch: 512
        del unused
        return c.sum() + z.real.sum() + conv.sum() + branch

    args = (
        jnp.ones((4, 8)),
        jnp.ones((8, 8)),
        jnp.ones((3, 3), jnp.complex64),
        jnp.ones((6, 2)),
        jnp.ones((1, 2, 5, 5)),
        jnp.ones((3, 2, 3, 3)),
        True,
    )
    closed = jax.make_jaxpr(f)(*args)
    live = 2560 + 216 + 2 * 27 * 18 + 512
    assert prof.live_flops(closed) == live
    assert prof.matmul_flops(closed.jaxpr) == live + 144


def test_matmul_flops_match_xla_cost_analysis_without_loops():
    prof = _module("profile_update")
    g = lambda a, b, c: (a @ b) @ c
    args = (jnp.ones((64, 32)), jnp.ones((32, 48)), jnp.ones((48, 16)))
    xla = jax.jit(g).lower(*args).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    assert prof.live_flops(jax.make_jaxpr(g)(*args)) == 2 * 64 * 32 * 48 + 2 * 64 * 48 * 16
    np.testing.assert_allclose(prof.live_flops(jax.make_jaxpr(g)(*args)), xla["flops"], rtol=0.01)


def test_official_bench_output_is_parsed_and_tabled(tmp_path):
    vs = _module("vs_official")
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench.sh").write_text(
        'echo "max RSS of this process 1536 MB"\n'
        'echo "official r2i 4x$1: init 3.0 s, first update 200.5 s, median update 2.50 s (n=$2)"\n'
    )
    r = vs.official(bench, tmp_path, 64, 3, timeout=60)
    assert r == dict(update_s=2.5, first_s=200.5, rss_mb=1536.0)
    (bench / "bench.sh").write_text('echo "ImportError: no module named embodied" >&2; exit 1\n')
    assert vs.official(bench, tmp_path, 64, 3, timeout=60) == dict(
        error="ImportError: no module named embodied"
    )
    ours = [dict(update_s=1.0, first_s=20.0, rss_mb=1024.0), dict(update_s=1.5, first_s=21.0, rss_mb=2048.0)]
    text = vs.table({64: dict(official=[r, r], ours=ours)}, 4)
    row = text.splitlines()[2]
    assert "| 4 x 64 |" in row and "**2.00x**" in row and "(median 1.25)" in row and "1.0-2.0" in row
    failed = vs.table({1024: dict(official=[dict(error="timeout 10 s")], ours=ours)}, 4)
    assert "failed: timeout 10 s" in failed
