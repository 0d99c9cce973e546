"""benchmarks/first_update.py: a tiny run prints each stage and a fault count per call."""

import pathlib
import re
import subprocess
import sys

from recall2imagine import allocator

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(*args):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "first_update.py"), "--configs", "popgym", "debug", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_tiny_run_prints_stages_and_faults():
    out = run("--calls", "2")
    # the allocator r2i-train would run on: TCMalloc where installed
    want = "TCMalloc" if allocator.find() else "system"
    assert re.search(rf"^allocator {want}$", out.stdout, re.M), out.stdout
    assert re.search(r"^trace and lower [\d.]+ s, XLA compile [\d.]+ s$", out.stdout, re.M)
    calls = re.findall(r"^call (\d): [\d.]+ s, (\d+) minor page faults", out.stdout, re.M)
    assert [c for c, _ in calls] == ["0", "1"]
    assert re.search(r"^peak RSS \d+ MB$", out.stdout, re.M)


def test_system_malloc_on_request():
    assert re.search(r"^allocator system$", run("--calls", "1", "--jax.malloc", "system").stdout, re.M)
