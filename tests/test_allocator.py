"""recall2imagine/allocator.py: when r2i-train re-executes itself with TCMalloc, and that it loads."""

import os
import subprocess
import sys

import pytest

from recall2imagine import allocator, config as configlib


@pytest.fixture
def not_loaded(monkeypatch):
    monkeypatch.setattr(allocator, "loaded", lambda: False)


def test_plan_preloads_the_library_once(monkeypatch, not_loaded):
    monkeypatch.setattr(allocator, "find", lambda: "libtcmalloc_minimal.so.4")
    env = allocator.plan("auto", {"LD_PRELOAD": "libother.so", "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"})
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"
    assert (
        env[allocator.MARK] == "1" and env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"
    )  # the user's wins
    assert allocator.plan("auto", {})["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(2**40)
    assert allocator.plan("auto", {})["TCMALLOC_RELEASE_RATE"] == "0"
    assert allocator.plan("tcmalloc", {})["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
    assert allocator.plan("auto", env) is None  # the re-executed process goes on
    assert allocator.plan("system", {}) is None


def test_plan_without_the_library(monkeypatch, not_loaded):
    monkeypatch.setattr(allocator, "find", lambda: None)
    assert allocator.plan("auto", {}) is None
    with pytest.raises(allocator.AllocatorError, match="apt-get install libtcmalloc-minimal4"):
        allocator.plan("tcmalloc", {})


def test_plan_when_already_loaded(monkeypatch):
    monkeypatch.setattr(allocator, "loaded", lambda: True)
    monkeypatch.setattr(allocator, "find", lambda: "libtcmalloc_minimal.so.4")
    assert allocator.plan("tcmalloc", {}) is None


def test_config_refuses_an_unknown_allocator():
    with pytest.raises(configlib.ConfigError, match="jax.malloc"):
        configlib.parse(["--configs", "debug", "--jax.malloc", "jemalloc"])


@pytest.mark.skipif(
    allocator.find() is None, reason="TCMalloc not installed (apt-get install libtcmalloc-minimal4)"
)
def test_reexec_loads_tcmalloc_and_keeps_the_command():
    """A real re-execution: the new process has TCMalloc mapped (read from /proc, not from the
    environment) and the same arguments; with `system` nothing changes."""
    code = (
        "import sys; from recall2imagine import allocator, devices; allocator.reexec(sys.argv[1]); "
        "devices.release_free_memory()(); print(allocator.loaded(), sys.argv[1:])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.MARK)}
    for choice, want in (("auto", "True"), ("system", "False")):
        out = subprocess.run(
            [sys.executable, "-c", code, choice, "x y"], capture_output=True, text=True, env=env, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{want} ['{choice}', 'x y']"
