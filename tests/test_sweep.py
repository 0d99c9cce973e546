import csv

import pytest

from recall2imagine import sweep


def test_expand_tasks():
    assert sweep.expand_tasks(["bsuite:memory_len/2-4", "gym_popgym:popgym-RepeatPreviousEasy-v0"]) == [
        "bsuite:memory_len/2", "bsuite:memory_len/3", "bsuite:memory_len/4",
        "gym_popgym:popgym-RepeatPreviousEasy-v0"]
    with pytest.raises(ValueError):
        sweep.expand_tasks(["bsuite:memory_len/4-2"])


def test_two_tiny_runs_and_summary(tmp_path, capsys):
    argv = ["--configs", "bsuite", "debug", "--tasks", "bsuite:memory_len/0-1", "--seeds", "1", "--workers", "2",
            "--logdir", str(tmp_path), "--run.steps", "150", "--run.loggers", "jsonl", "--last", "10"]
    assert sweep.main(argv) == 0
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["bsuite:memory_len/0", "bsuite:memory_len/1"]
    for r in rows:
        assert r["status"] == "done" and int(r["episodes"]) > 10
        assert -1.0 <= float(r["score"]) <= 1.0
    md = (tmp_path / "summary.md").read_text()
    assert "bsuite:memory_len/1" in md and "mean return" in md
    # bsuite's own CSV is there for its analysis code
    assert list((tmp_path / "bsuite_memory_len_0" / "seed0" / "bsuite").glob("*.csv"))
    # ... and the summary has bsuite's score of it (tests/test_bsuite_score.py checks the numbers)
    assert "| memory_len | " in md and "2 of 23 (partial)" in md and "| memory_len/1 | memory_length=2 |" in md
    assert all(int(r["bsuite_episodes"]) > 0 for r in rows)
    assert (tmp_path / "summary_bsuite.csv").exists()
    # a second call skips finished runs
    capsys.readouterr()
    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.count(": done (skipped)") == 2
