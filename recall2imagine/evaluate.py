"""Evaluate a trained agent, or load it as a policy for your own loop.

  r2i-eval LOGDIR [--episodes 10] [--sample] [--video] [--seed 0]
  python -m recall2imagine.evaluate LOGDIR ...

plays episodes with the agent of the newest checkpoint in LOGDIR (its `config.yaml`; the replay is not
loaded), prints the mean and standard deviation of their returns and appends them to LOGDIR/eval.jsonl;
`--video` writes the first episode of an image task as LOGDIR/videos/evaluate_<step>.gif.

  from recall2imagine import load_agent
  policy = load_agent("~/logdir/rph")           # greedy; load_agent(..., greedy=False) samples
  env = policy.make_env()                        # the run's task, or any env with the same spaces
  obs = env.reset()
  while not obs["is_last"]:
      obs = env.step(policy(obs))                # the policy carries its latent state across calls

An observation is one env's dict (as the adapters in recall2imagine.envs return it); the action is
the agent's vector (one-hot for discrete actions, [-1, 1] for continuous ones), which those adapters
accept. The latent state restarts at every `is_first` observation; `policy.reset()` forgets it.
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from recall2imagine import config as configlib


def load_agent_state(agent, source):
    """(step, folder) after loading the agent of `source` into `agent` (weights and optimiser
    states): a run's logdir (its newest intact checkpoint) or one checkpoint folder. Raises
    ConfigError with one line when there is none or it does not fit the agent's config."""
    import jax

    from recall2imagine.checkpoint import COMMIT, Checkpointer, CheckpointError, run_checkpoints
    from recall2imagine.trainer import earlier_checkpoints

    source = pathlib.Path(source).expanduser()
    like = {"agent": agent.state, "key": jax.random.PRNGKey(0)}
    try:
        if (source / COMMIT).is_file():
            ckpt = Checkpointer(source.parent)
            restored = ckpt.load(source, like, earlier=earlier_checkpoints(like))
        else:
            cfg = (
                configlib.Config.load(source / "config.yaml") if (source / "config.yaml").is_file() else None
            )
            ckpt = Checkpointer(run_checkpoints(source, cfg) if cfg is not None else source / "checkpoints")
            restored = ckpt.load_latest(like, earlier=earlier_checkpoints(like))
    except CheckpointError as e:
        raise configlib.ConfigError(str(e)) from None
    if not restored:
        raise configlib.ConfigError(
            f"no intact checkpoint in {source} (a run's logdir or a checkpoints/ckpt-* folder)"
        )
    step, tree, _ = restored
    agent.state = tree["agent"]
    return step, ckpt.loaded


class Policy:
    """A trained agent as a callable: `policy(obs) -> action` for one env, carrying its latent state."""

    def __init__(self, agent, cfg, step, greedy=True, seed=0):
        import jax

        self.agent, self.cfg, self.step, self.greedy = agent, cfg, step, greedy
        self._key = jax.random.PRNGKey(seed)
        self._state = None

    def reset(self):
        self._state = None

    def make_env(self, seed=0):
        from recall2imagine.envs import env_options, make_env

        return make_env(self.cfg.task, seed=seed, **env_options(self.cfg))

    def batch(self, obs, state):
        """Batched form for `Driver`: obs dict of [N, ...] -> ({'action': [N, A]}, state)."""
        import jax

        self._key, key = jax.random.split(self._key)
        action, state = self.agent.policy(obs, state, key, mode="eval" if self.greedy else "train")
        return {"action": action}, state

    def __call__(self, obs):
        obs = {k: np.asarray(v)[None] for k, v in obs.items()}
        out, self._state = self.batch(obs, self._state)
        return out["action"][0]


def load_agent(logdir, greedy=True, seed=0) -> Policy:
    """The agent of the newest checkpoint in a run's `logdir` as a `Policy` (module docstring)."""
    import jax

    from recall2imagine.agent import Agent
    from recall2imagine.train import setup_jax

    logdir = pathlib.Path(logdir).expanduser()
    if not (logdir / "config.yaml").is_file():
        raise configlib.ConfigError(f"{logdir} has no config.yaml: give the logdir of a training run")
    cfg = configlib.Config.load(logdir / "config.yaml")
    setup_jax(cfg)
    env = Policy(None, cfg, 0).make_env(seed)
    try:
        agent = Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(cfg.seed))
    finally:
        env.close()
    step, _ = load_agent_state(agent, logdir)
    return Policy(agent, cfg, step, greedy, seed)


def evaluate(policy, episodes, seed=0, video=False):
    """Plays `episodes` episodes; returns (returns, lengths, frames of the first episode or [])."""
    from recall2imagine.driver import Driver

    env = policy.make_env(seed)
    returns, lengths, frames = [], [], []

    def on_step(tran, workers):
        if video and not returns and "image" in tran:
            frames.append(np.asarray(tran["image"][0]))

    def on_episode(ep):
        returns.append(ep["score"])
        lengths.append(ep["length"])

    try:
        driver = Driver([env])
        while len(returns) < episodes:
            driver(policy.batch, steps=1, on_step=on_step, on_episode=on_episode)
    finally:
        env.close()
    return returns, lengths, frames


def main(argv=None):
    p = argparse.ArgumentParser(prog="r2i-eval", description=__doc__.split("\n")[0])
    p.add_argument("logdir", help="a training run's logdir (config.yaml + checkpoints)")
    p.add_argument("--episodes", type=int, default=10)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--greedy", dest="greedy", action="store_true", default=True, help="the policy's mode (default)"
    )
    mode.add_argument("--sample", dest="greedy", action="store_false", help="sample actions as in training")
    p.add_argument("--video", action="store_true", help="GIF of the first episode (image tasks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation env and the policy's samples")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1, got {args.episodes}")
    try:
        policy = load_agent(args.logdir, greedy=args.greedy, seed=args.seed)
        start = time.time()
        returns, lengths, frames = evaluate(policy, args.episodes, seed=args.seed, video=args.video)
    except (configlib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logdir = pathlib.Path(args.logdir).expanduser()
    row = dict(
        step=policy.step,
        episodes=len(returns),
        mode="greedy" if args.greedy else "sample",
        seed=args.seed,
        mean=float(np.mean(returns)),
        std=float(np.std(returns)),
        returns=[float(r) for r in returns],
        lengths=[int(n) for n in lengths],
        time=time.time(),
    )
    with open(logdir / "eval.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        f"{logdir} at step {policy.step}, {row['mode']}: return {row['mean']:.3f} +- {row['std']:.3f} over "
        f"{len(returns)} episodes (min {min(returns):.3f}, max {max(returns):.3f}; {time.time() - start:.0f} s); "
        f"appended to {logdir / 'eval.jsonl'}"
    )
    if args.video:
        if frames:
            from recall2imagine.report import save_video

            frames = np.asarray(frames, np.uint8)
            frames = np.repeat(frames, 3, -1) if frames.shape[-1] == 1 else frames[..., :3]
            (logdir / "videos").mkdir(exist_ok=True)
            path = save_video(
                None,
                "evaluate",
                logdir / "videos" / f"evaluate_{policy.step}.gif",
                policy.step,
                frames,
                fps=16,
                scale=2 if frames.shape[1] <= 64 else 1,
            )
            print(f"video: {path}")
        else:
            print("no video: the task has no image observations", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
