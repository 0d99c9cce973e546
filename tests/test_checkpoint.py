"""Checkpointer: bitwise round trip of a real agent state, retention, corrupt and
incomplete checkpoints, a full disk, and the replay riding along."""

import errno
import os
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recall2imagine import checkpoint as ckptlib
from recall2imagine.checkpoint import Checkpointer, CheckpointError, CheckpointWarning
from recall2imagine.replay import DiskReplay, MemoryReplay


@pytest.fixture(scope="module")
def agent():
    from recall2imagine import config as configlib
    from recall2imagine.agent import Agent
    from recall2imagine.envs import make_env

    cfg = configlib.parse(["--configs", "popgym", "debug"])
    env = make_env(cfg.task, seed=0)
    return Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(0))


def _zeros_like(tree):
    zeros = lambda x: np.zeros_like(x) if isinstance(x, np.ndarray) else jnp.zeros_like(x)
    return jax.tree.map(lambda x: zeros(x) if eqx.is_array(x) else x, tree)


def _assert_bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if eqx.is_array(x):
            assert type(np.asarray(x)) is type(np.asarray(y))
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
        else:
            assert x == y


def _small(i):
    return {"w": jnp.full((3, 4), float(i)), "n": np.arange(5) + i, "key": jax.random.PRNGKey(i)}


def test_agent_state_round_trip_bitwise(tmp_path, agent):
    tree = {
        "agent": agent.state,
        "key": jax.random.PRNGKey(7),
        "typed_key": jax.random.key(3),
        "np": np.arange(6, dtype=np.int16),
    }
    meta = {
        "counters": {"step": 1234, "updates": 17, "owed": 0.25},
        "config": "abc",
        "rng": np.random.default_rng(1).bit_generator.state,
    }
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(1234, tree, meta)
    assert path.name == "ckpt-000000001234"
    assert sorted(p.name for p in path.iterdir()) == ["COMMIT", "meta.json", "state.eqx"]
    like = _zeros_like(tree)
    like["typed_key"] = jax.random.key(0)
    step, restored, meta2 = Checkpointer(tmp_path).load_latest(like)
    assert step == 1234 and meta2 == meta
    assert isinstance(restored["np"], np.ndarray)
    assert (
        jax.random.key_data(restored["typed_key"]).tolist() == jax.random.key_data(tree["typed_key"]).tolist()
    )
    del tree["typed_key"], restored["typed_key"]
    _assert_bitwise_equal(restored, tree)
    # A tree of another shape is a config change, not corruption: it raises.
    wrong = {
        "agent": _zeros_like(agent.state),
        "key": jnp.zeros(3, jnp.uint32),
        "typed_key": jax.random.key(0),
        "np": np.zeros(6, np.int16),
    }
    with pytest.raises(CheckpointError, match=r"does not fit.*'key'.*shape"):
        ckpt.load_latest(wrong)


