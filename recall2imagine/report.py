"""Open-loop world-model reports: videos for image keys, line plots for vector keys.

`openloop_report(agent, batch, key, context, outdir, step, logger)` asks the agent to
reconstruct the first `context` steps of replay sequences and to imagine the rest from the
recorded actions, then writes
  <outdir>/openloop_<key>_<step>.gif   truth | model | error, one row per sequence (images)
  <outdir>/openloop_<key>_<step>.png   truth vs model over time per dimension (vectors, reward)
and hands the same to TensorBoard / W&B through `logger.video` / `logger.image`.
"""

from __future__ import annotations

import io
import os

import numpy as np


BAR = 4  # height of the context / imagination bar under the video grid and the strip


def _bar_colors(T, context):
    """[T, 3]: green while the model sees observations (t < context), red once it imagines."""
    color = np.zeros((T, 3), np.uint8)
    color[:context] = (0, 200, 0)
    color[context:] = (220, 0, 0)
    return color


def video_grid(truth, model, context=None):
    """truth, model [B, T, H, W, C] uint8 -> frames [T, B*H (+ BAR), 3*W, 3] uint8: truth | model |
    error, one row per sequence. With `context`, a bar along the bottom is green while the model
    reconstructs observed frames and red once it predicts open loop (the frames themselves are
    left untouched: Memory Maze draws the target colour as a border in the image)."""
    truth, model = np.asarray(truth, np.uint8), np.asarray(model, np.uint8)
    if truth.shape != model.shape or truth.ndim != 5:
        raise ValueError(
            f'video_grid needs two [B, T, H, W, C] arrays of one shape, got {truth.shape}, {model.shape}'
        )
    if truth.shape[-1] == 1:
        truth, model = np.repeat(truth, 3, -1), np.repeat(model, 3, -1)
    elif truth.shape[-1] != 3:  # several stacked images: show the first three channels
        truth, model = truth[..., :3], model[..., :3]
    error = (np.abs(truth.astype(np.int16) - model.astype(np.int16))).astype(np.uint8)
    row = np.concatenate([truth, model, error], 3)  # [B, T, H, 3W, 3]
    B, T, H, W3, C = row.shape
    frames = row.transpose(1, 0, 2, 3, 4).reshape(T, B * H, W3, C)
    if context is None:
        return frames
    bar = np.broadcast_to(_bar_colors(T, context)[:, None, None, :], (T, BAR, W3, C))
    return np.concatenate([frames, bar], 1)


def encode_gif(frames, fps=10, scale=1):
    """frames [T, H, W, 3] uint8 -> GIF bytes (looping)."""
    from PIL import Image

    frames = np.asarray(frames, np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, 1).repeat(scale, 2)
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf, format='GIF', save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
    )
    return buf.getvalue()


def frame_strip(truth, model, context, count=12):
    """One sequence as a still: row 1 the true frames, row 2 the model's, at `count` evenly spaced
    steps [T, H, W, C] -> [2H + 2 + BAR, count * (W + 2), 3] uint8 (2-pixel gaps); under each model
    frame a bar, green during context (reconstruction), red when imagined."""
    truth, model = np.asarray(truth, np.uint8)[..., :3], np.asarray(model, np.uint8)[..., :3]
    T, H, W, _ = truth.shape
    steps = np.unique(np.linspace(0, T - 1, min(count, T)).round().astype(int))
    colors = _bar_colors(T, context)
    out = np.full((2 * H + 2 + BAR, len(steps) * (W + 2), 3), 255, np.uint8)
    for i, t in enumerate(steps):
        x = i * (W + 2)
        out[:H, x : x + W] = truth[t]
        out[H + 2 : 2 * H + 2, x : x + W] = model[t]
        out[2 * H + 2 :, x : x + W] = colors[t]
    return out, steps


def plot_vectors(path, truth, model, context, title=''):
    """Line plots of the first sequence: one panel per dimension (at most 8), truth vs model."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    truth = np.asarray(truth, np.float32)[0].reshape(truth.shape[1], -1)  # [T, D]
    model = np.asarray(model, np.float32)[0].reshape(model.shape[1], -1)
    dims = min(truth.shape[1], 8)
    fig, axes = plt.subplots(dims, 1, figsize=(8, 1.4 * dims + 0.6), sharex=True, squeeze=False)
    t = np.arange(truth.shape[0])
    for d, ax in enumerate(axes[:, 0]):
        ax.plot(t, truth[:, d], color='black', lw=1.2, label='truth')
        ax.plot(t, model[:, d], color='tab:red', lw=1.2, ls='--', label='model')
        ax.axvline(context - 0.5, color='tab:gray', lw=0.8)
        ax.set_ylabel(f'{d}', rotation=0, labelpad=10)
    axes[0, 0].legend(loc='upper right', fontsize=7, ncol=2)
    axes[0, 0].set_title(title or 'open-loop prediction (left of the line: reconstruction)', fontsize=9)
    axes[-1, 0].set_xlabel('step')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=80)
    plt.close(fig)
    return buf.getvalue()


def openloop_report(agent, batch, key, context, outdir, step, logger=None, sequences=4):
    """Writes the open-loop files of one replay batch; returns {name: path} and logs scalars
    `openloop/<key>_mse` (mean squared error of the imagined part, images in [0, 1])."""
    batch = {k: np.asarray(v)[:sequences] for k, v in batch.items()}
    preds = agent.openloop(batch, key, context)
    os.makedirs(outdir, exist_ok=True)
    files = {}
    for name, (truth, model) in preds.items():
        is_image = truth.ndim == 5 and truth.dtype == np.uint8
        scale = 255.0 if is_image else 1.0
        err = np.square(
            truth[:, context:].astype(np.float32) / scale - model[:, context:].astype(np.float32) / scale
        )
        if logger is not None:
            logger.add({f'openloop/{name}_mse': float(err.mean())})
        if is_image:
            frames = video_grid(truth, model, context)
            path = os.path.join(outdir, f'openloop_{name}_{step}.gif')
            save_video(
                logger, f'openloop/{name}', path, step, frames, scale=2 if frames.shape[1] <= 128 else 1
            )
            from PIL import Image

            strip, _ = frame_strip(truth[0], model[0], context)
            Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(
                os.path.join(outdir, f'openloop_{name}_{step}_strip.png')
            )
        else:
            if name == 'reward':
                truth, model = truth[..., None], model[..., None]
            path = os.path.join(outdir, f'openloop_{name}_{step}.png')
            png = plot_vectors(
                path, truth, model, context, title=f'{name}: open-loop prediction after {context} steps'
            )
            if logger is not None:
                logger.image(f'openloop/{name}', png, path, step)
        files[name] = path
    return files


def write_episode_video(logger, outdir, step, frames, fps=16):
    """An agent episode ([T] frames [H, W, 3] uint8) as <outdir>/eval_<step>.gif, also to TB / W&B."""
    os.makedirs(outdir, exist_ok=True)
    frames = np.asarray(frames, np.uint8)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, -1)
    path = os.path.join(str(outdir), f'eval_{step}.gif')
    return save_video(
        logger, 'eval/episode', path, step, frames[..., :3], fps=fps, scale=2 if frames.shape[1] <= 64 else 1
    )


def save_video(logger, name, path, step, frames, fps=10, scale=1):
    """frames [T, H, W, 3] uint8 -> a GIF at `path`, also to TensorBoard / W&B via `logger.video`."""
    gif = encode_gif(frames, fps=fps, scale=scale)
    with open(path, 'wb') as f:
        f.write(gif)
    if logger is not None:
        logger.video(name, gif, path, step)
    return path
