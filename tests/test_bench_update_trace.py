"""benchmarks/update_trace.py: a trace is reproducible, and --compare tells equal traces from different ones."""

import json
import subprocess
import sys

from test_bench_profile import ROOT

SCRIPT = str(ROOT / "benchmarks" / "update_trace.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600)


def test_trace_is_reproducible_and_compare_finds_a_change(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for out in (a, b):
        r = _run("--updates", "2", "--out", str(out), "--configs", "popgym", "debug")
        assert r.returncode == 0, r.stderr[-2000:]
    trace = json.loads(a.read_text())
    assert len(trace["updates"]) == 2 and "model_loss" in trace["updates"][1]
    assert _run("--compare", str(a), str(b)).returncode == 0
    trace["updates"][1]["model_loss"] *= 1 + 1e-4
    c.write_text(json.dumps(trace))
    r = _run("--compare", str(a), str(c))
    assert r.returncode == 1 and "model_loss" in r.stdout.splitlines()[0]
