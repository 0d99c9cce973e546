"""Shared set-up of the test suite: JAX runs on the CPU in the test process (subprocesses that need
other settings, e.g. two CPU devices, set their own environment)."""

import atexit
import os
import shutil
import tempfile

import jax

import recall2imagine  # noqa: F401  (sets XLA's CPU options before JAX starts its backend)

jax.config.update("jax_platforms", "cpu")

# Runs started by the tests keep their compiled programs (`jax.compile_cache auto`) in one folder of this
# test session, shared by its workers and subprocesses, not in the user's ~/.cache.
if "R2I_TEST_CACHE_HOME" not in os.environ:
    os.environ["R2I_TEST_CACHE_HOME"] = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="r2i-tests-")
    atexit.register(shutil.rmtree, os.environ["R2I_TEST_CACHE_HOME"], ignore_errors=True)
