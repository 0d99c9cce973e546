"""Logger outputs (metrics.jsonl, TensorBoard, W&B offline) and the Progress line; no training."""

import glob
import json
import os
import struct
import sys
import time
import types

import pytest

from recall2imagine.logger import Logger, Progress, check_outputs


def read_tb_scalars(tb_dir):
    """{tag: [(step, value), ...]} from the TFRecord event files in `tb_dir` (no tensorboard needed)."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    files = sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*")))
    assert files, f"no event files in {tb_dir}"
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            record = data[pos + 12 : pos + 12 + length]  # skip the length's crc; the data crc follows
            assert len(record) == length, "truncated event record"
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _log_two_writes(logger):
    logger.add({"episode/score": 1.0, "episode/length": 10})
    logger.episode(40, 1.0, 10)
    logger.add({"episode/score": 3.0, "episode/length": 30})
    logger.episode(70, 3.0, 30)
    logger.add({"model_loss": 0.5}, prefix="train")
    first = logger.write(100)
    logger.add({"model_loss": 0.25}, prefix="train")
    logger.write(200)
    return first


def _check_jsonl_and_tb(logdir):
    lines = [json.loads(line) for line in open(logdir / "metrics.jsonl")]
    assert lines == [
        {"step": 100, "episode/length": 20.0, "episode/score": 2.0, "train/model_loss": 0.5},
        {"step": 200, "train/model_loss": 0.25},
    ]
    assert [json.loads(line) for line in open(logdir / "scores.jsonl")] == [  # one line per episode
        {"step": 40, "episode/score": 1.0, "episode/length": 10},
        {"step": 70, "episode/score": 3.0, "episode/length": 30},
    ]
    scalars = read_tb_scalars(logdir / "tb")
    assert scalars["train/model_loss"] == [(100, 0.5), (200, 0.25)]
    assert scalars["episode/score"] == [(100, 2.0)]


def test_jsonl_and_tensorboard(tmp_path, capsys):
    lines = []
    logger = Logger(tmp_path, ["jsonl", "tensorboard", "console"], console=lines.append)
    assert _log_two_writes(logger)["episode/score"] == 2.0
    logger.close()
    _check_jsonl_and_tb(tmp_path)
    assert len(lines) == 2 and "step 100" in lines[0] and "episode/score 2" in lines[0]
    summary = logger.summary()
    assert str(tmp_path / "metrics.jsonl") in summary and f"tensorboard --logdir {tmp_path / 'tb'}" in summary
    assert "W&B" not in summary and "\n" not in summary
    assert capsys.readouterr().err == ""


def test_all_three_outputs_with_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install -e . installs it)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logdir = tmp_path / "run"
    config = {"seed": 3, "run": {"loggers": ["jsonl", "tensorboard", "wandb"]}, "r2i_marker_key": "abc"}
    logger = Logger(logdir, ["jsonl", "tensorboard", "wandb"], wandb_name="unit-test", config=config)
    _log_two_writes(logger)
    logger.close()
    _check_jsonl_and_tb(logdir)
    runs = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*"))
    assert len(runs) == 1, runs
    assert logger.wandb_offline and logger.wandb_dir == runs[0]
    for _ in range(100):  # wandb's service process may still be writing the run file
        data = b"".join(open(p, "rb").read() for p in glob.glob(os.path.join(runs[0], "*.wandb")))
        if b"train/model_loss" in data:
            break
        time.sleep(0.1)
    assert b"train/model_loss" in data and b"r2i_marker_key" in data  # the metrics and the config
    assert f"wandb sync {runs[0]}" in logger.summary()


def test_a_failing_backend_warns_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("wandb")

    def init(**kwargs):
        raise RuntimeError("network is unreachable\nsecond line")

    fake.init = init
    fake.Settings = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = Logger(tmp_path, ["jsonl", "tensorboard", "wandb"], wandb_name="x")
    _log_two_writes(logger)
    logger.close()
    _check_jsonl_and_tb(tmp_path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: W&B logging is off") and "unreachable" in err
    assert "W&B" not in logger.summary()


def test_unknown_logger_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError) as info:
        Logger(tmp_path, ["jsonl", "tensorbord"])
    message = str(info.value)
    assert "\n" not in message and "'tensorbord'" in message
    assert "jsonl, tensorboard, wandb" in message
    assert check_outputs(["jsonl", " tensorboard", ""]) == ("jsonl", "tensorboard")


def test_train_rejects_an_unknown_logger(capsys):
    from recall2imagine import train

    assert train.main(["--configs", "popgym", "debug", "--run.loggers", "jsonl,csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'csv'" in err and "jsonl, tensorboard, wandb" in err
    assert "\n" not in err


class FakeTTY:
    def __init__(self, tty=True):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_progress_is_silent_when_not_a_tty():
    stream, clock = FakeTTY(tty=False), Clock()
    progress = Progress(1000, stream, clock=clock)
    for step in range(0, 1000, 10):
        clock.t += 1.0
        progress.update(step, step // 10, [0.5])
    progress.close()
    assert stream.text == ""
    progress.println("a periodic line")  # the plain lines still go out
    assert stream.text == "a periodic line\n"


def test_progress_line_on_a_tty_is_rate_limited():
    stream, clock = FakeTTY(), Clock()
    progress = Progress(10_000, stream, clock=clock)
    progress.update(0, 0, [])
    for i in range(1, 101):  # 100 calls within 0.5 s: no redraw
        clock.t += 0.004
        progress.update(i, 0, [])
    assert stream.text.count("\r") == 1
    clock.t = 1002.0  # 2 s after the first draw: 2000 steps and 100 updates later
    progress.update(2000, 100, [1.0, 0.0])
    assert stream.text.count("\r") == 2 and "\n" not in stream.text
    last = stream.text.split("\r")[-1]
    assert "step 2,000/10,000 (20%)" in last
    assert "1,000 fps" in last and "50.00 upd/s" in last and "return 0.500" in last
    assert "ETA 8s" in last
    progress.println("[12:00:00] step 2000 | fps 1000")  # clears the status, prints, redraws next
    assert stream.text.endswith("\r[12:00:00] step 2000 | fps 1000\n")
    clock.t += 0.1
    progress.update(2100, 105, 0.25)
    assert stream.text.split("\n")[-1].startswith("\rstep 2,100/10,000") and "return 0.250" in stream.text
    progress.close()
    assert stream.text.endswith("\n")


def test_rewind_jsonl_drops_rows_after_the_step_and_keeps_a_backup(tmp_path):
    from recall2imagine.logger import rewind_jsonl

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "x": s * 0.5} for s in (10, 20, 30, 40)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 50, "x"'  # cut by a kill
    path.write_text(text)
    assert rewind_jsonl(str(path), 25)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 20]
    assert (tmp_path / "metrics.jsonl.1.bak").read_text() == text
    assert not rewind_jsonl(str(path), 25)  # nothing beyond: the file and backups stay as they are
    assert not (tmp_path / "metrics.jsonl.2.bak").exists()
    assert not rewind_jsonl(str(tmp_path / "missing.jsonl"), 0)


def test_logger_resumed_at_a_step_continues_one_clean_line(tmp_path):
    from recall2imagine.logger import Logger

    log = Logger(tmp_path, ("jsonl", "tensorboard"))
    for step in (100, 200, 300):
        log.add({"loss": step})
        log.write(step)
    log.close()
    log = Logger(tmp_path, ("jsonl", "tensorboard"), resume_step=200)  # checkpoint at 200, killed at 300
    log.add({"loss": 1.0})
    log.write(250)
    log.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 250]


def test_a_row_at_a_step_already_written_goes_into_the_next_row(tmp_path):
    from recall2imagine.logger import Logger

    (tmp_path / "metrics.jsonl").write_text('{"step": 100}\n{"step": 200, "loss": 0.5}\n{"step": 250}\n')
    log = Logger(tmp_path, ("jsonl",), resume_step=200)  # the row of step 250 goes to a .bak
    log.add({"loss": 1.0})
    assert log.write(200) == {}  # the resumed checkpoint's step: its row exists already
    log.add({"loss": 3.0, "checkpoint/seconds": 0.5})
    assert log.write(300) == {"checkpoint/seconds": 0.5, "loss": 2.0}
    log.add({"loss": 5.0})
    assert log.write(300) == {} and log.write(299) == {}  # never twice, never back
    log.add({"loss": 7.0})
    log.write(310)
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [100, 200, 300, 310] and rows[3]["loss"] == 6.0
    fresh = Logger(
        tmp_path / "new", ("jsonl",), resume_step=200
    )  # resumed into a new logdir: nothing there yet
    fresh.add({"loss": 1.0})
    assert fresh.write(200) == {"loss": 1.0}
    fresh.close()
