"""benchmarks/vs_official_run.py: rates from synthetic metric rows, and both sides' commands (no run, no
official code: the official's effective config comes from the script's table of its popgym values)."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "vs_official_run.py"


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("bench_vs_official_run", SCRIPT)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_rates_from_rows(mod):
    rows = [
        (20.0, {"step": 3100, "episode/score": 0.1}),  # a prefill row: no train metrics
        (95.0, {"step": 3116, "train/model_loss_mean": 1.0, "fps": 0.2}),  # after the first update
        (105.0, {"step": 3316, "fps": 20.0}),
        (115.0, {"step": 3516, "train/model_loss_mean": 0.9}),
        (150.5, {"step": 9999, "train/model_loss_mean": 0.8}),  # written while stopping: left out
    ]
    s = mod.summarize(rows, seconds=150, end_s=160.0)
    assert s["rows"] == 4 and s["steady_rows"] == 3
    assert s["first_update_s"] == 95.0 and s["steady_s"] == 20.0
    assert s["steady_sps"] == pytest.approx(400 / 20)
    # whole run: the steps at the end over the run's length (stopped at `seconds`)
    assert s["last_step"] == 3516 and s["last_s"] == 115.0 and s["average_sps"] == pytest.approx(3516 / 150)
    assert mod.summarize(rows, 150, end_s=100.0)["average_sps"] == pytest.approx(3516 / 100)  # ended early
    assert mod.summarize(rows[:4])["average_sps"] == pytest.approx(
        3516 / 115
    )  # no length: the last row's time
    # the official's first update is timed by its stdout marker when there is one
    assert mod.summarize(rows, 150, first_update_s=80.0)["first_update_s"] == 80.0


def test_a_write_of_several_rows_counts_its_largest_step(mod):
    # the official writes the episodes since its last write, each at the step it ended, then the
    # write's own row; rows of one write arrive together, in any step order
    rows = [(40.0, {"step": s, "episode/score": 0.0}) for s in (208, 416, 2912)]
    rows += [(130.0, {"step": 3104, "train/model_loss_mean": 1.0})]
    rows += [(140.0, {"step": 3150, "episode/score": 0.0}), (140.0, {"step": 3304, "fps": 20.0})]
    rows += [(150.0, {"step": 3480, "fps": 17.6}), (150.0, {"step": 3400, "episode/score": 0.0})]
    s = mod.summarize(rows, seconds=200)
    assert s["first_update_s"] == 130.0 and s["steady_rows"] == 5 and s["last_step"] == 3480
    assert s["steady_sps"] == pytest.approx((3480 - 3104) / 20)


def test_our_rows_before_the_first_update_do_not_count(mod):
    # ours writes `train/updates` on every row: 0 before the first update's results are in
    rows = [
        (30.0, {"step": 3104, "train/updates": 0, "fps": 5.0}),
        (41.0, {"step": 3120, "train/updates": 1}),
    ]
    rows += [(51.0 + 10 * i, {"step": 3200 + 100 * i, "train/updates": 10 + 12 * i}) for i in range(5)]
    s = mod.summarize(rows)
    assert s["first_update_s"] == 41.0 and s["steady_rows"] == 6
    assert s["steady_sps"] == pytest.approx((3600 - 3120) / (91 - 41))


def test_no_train_rows_yet(mod):
    # e.g. the official still compiling its first update when the run is stopped
    s = mod.summarize([(10.0, {"step": 2912}), (12.0, {"step": 2704})], seconds=150, end_s=150)
    assert s["steady_sps"] is None and s["first_update_s"] is None and s["steady_rows"] == 0
    assert s["last_step"] == 2912 and s["average_sps"] == pytest.approx(2912 / 150)
    assert mod.summarize([])["rows"] == 0 and mod.summarize([])["average_sps"] is None


def test_read_rows_waits_for_a_cut_line(mod, tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert mod.read_rows(path, 0) == ([], 0)
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "fp')
    rows, offset = mod.read_rows(path, 0)
    assert rows == [{"step": 1}]
    with open(path, "a") as f:
        f.write('s": 3.0}\n')
    rows, offset = mod.read_rows(path, offset)
    assert rows == [{"step": 2, "fps": 3.0}] and mod.read_rows(path, offset) == ([], offset)


def test_official_prefill(mod):
    # fills until B*T*amount sequences of T steps: amount*(T-1) more steps, in driver calls of 100 steps
    assert mod.official_prefill(2, 256, 4) == 3100  # 2048 + 1020 -> 3100
    assert mod.official_prefill(4, 64, 8) == 2600  # 2048 + 504, calls of 104 steps (13 per env)


@pytest.mark.parametrize("shape", ["main", "cpu"])
def test_both_sides_get_the_same_shapes(mod, shape, tmp_path):
    cfg = mod.our_config(mod.SHAPES[shape][0])
    ours, official, official_args = mod.commands(shape, cfg, [], "/scratch/r2i", tmp_path, 10.0)
    values = mod.official_expected(official_args)
    assert mod.mismatches(cfg, values) == []
    B, T = (4, 64) if shape == "main" else (2, 256)
    assert (cfg["batch_size"], cfg["batch_length"], cfg["run.train_ratio"], cfg["imag_starts"]) == (
        B,
        T,
        64,
        0,
    )
    assert (values["batch_size"], values["batch_length"], values["run.train_ratio"]) == (B, T, 64)
    assert cfg["envs.amount"] == values["envs.amount"] == (8 if shape == "main" else 4)
    assert cfg["jax.precision"] == values["jax.precision"] == "float32"

    def flag(cmd, key):
        return cmd[cmd.index(key) + 1]

    # ours: our train module, jsonl rows every 10 s, no checkpoint, eval or report during the run, the
    # official's prefill, no compile cache; the official: its train.py in its venv, uniform replay
    assert ours[:3] == [mod.sys.executable, "-m", "recall2imagine.train"]
    assert flag(ours, "--logdir") == str(tmp_path / "ours") and flag(ours, "--task") == mod.TASK
    assert flag(ours, "--run.loggers") == "jsonl" and flag(ours, "--run.log_every") == "10"
    assert float(flag(ours, "--run.save_every")) >= 1e9 and flag(ours, "--run.eval_eps") == "0"
    assert flag(ours, "--run.report_every") == "0" and flag(ours, "--jax.compile_cache") == "off"
    assert int(flag(ours, "--run.train_fill")) == mod.official_prefill(B, T, values["envs.amount"])
    assert official[:2] == ["/scratch/r2i/venv/bin/python", "recall2imagine/train.py"]
    assert flag(official, "--logdir") == str(tmp_path / "official") and flag(official, "--task") == mod.TASK
    assert flag(official, "--replay") == "uniform" and flag(official, "--replay_size") == str(
        max(40 * T, 10000)
    )
    assert flag(official, "--run.log_every") == "10" and int(flag(official, "--run.save_every")) >= 1e9
    assert flag(official, "--batch_size") == str(B) and flag(official, "--batch_length") == str(T)


def test_cpu_shapes_reach_the_official_by_its_key_names(mod, tmp_path):
    cfg = mod.our_config(mod.SHAPES["cpu"][0])
    _, official, _ = mod.commands("cpu", cfg, [], "/scratch/r2i", tmp_path, 10.0)
    args = dict(zip(official[4::2], official[5::2]))
    assert args["--ssm_cell.n_blocks"] == "4" and "--ssm.n_blocks" not in args
    assert (args["--rssm.deter"], args["--rssm.units"], args["--rssm.hidden"]) == ("128", "128", "64")
    assert (args["--rssm.stoch"], args["--rssm.classes"], args["--ssm.n_layers"]) == ("16", "16", "2")
    for head in ("reward_head", "cont_head", "actor", "critic"):
        assert (args[f"--{head}.layers"], args[f"--{head}.units"]) == ("2", "128")
    for part in ("encoder", "decoder"):
        assert (args[f"--{part}.mlp_layers"], args[f"--{part}.mlp_units"]) == ("2", "128")


def test_an_override_for_our_side_that_changes_a_shape_is_named(mod, tmp_path):
    # extra --key value pairs go to our side only; the official's command comes from the shape set alone
    base = mod.our_config(mod.SHAPES["cpu"][0])
    ours, official, official_args = mod.commands(
        "cpu", base, ["--rssm.deter", "256"], "/scratch/r2i", tmp_path, 10.0
    )
    assert ours[-2:] == ["--rssm.deter", "256"] and official[official.index("--rssm.deter") + 1] == "128"
    cfg = mod.our_config(mod.SHAPES["cpu"][0] + ["--rssm.deter", "256", "--imag_starts", "128"])
    bad = mod.mismatches(cfg, mod.official_expected(official_args))
    assert len(bad) == 2 and bad[0] == "rssm.deter: ours 256, official 128"
    assert bad[1].startswith("imag_starts: ours 128")


def test_pinning(mod):
    assert mod.cpus(1) == "0" and mod.cpus(1, 1) == "1" and mod.cpus(2) == "0,1"
