"""A resume with a changed config names the keys that changed (checkpoint meta holds the config)."""

from recall2imagine import train
from recall2imagine.trainer import config_changes


def test_config_changes_lists_changed_added_and_removed_keys():
    old = {"a": 1, "b": [1, 2], "c": "x"}
    new = {"a": 1, "b": [1, 3], "d": True}
    assert config_changes(old, new) == " in b ([1, 2] -> [1, 3]), c (x -> -), d (- -> True)"
    assert config_changes(old, dict(old)) == ""
    assert config_changes(None, new) == ""  # an older checkpoint holds only the hash
    many = {f"k{i}": i for i in range(10)}
    assert config_changes(many, {}).endswith("k7 (7 -> -) and 2 more")


def test_resume_with_a_changed_flag_names_it(tmp_path, capsys):
    argv = [
        "--configs",
        "popgym",
        "debug",
        "--task",
        "gym_popgym:popgym-RepeatPreviousEasy-v0",
        "--logdir",
        str(tmp_path),
        "--run.steps",
        "64",
        "--run.eval_eps",
        "0",
    ]
    assert train.main(argv) == 0
    capsys.readouterr()
    assert train.main(argv[:-4] + ["--run.steps", "96", "--run.eval_eps", "0", "--actent", "0.01"]) == 0
    err = capsys.readouterr().err
    assert "the config differs from the checkpoint's in actent (0.0003 -> 0.01); continuing" in err, err


def test_config_changes_leave_out_the_process_settings():
    from recall2imagine.trainer import config_changes

    old = {"actent": 3e-4, "jax.compile_cache": "auto", "jax.process_id": 0}
    assert config_changes(old, {"actent": 3e-4, "jax.malloc": "auto", "jax.process_id": 1}) == ""
    assert config_changes(old, {"actent": 1e-2, "jax.malloc": "system"}) == " in actent (0.0003 -> 0.01)"


def test_the_update_compiles_during_the_prefill_on_the_batches_it_will_get(tmp_path, monkeypatch, recwarn):
    """`Trainer.prefill_step` lowers the update for a batch built from the first prefill step and
    compiles it in a thread: its keys, dtypes and shapes must be those of the replay's batches, else
    the first update compiles again (and the overlap is lost)."""
    import numpy as np

    from recall2imagine.agent import Agent
    from recall2imagine.replay.memory import MemoryReplay

    ahead, sampled = [], []
    lower_update, sample = Agent.lower_update, MemoryReplay.sample

    def record_ahead(self, batch):
        ahead.append({k: (v.shape, v.dtype) for k, v in batch.items()})
        return lower_update(self, batch)

    def record_sample(self, *args):
        batch = sample(self, *args)
        sampled.append({k: (np.shape(v), np.asarray(v).dtype) for k, v in batch.items()})
        return batch

    monkeypatch.setattr(Agent, "lower_update", record_ahead)
    monkeypatch.setattr(MemoryReplay, "sample", record_sample)
    argv = ["--configs", "popgym", "debug", "--task", "gym_popgym:popgym-RepeatPreviousEasy-v0"]
    assert train.main(argv + ["--logdir", str(tmp_path), "--run.steps", "128", "--run.eval_eps", "0"]) == 0
    assert len(ahead) == 1 and sampled, (ahead, sampled)
    assert ahead[0] == sampled[0]
    assert not [w for w in recwarn if "donated buffers" in str(w.message)]  # no warning for the user
