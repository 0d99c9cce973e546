"""benchmarks/first_update.py: a tiny run prints each stage and a fault count per call."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_tiny_run_prints_stages_and_faults():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "first_update.py"),
            "--configs",
            "popgym",
            "debug",
            "--calls",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^trace and lower [\d.]+ s, XLA compile [\d.]+ s$", out.stdout, re.M)
    calls = re.findall(r"^call (\d): [\d.]+ s, (\d+) minor page faults", out.stdout, re.M)
    assert [c for c, _ in calls] == ["0", "1"]
    assert re.search(r"^peak RSS \d+ MB$", out.stdout, re.M)
