"""Host memory after XLA compilations (recall2imagine.devices)."""

import jax
import jax.numpy as jnp


def test_trim_after_compiles_runs_after_each_long_enough_compile(monkeypatch):
    """The listener that hands the compiler's freed host memory back calls its trim after a compile
    that took at least `min_seconds`, and not after shorter ones."""
    from recall2imagine import devices

    monkeypatch.setattr(devices, "_trim_listener", None)
    calls = []
    listener = devices.trim_after_compiles(lambda: calls.append(1), min_seconds=0.0)
    try:
        jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(7)).block_until_ready()  # a program not compiled before
        assert calls, "no trim after a compile"
        listener(devices.COMPILE_EVENT, 0.5)  # as jax.monitoring calls it
        n = len(calls)
        devices._trim_listener = None
        short = devices.trim_after_compiles(lambda: calls.append(1), min_seconds=10.0)
        short(devices.COMPILE_EVENT, 0.5)
        short("/jax/some/other_event", 60.0)
        assert len(calls) == n
        short(devices.COMPILE_EVENT, 12.0)
        assert len(calls) == n + 1
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        if devices._trim_listener is not None:
            jax.monitoring.unregister_event_duration_listener(devices._trim_listener)
    assert devices.release_free_memory() is not None  # this test machine runs glibc


def test_release_programs_drops_the_compiled_program_and_a_later_call_recompiles():
    import equinox as eqx

    from recall2imagine import devices

    compiles = []
    f = eqx.filter_jit(lambda x: (compiles.append(1), x * 2.0)[1])  # the append runs when it traces
    assert float(f(jnp.ones(()))) == 2.0 and float(f(jnp.ones(()))) == 2.0 and len(compiles) == 1
    assert f._cached._cache_size() == 1
    devices.release_programs(f)
    assert f._cached._cache_size() == 0
    assert float(f(jnp.ones(()))) == 2.0 and f._cached._cache_size() == 1