def test_keep_retention(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (10, 20, 30):
        ckpt.save(step, _small(step), {"step": step})
    assert ckpt.steps() == [20, 30]
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000000020", "ckpt-000000000030"]
    step, tree, meta = ckpt.load_latest(_small(0))
    assert step == 30 and meta == {"step": 30}
    _assert_bitwise_equal(tree, _small(30))
    # Saving the same step again replaces it.
    ckpt.save(30, _small(31), {"again": True})
    assert ckpt.load_latest(_small(0))[2] == {"again": True}
    assert Checkpointer(tmp_path / "none").load_latest(_small(0)) is None


def test_truncated_latest_falls_back(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(10, _small(10), {"step": 10})
    path = ckpt.save(20, _small(20), {"step": 20})
    state = path / "state.eqx"
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 2)
    with pytest.warns(CheckpointWarning, match="ckpt-000000000020.*truncated"):
        step, tree, meta = ckpt.load_latest(_small(0))
    assert step == 10 and meta == {"step": 10}
    _assert_bitwise_equal(tree, _small(10))
    # Same size, flipped byte: the sha256 catches it.
    path = ckpt.save(20, _small(20), {"step": 20})
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.warns(CheckpointWarning, match="sha256"):
        assert ckpt.load_latest(_small(0))[0] == 10
    # A run that resumed from 10 and saves 15 drops the skipped, newer folder.
    with pytest.warns(CheckpointWarning, match="newer than the checkpoint just saved"):
        ckpt.save(15, _small(15))
    assert ckpt.steps() == [10, 15]


def test_folder_without_commit_is_ignored(tmp_path):
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(20, _small(20), {"step": 20})
    shutil.copytree(path, tmp_path / "ckpt-000000000030")
    (tmp_path / "ckpt-000000000030" / "COMMIT").unlink()
    os.makedirs(tmp_path / ".tmp-ckpt-000000000040-deadbeef")  # an interrupted save
    with pytest.warns(CheckpointWarning, match="ckpt-000000000030.*no COMMIT"):
        step, _, meta = ckpt.load_latest(_small(0))
    assert step == 20 and meta == {"step": 20}


def test_disk_full_leaves_earlier_checkpoints(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(10, _small(10), {"step": 10})
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt-000000000010").iterdir()}

    def full(f, tree, **kwargs):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckptlib.eqx, "tree_serialise_leaves", full)
    with pytest.raises(
        CheckpointError, match="step 20 not saved: no space left.*Earlier checkpoints are intact"
    ) as e:
        ckpt.save(20, _small(20), {"step": 20})
    assert e.value.errno == errno.ENOSPC
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt-000000000010"]
    after = {p.name: p.read_bytes() for p in (tmp_path / "ckpt-000000000010").iterdir()}
    assert after == before
    assert ckpt.load_latest(_small(0))[0] == 10

    def leaf_full(f, x):  # numpy's short write on a full disk, inside equinox's serialisation
        raise OSError("16384 requested and 14901 written")

    monkeypatch.setattr(ckptlib, "_serialise_leaf", leaf_full)
    with pytest.raises(CheckpointError, match="step 25 not saved: no space left"):
        ckpt.save(25, _small(25), {"step": 25})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt-000000000010"]

    def replay_full(directory, shared):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match="no space left"):
        ckpt.save(30, _small(30), extra=replay_full)
    assert os.listdir(tmp_path) == ["ckpt-000000000010"]


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_replay_rides_along(tmp_path, kind):
    make = {
        "memory": lambda: MemoryReplay(40, 2, seed=0),
        "disk": lambda: DiskReplay(tmp_path / "replay", 40, 2, seed=0),
    }[kind]
    replay = make()
    ckpt = Checkpointer(tmp_path / "ckpt")
    for i in range(30):
        replay.add({"x": np.array([i, 100 + i]), "is_first": np.array([i == 0] * 2)}, [0, 1])
        if i == 24:
            ckpt.save(25, _small(25), {"replay": replay.info()}, extra=replay.save)
            expected = replay.sample(16, 4)
    if kind == "disk":
        replay.close()
    fresh = make()
    step, _, meta = ckpt.load_latest(_small(0), extra=fresh.load)
    assert step == 25 and meta["replay"]["size"] == 40
    assert fresh.counts.tolist() == [25, 25]
    got = fresh.sample(16, 4)
    if kind == "memory":
        assert len(fresh) == 40
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])
    else:  # steps 25..29 overwrote the ring slots of steps 5..9 after the checkpoint
        assert len(fresh) == 30
        x = got["x"] % 100
        assert x.min() >= 10 and x.max() <= 24 and np.all(np.diff(x, axis=1) == 1)


def _fill(replay, start, stop):
    for i in range(start, stop):
        replay.add({"x": np.array([i, 1000 + i], np.int64), "v": np.full((2, 3), i, np.float32)}, [0, 1])


def test_replay_chunks_stored_once(tmp_path):
    """Kept checkpoints share the replay's full chunks; each holds only the steps outside them, a
    resumed replay samples what the saved one did, and chunks no kept checkpoint uses are deleted."""
    replay, ckpt = (
        MemoryReplay(400, 2, seed=0),
        Checkpointer(tmp_path, keep=2),
    )  # 200 per worker, chunks of 50
    _fill(replay, 0, 130)
    ckpt.save(130, _small(130), extra=replay.save)
    first = sorted(os.listdir(tmp_path / "shared"))
    assert len(first) == 4  # workers x chunks [0, 50) and [50, 100)
    _fill(replay, 130, 290)  # the ring wraps: steps 0..89 are overwritten
    ckpt.save(290, _small(290), extra=replay.save)
    expected = replay.sample(32, 20)
    names = sorted(os.listdir(tmp_path / "shared"))
    assert set(first) <= set(names) and len(names) == 2 * 5  # [0,50) .. [200,250): none stored twice
    _fill(replay, 290, 410)
    ckpt.save(410, _small(410), extra=replay.save)  # keep=2 drops step 130: only it used [0, 50)
    names = sorted(os.listdir(tmp_path / "shared"))
    assert len(names) == 2 * 7 and not any(n.startswith(("replay-w0-0-", "replay-w1-0-")) for n in names)
    with np.load(tmp_path / "ckpt-000000000410" / "replay.npz") as f:  # steps 400..409 of each worker
        assert f["index"].tolist() == [*range(400, 410)] * 2 and f["worker"].tolist() == [0] * 10 + [1] * 10

    fresh = MemoryReplay(400, 2, seed=0)
    with pytest.warns(CheckpointWarning):  # the 410 folder is made unreadable: the 290 one loads
        (tmp_path / "ckpt-000000000410" / "replay.npz").write_bytes(b"garbage")
        step, _, _ = ckpt.load_latest(_small(0), extra=fresh.load)
    assert step == 290 and fresh.counts.tolist() == [290, 290]
    got = fresh.sample(32, 20)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
    _fill(fresh, 290, 300)
    with pytest.warns(CheckpointWarning, match="newer than the checkpoint just saved"):
        ckpt.save(300, _small(300), extra=fresh.save)  # re-uses the chunks it loaded
    again = MemoryReplay(400, 2, seed=0)
    assert ckpt.load_latest(_small(0), extra=again.load)[0] == 300
    for k in fresh.data:
        np.testing.assert_array_equal(again.data[k], fresh.data[k])


