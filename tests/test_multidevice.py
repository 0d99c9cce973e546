"""Data-parallel training and a separate policy device, on 2 forced host (CPU) devices.

JAX sees 2 CPU devices only with XLA_FLAGS=--xla_force_host_platform_device_count=2 set before it
initialises, and this process has already imported it: every check runs in a subprocess.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2"]).strip(),
)


def _python(args, timeout):
    out = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


# One update on 2 devices with global batch B equals one on 1 device with the same batch, key and
# initial state: the loss means run over the whole batch either way, only the float summation order
# differs (measured: max |diff| - 1e-4 |x| ~ 1e-9). Tolerance rtol 1e-4, atol 1e-5.
SAME_STEP = textwrap.dedent("""
    import sys, tempfile
    sys.path.insert(0, "tests")
    import equinox as eqx, jax, numpy as np
    from helpers import debug_agent, random_batch
    from recall2imagine.checkpoint import Checkpointer

    dev0, dev1 = jax.devices()
    leaves = lambda tree: jax.tree.leaves(eqx.filter(tree, eqx.is_array))
    cfg, env, one = debug_agent()
    _, _, two = debug_agent("--jax.train_devices", "0", "1", "--jax.policy_devices", "1",
                            "--jax.sync_every", "2")
    for x, y in zip(leaves(one.state), leaves(two.state)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    # the policy's own copy of the world model and actor, on device 1
    policy_before = [np.asarray(x) for x in leaves(two.acting.copy)]
    assert all(x.devices() == {dev1} for x in leaves(two.acting.copy))

    batch = random_batch(cfg, env, one.act_dim)
    key = jax.random.PRNGKey(3)
    m1 = jax.device_get(one.train(dict(batch), key))
    m2 = jax.device_get(two.train(dict(batch), key))
    n = 0
    for x, y in zip(leaves(one.state), leaves(two.state)):
        assert y.sharding.is_fully_replicated and y.sharding.device_set == {dev0, dev1}, y.sharding
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-5)
        n += 1
    for k in m1:
        np.testing.assert_allclose(m2[k], m1[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert int(two.state.updates) == 1

    # sync_every 2: after one update the policy still has the old copy, after two the new one
    for x, y in zip(policy_before, leaves(two.acting.copy)):
        assert np.array_equal(x, np.asarray(y))
    two.train(random_batch(cfg, env, one.act_dim, seed=1), jax.random.PRNGKey(4))
    live = leaves((two.state.wm, two.state.actor))
    for x, y in zip(live, leaves(two.acting.copy)):
        assert y.devices() == {dev1} and np.array_equal(np.asarray(x), np.asarray(y))
    obs = {"vector": batch["vector"][:, 0], "is_first": np.ones(len(batch["vector"]), bool)}
    action, pstate = two.policy(obs, None, key)
    action, pstate = two.policy(obs, pstate, key, mode="eval")
    assert action.shape == (len(obs["is_first"]), one.act_dim)
    assert all(x.devices() == {dev1} for x in jax.tree.leaves(pstate))

    # a checkpoint restores replicated over both train devices, and training goes on
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(tmp)
        saved = [np.asarray(x) for x in leaves(two.state)]
        ckpt.save(2, {"agent": two.state})
        _, tree, _ = ckpt.load_latest({"agent": two.state})
    two.state = tree["agent"]
    for x, y in zip(saved, leaves(two.state)):
        assert y.sharding.is_fully_replicated and y.sharding.device_set == {dev0, dev1}
        assert np.array_equal(x, np.asarray(y))
    for x, y in zip(leaves((two.state.wm, two.state.actor)), leaves(two.acting.copy)):
        assert y.devices() == {dev1} and np.array_equal(np.asarray(x), np.asarray(y))
    m3 = jax.device_get(two.train(dict(batch), key))
    assert all(np.isfinite(v) for v in m3.values()) and int(two.state.updates) == 3
    print("OK", n, "leaves")
""")


def test_two_device_step_matches_one_device():
    assert "OK" in _python(["-c", SAME_STEP], timeout=300)


def test_two_device_training_run(tmp_path):
    logdir = str(tmp_path / "run")
    _python(
        [
            "-m",
            "recall2imagine.train",
            "--configs",
            "popgym",
            "debug",
            "--task",
            "gym_popgym:popgym-RepeatPreviousEasy-v0",
            "--jax.train_devices",
            "0",
            "1",
            "--jax.policy_devices",
            "1",
            "--jax.sync_every",
            "4",
            "--logdir",
            logdir,
            "--run.steps",
            "200",
            "--run.train_ratio",
            "8",
        ],
        timeout=300,
    )
    with open(os.path.join(logdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    losses = [r for r in rows if "train/model_loss" in r]
    assert losses and all(math.isfinite(r["train/model_loss"]) for r in losses)
    assert rows[-1]["step"] >= 200 and rows[-1]["train/updates"] >= 10
    assert os.listdir(os.path.join(logdir, "checkpoints"))


BAD_FLAGS = textwrap.dedent("""
    import contextlib, io, json, sys
    from recall2imagine import train
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = train.main(argv)
        results.append([code, err.getvalue().strip()])
    print(json.dumps(results))
""")


def test_bad_device_flags_one_line_errors(tmp_path):
    base = ["--configs", "popgym", "debug", "--logdir", str(tmp_path / "x")]
    cases = [
        (
            ["--jax.train_devices", "0", "1", "--batch_size", "3"],
            "--batch_size 3 is not divisible by the 2 train devices (--jax.train_devices 0 1)",
        ),
        (["--jax.train_devices", "0", "2"], "no such device; available on cpu: 0 (cpu), 1 (cpu)"),
        (["--jax.policy_devices", "0", "1"], "the policy runs on one device"),
        (["--jax.train_devices", "1", "1"], "a device is listed twice"),
        (["--jax.sync_every", "0"], "--jax.sync_every 0 is out of range: it must be an integer in [1, inf)"),
    ]
    out = _python(["-c", BAD_FLAGS, json.dumps([base + argv for argv, _ in cases])], timeout=120)
    for (argv, needle), (code, err) in zip(cases, json.loads(out.strip().splitlines()[-1])):
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and "\n" not in err, err
        assert needle in err, (argv, err)
    assert "set --batch_size to a multiple of 2 (e.g. 4)" in json.loads(out.strip().splitlines()[-1])[0][1]
