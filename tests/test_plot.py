import json

import pytest

from recall2imagine import plot


def _fake_run(path, slope):
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for i in range(50):
            f.write(json.dumps({"step": i * 100, "episode/score": slope * i, "fps": 3.0}) + "\n")
            f.write(json.dumps({"step": i * 100 + 50, "train/model_loss": 1.0}) + "\n")
        f.write('{"step": 5000, "episode/sco')  # a line cut off by a crash is skipped


def test_plot_writes_png_and_averages_seeds(tmp_path):
    for seed, slope in enumerate([1.0, 2.0]):
        _fake_run(tmp_path / f"s{seed}", slope)
    steps, values = plot.load_curve(tmp_path / "s0")
    assert len(steps) == 50 and values[-1] == 49.0
    out = tmp_path / "curves.png"
    code = plot.main(
        [
            str(tmp_path / "s0"),
            str(tmp_path / "s1"),
            "--labels",
            "r2i",
            "r2i",
            "--out",
            str(out),
            "--window",
            "5",
        ]
    )
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_smooth_is_trailing_mean():
    import numpy as np

    np.testing.assert_allclose(plot.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])


def test_missing_run_is_an_error(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_episode_metrics_come_from_scores_jsonl(tmp_path):
    """Runs log every episode to scores.jsonl but only one row per interval to metrics.jsonl."""
    run = tmp_path / "run"
    _fake_run(run, 1.0)
    with open(run / "scores.jsonl", "w") as f:
        for i in range(120):
            f.write(json.dumps({"step": i * 10, "episode/score": -1.0, "episode/length": 10}) + "\n")
    steps, values = plot.load_curve(run)
    assert len(steps) == 120 and set(values) == {-1.0}
    steps, values = plot.load_curve(run, "fps")  # other metrics still from metrics.jsonl
    assert len(steps) == 50 and set(values) == {3.0}


def test_ylim_sets_the_axis_and_refuses_an_empty_range(tmp_path, monkeypatch):
    import matplotlib.axes

    _fake_run(tmp_path / "s0", 1.0)
    seen = []
    real = matplotlib.axes.Axes.set_ylim
    monkeypatch.setattr(
        matplotlib.axes.Axes, "set_ylim", lambda ax, *a, **k: seen.append(a) or real(ax, *a, **k)
    )
    out = tmp_path / "c.png"
    assert plot.main([str(tmp_path / "s0"), "--out", str(out), "--ylim", "0.4", "0.7"]) == 0
    assert seen and seen[0] == (0.4, 0.7) and out.exists()  # matplotlib may set it again internally
    with pytest.raises(SystemExit) as e:
        plot.main([str(tmp_path / "s0"), "--out", str(out), "--ylim", "1", "1"])
    assert e.value.code == 2