def test_corrupt_shared_chunk_skips_checkpoint(tmp_path):
    replay, ckpt = MemoryReplay(400, 2, seed=0), Checkpointer(tmp_path, keep=3)
    _fill(replay, 0, 60)
    ckpt.save(60, _small(60), extra=replay.save)
    _fill(replay, 60, 120)
    ckpt.save(120, _small(120), extra=replay.save)
    newest = sorted((tmp_path / "shared").iterdir(), key=lambda p: int(p.name.split("-")[2]))[-1]
    newest.write_bytes(newest.read_bytes()[:-10])
    with pytest.warns(CheckpointWarning, match="fails its sha256 check"):
        step, _, _ = ckpt.load_latest(_small(0), extra=MemoryReplay(400, 2, seed=0).load)
    assert step == 60
    assert ckpt.load_latest(_small(0))[0] == 120  # without the replay, the shared files are not read


def test_checkpoint_of_the_earlier_agent_layout_loads(tmp_path, agent):
    """Checkpoints written before the optimisers carried their own loss scale (AgentState ended in two
    [3] arrays, loss_scale and good_steps) resume into the current layout; a tree that fits neither
    layout still raises."""
    from typing import NamedTuple

    from recall2imagine.trainer import earlier_checkpoints

    class OldAgentState(NamedTuple):  # the layout of AgentState until 2026-12-04, written out here
        wm: object
        actor: object
        critic: object
        slow_critic: object
        wm_opt: object
        actor_opt: object
        critic_opt: object
        retnorm: object
        updates: object
        loss_scale: object
        good_steps: object

    s = agent.state
    old = OldAgentState(
        s.wm, s.actor, s.critic, s.slow_critic, s.wm_opt.inner, s.actor_opt.inner, s.critic_opt.inner,
        jnp.array([0.5, 2.0]), jnp.int32(41), jnp.array([8.0, 4.0, 2.0]), jnp.array([3, 2, 1], jnp.int32),
    )  # fmt: skip
    Checkpointer(tmp_path).save(50, {"agent": old, "key": jax.random.PRNGKey(5)}, {"counters": {}})
    like = {"agent": _zeros_like(s), "key": jax.random.PRNGKey(0)}
    with pytest.raises(CheckpointError, match="does not fit"):
        Checkpointer(tmp_path).load_latest(like)  # without the earlier layout
    step, tree, _ = Checkpointer(tmp_path).load_latest(like, earlier=earlier_checkpoints(like))
    new = tree["agent"]
    assert step == 50 and int(new.updates) == 41 and new.retnorm.tolist() == [0.5, 2.0]
    got = [(float(o.scale), int(o.good)) for o in (new.wm_opt, new.actor_opt, new.critic_opt)]
    assert got == [(8.0, 3), (4.0, 2), (2.0, 1)]
    _assert_bitwise_equal(new._replace(wm_opt=new.wm_opt.inner, actor_opt=new.actor_opt.inner,
                                       critic_opt=new.critic_opt.inner, retnorm=s.retnorm, updates=s.updates),
                          s._replace(wm_opt=s.wm_opt.inner, actor_opt=s.actor_opt.inner,
                                     critic_opt=s.critic_opt.inner))  # fmt: skip
    Checkpointer(tmp_path / "new").save(60, {"agent": new, "key": tree["key"]}, {"counters": {}})
    assert Checkpointer(tmp_path / "new").load_latest(like)[0] == 60  # saved again in the current layout
