"""Shared set-up of the test suite: JAX runs on the CPU in the test process (subprocesses that need
other settings, e.g. two CPU devices, set their own environment)."""

import jax

import recall2imagine  # noqa: F401  (sets XLA's CPU options before JAX starts its backend)

jax.config.update("jax_platforms", "cpu")
