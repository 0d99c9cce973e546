"""Open-loop reports: predictions past the context ignore later observations; files have the right shape."""

import jax
import numpy as np
import pytest
from PIL import Image

from recall2imagine.report import encode_gif, frame_strip, openloop_report, video_grid
from tests.helpers import debug_agent, random_batch


@pytest.mark.parametrize(
    "core",
    [[], ["--rssm.core", "gru", "--actor.inputs", "deter,stoch", "--critic.inputs", "deter,stoch"]],
    ids=["ssm", "gru"],
)
def test_openloop_ignores_observations_after_the_context(core):
    cfg, env, agent = debug_agent(*core)
    batch = random_batch(cfg, env, agent.act_dim, resets=False)
    context = 6
    first = agent.openloop(batch, jax.random.PRNGKey(0), context)
    changed = dict(batch, vector=batch["vector"].copy())
    changed["vector"][:, context:] = 1 - changed["vector"][:, context:]  # other observations later on
    second = agent.openloop(changed, jax.random.PRNGKey(0), context)
    for key in ("vector", "reward"):
        np.testing.assert_allclose(first[key][1], second[key][1], rtol=1e-5, atol=1e-6)
    changed["vector"][:, 0] = 1 - changed["vector"][:, 0]  # ... but the context matters
    third = agent.openloop(changed, jax.random.PRNGKey(0), context)
    assert not np.allclose(first["vector"][1][:, :context], third["vector"][1][:, :context])
    assert first["vector"][1].shape == batch["vector"].shape


def test_vector_report_writes_plots(tmp_path):
    cfg, env, agent = debug_agent()
    batch = random_batch(cfg, env, agent.act_dim)
    files = openloop_report(agent, batch, jax.random.PRNGKey(0), 4, tmp_path, 7)
    assert set(files) == {"vector", "reward"}
    for path in files.values():
        assert path.endswith("_7.png") and Image.open(path).size[0] > 100


def test_video_grid_strip_and_gif():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 255, (2, 5, 8, 8, 3)).astype(np.uint8)
    model = truth.copy()
    model[1, :, :4] = 0  # sequence 1: the model gets the top half wrong
    frames = video_grid(truth, model, context=2)
    assert frames.shape == (5, 2 * 8 + 4, 24, 3)  # rows of truth | model | error, then the bar
    np.testing.assert_array_equal(frames[:, :8, :8], truth[0])
    np.testing.assert_array_equal(frames[:, 8:16, 8:16], model[1])
    assert (frames[:, :8, 16:] == 0).all()  # sequence 0 is exact: no error
    np.testing.assert_array_equal(frames[:, 8:12, 16:], truth[1, :, :4])  # |truth - 0|
    assert (frames[1, 16:] == (0, 200, 0)).all() and (frames[3, 16:] == (220, 0, 0)).all()
    strip, steps = frame_strip(truth[0], model[0], 2, count=3)
    assert steps.tolist() == [0, 2, 4] and strip.shape == (2 * 8 + 2 + 4, 30, 3)
    np.testing.assert_array_equal(strip[:8, 10:18], truth[0, 2])
    assert (strip[18:, :8] == (0, 200, 0)).all() and (strip[18:, 20:28] == (220, 0, 0)).all()
    gif = encode_gif(frames, fps=5, scale=2)
    import io

    with Image.open(io.BytesIO(gif)) as im:
        assert im.n_frames == 5 and im.size == (48, 40)
