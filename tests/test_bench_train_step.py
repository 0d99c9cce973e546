"""benchmarks/train_step.py: image observations at one tiny point, config checks, the targets table."""

import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "train_step.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_train_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(*args, timeout=240):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_image_point_writes_outputs(tmp_path):
    # the debug block keeps the default `.*` cnn keys, so it selects the 64x64x3 image with its CNN
    out = _run(
        "--configs",
        "debug",
        "--obs",
        "image",
        "--lengths",
        "8",
        "--batch_size",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--cores",
        "ssm",
        "--agent",
        "False",
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    md = (tmp_path / "train_step_image.md").read_text()
    assert "image observations" in md and "encoder cnn" in md and "| 8 | 1 |" in md
    csv = (tmp_path / "train_step_image.csv").read_text().splitlines()
    header, row = csv[0].split(","), csv[1].split(",")
    assert len(csv) == 2 and row[header.index("obs")] == "image" and row[header.index("error")] == ""
    assert float(row[header.index("wm_first_s")]) > 0 and float(row[header.index("wm_ms")]) > 0
    assert (tmp_path / "train_step_image.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "train_step.md").exists()


def test_config_without_image_keys_fails_early(tmp_path):
    out = _run("--configs", "popgym", "debug", "--obs", "image", "--out", str(tmp_path), timeout=60)
    assert out.returncode == 2 and "cnn_keys" in out.stderr and "mmaze" in out.stderr
    out = _run("--configs", "mmaze", "mmaze_small", "--obs", "vector", "--out", str(tmp_path), timeout=60)
    assert out.returncode == 2 and "mlp_keys" in out.stderr
    assert not any(tmp_path.iterdir())


def test_batch_size_and_both_point_arguments():
    bench = _module()
    args, overrides = bench.parse_args(
        [
            "--configs",
            "popgym",
            "debug",
            "--batch_size",
            "4",
            "--lengths",
            "64",
            "1024",
            "--obs",
            "both",
            "--rssm.deter",
            "64",
        ]
    )
    assert overrides == ["--rssm.deter", "64"] and bench.obs_kinds(args) == ["vector", "image"]
    vec = bench.point_argv(args, overrides, "ssm", 1024, "vector")
    img = bench.point_argv(args, overrides, "ssm", 1024, "image")
    assert vec[vec.index("--batch_size") + 1] == "4" and "--encoder.cnn_keys" not in vec
    assert img[img.index("--encoder.cnn_keys") + 1] == "image"
    for obs, argv in (("vector", vec), ("image", img)):
        assert bench.check_obs(bench.configlib.parse(argv), obs) is None
    args, _ = bench.parse_args(["--tokens", "256", "--lengths", "64"])
    assert bench.batch_of(args, 64) == 4 and bench.batch_of(args, 512) == 1


def test_targets_table():
    bench = _module()
    args, _ = bench.parse_args(
        ["--configs", "popgym", "popgym_main", "--batch_size", "4", "--lengths", "64", "1024", "--targets"]
    )
    common = dict(obs="vector", batch=4, device="cpu:cpu", precision="float32")
    rows = [
        dict(common, core="ssm", length=64, train_ms=500.0, train_first_s=30.0),
        dict(common, core="gru", length=64, train_ms=900.0, train_first_s=20.0),
        dict(common, core="ssm", length=1024, train_ms=12000.0, train_first_s=61.0),
    ]
    results = [r[-1] for r in bench.target_rows(args, rows)]
    assert results == ["pass", "FAIL", "pass", "FAIL"]
    text = bench.target_text(args, rows)
    assert "| median full update | 4 x 64 | 0.50 | <= 0.7 | pass | 0.90 |" in text and "Note" not in text
    assert "not measured" in bench.target_text(args, rows[:2])
