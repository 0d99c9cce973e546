"""Memory horizons of the tasks and the trainer's warning when replayed windows cannot hold them."""

import pytest

from recall2imagine import config as configlib
from recall2imagine.envs import memory_horizon
from recall2imagine.envs import memory_maze as mm
from recall2imagine.trainer import Trainer, window_warning


@pytest.mark.parametrize(
    "task, steps",
    [
        ("gym_popgym:popgym-RepeatPreviousEasy-v0", 4),
        ("gym_popgym:popgym-RepeatPreviousMedium-v0", 32),
        ("gym_popgym:popgym-RepeatPreviousHard-v0", 64),
        ("gym_popgym:popgym-AutoencodeEasy-v0", 103),
        ("gym_popgym:popgym-ConcentrationEasy-v0", 104),
        ("bsuite:memory_len/15", 30),
        ("bsuite:memory_len/22", 100),
        ("dm_bsuite_memory_len/19", 70),
    ],
)
def test_memory_horizon_of_memory_tasks(task, steps):
    found = memory_horizon(task)
    assert found is not None and found[0] == steps, found


def test_no_horizon_for_tasks_without_memory():
    # discounting_chain keeps its context in the observation; catch is fully observed
    assert memory_horizon("bsuite:discounting_chain/2") is None
    assert memory_horizon("bsuite:catch/0") is None


def test_time_limit_caps_the_horizon():
    steps, what = memory_horizon("gym_popgym:popgym-RepeatPreviousHard-v0", length=50)
    assert steps == 50 and "50-step time limit" in what
    assert memory_horizon("gym_popgym:popgym-RepeatPreviousHard-v0", length=500)[0] == 64


@pytest.mark.skipif(not mm.available(), reason="memory-maze / dm-control not installed")
def test_memory_maze_horizon_is_the_episode():
    assert memory_horizon("gym_memory_maze:MemoryMaze-9x9-v0")[0] == 1000  # 250 s at 4 Hz
    assert memory_horizon("gym_memory_maze:MemoryMaze-15x15-v0")[0] == 4000
    assert memory_horizon("gym_memory_maze:MemoryMaze-9x9-HiFreq-Vis-v0")[0] == 10000  # 40 Hz


def test_window_warning_thresholds():
    horizon = (64, "repeats the card 64 steps back")
    assert window_warning(128, horizon) is None  # 2x the horizon: half the positions see it
    assert window_warning(1024, horizon) is None
    assert window_warning(64, None) is None
    part = window_warning(100, horizon)
    assert "--batch_length 100" in part and "only 36% of its positions" in part and "128 or more" in part
    none = window_warning(64, horizon)
    assert "no position in it sees 64 steps back" in none and "--batch_length 128" in none
    assert "\n" not in none


def _trainer_stderr(tmp_path, capsys, task, *flags):
    cfg = configlib.parse(
        [
            "--configs",
            "popgym",
            "debug",
            "--task",
            task,
            "--logdir",
            str(tmp_path / "run"),
            "--run.eval_eps",
            "0",
            *flags,
        ]
    )
    Trainer(cfg, "cpu").close()
    return capsys.readouterr().err


def test_trainer_warns_once_when_the_window_is_too_short(tmp_path, capsys):
    err = _trainer_stderr(tmp_path, capsys, "gym_popgym:popgym-RepeatPreviousHard-v0")  # debug: 16 steps
    lines = [line for line in err.splitlines() if "memory horizon" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: --batch_length 16 ") and "128" in lines[0], err


def test_trainer_is_silent_when_the_window_fits(tmp_path, capsys):
    err = _trainer_stderr(
        tmp_path, capsys, "gym_popgym:popgym-RepeatPreviousHard-v0", "--batch_length", "128"
    )
    assert "memory horizon" not in err, err
    err = _trainer_stderr(tmp_path, capsys, "gym_popgym:popgym-RepeatPreviousEasy-v0")  # 16 >= 2 x 4
    assert "memory horizon" not in err, err


@pytest.mark.parametrize(
    "blocks, tasks",
    [
        (
            ["popgym", "popgym_cpu"],
            [
                "gym_popgym:popgym-RepeatPreviousHard-v0",
                "gym_popgym:popgym-AutoencodeEasy-v0",
                "gym_popgym:popgym-ConcentrationEasy-v0",
            ],
        ),
        (
            ["bsuite", "bsuite_cpu"],
            ["bsuite:memory_len/22"],
        ),  # memory length 100, where the paper's R2I stops
    ],
)
def test_cpu_configs_hold_the_memory_of_their_hard_tasks(blocks, tasks):
    """CPU configs shrink widths and batch, never the window below 2x what their tasks recall."""
    cfg = configlib.parse(["--configs", *blocks])
    for task in tasks:
        assert window_warning(cfg.batch_length, memory_horizon(task)) is None, (blocks, task)
