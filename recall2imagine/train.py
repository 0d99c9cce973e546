"""Train an R2I agent.

  python -m recall2imagine.train --configs popgym cpu --task gym_popgym:popgym-RepeatPreviousEasy-v0
  python recall2imagine/train.py --configs bsuite debug --task bsuite:memory_len/0 --logdir /tmp/run

Flow: envs -> driver -> replay -> agent.train (world model, imagination, actor-critic) -> logger.
"""
import collections
import os
import pathlib
import signal
import sys
import threading
import time

if __package__ in (None, ""):  # `python recall2imagine/train.py`
    # drop the script's folder from the path: its logging.py would shadow the stdlib's
    _here = pathlib.Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np

from recall2imagine import config as configlib


def setup_jax(cfg):
    """Pick the platform before JAX initialises its backends."""
    import jax
    platform = cfg.jax.platform
    if platform not in ("auto", "cpu", "gpu"):
        raise configlib.ConfigError(f"--jax.platform must be auto, cpu or gpu, got {platform!r}")
    if not cfg.jax.prealloc:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if platform != "auto":
        jax.config.update("jax_platforms", {"gpu": "cuda"}.get(platform, platform))
    try:
        backend = jax.default_backend()
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise configlib.ConfigError(f"--jax.platform {platform}: not available here ({reason}); "
                                    f"use --jax.platform cpu")
    if cfg.jax.precision not in ("float32", "bfloat16", "float16"):
        raise configlib.ConfigError(
            f"--jax.precision must be float32, bfloat16 or float16, got {cfg.jax.precision!r}")
    from recall2imagine.agent import resolve_devices
    resolve_devices(cfg)  # device ids exist, one policy device, batch_size divisible: fail before the envs start
    return backend


def random_policy(act_space, rng):
    def policy(obs, state):
        n = len(obs["is_first"])
        if act_space.discrete:
            action = np.eye(act_space.n, dtype=np.float32)[rng.integers(0, act_space.n, n)]
        else:
            action = rng.uniform(-1, 1, (n, act_space.n)).astype(np.float32)
        return {"action": action}, state
    return policy


def run(cfg):
    import jax

    from recall2imagine.agent import Agent
    from recall2imagine.checkpoint import Checkpointer, CheckpointError, config_hash
    from recall2imagine.driver import Driver
    from recall2imagine.envs import make_env, parse_task
    from recall2imagine.logging import Logger, Progress, check_outputs
    from recall2imagine.replay import make_replay
    from recall2imagine.report import openloop_report, write_episode_video

    # jsonl always; W&B also when a run name is given
    outputs = check_outputs(dict.fromkeys(("jsonl", *cfg.run.loggers, *(("wandb",) if cfg.wdb_name else ()))))
    if cfg.envs.parallel not in ("none", "process"):
        raise configlib.ConfigError(f"--envs.parallel must be none or process, got {cfg.envs.parallel!r}")
    if cfg.envs.parallel == "process":  # each env in its own worker process, stepped concurrently
        from recall2imagine.envs.parallel import ProcessEnv as make_env  # noqa: F811 (same signature)
    if parse_task(cfg.task)[0] == "memory_maze":  # ~0.6 GB per env: refuse before swapping or an OOM kill
        from recall2imagine.envs.memory_maze import check_memory
        try:
            check_memory(cfg.envs.amount + (cfg.run.eval_eps > 0))
        except MemoryError as e:
            raise configlib.ConfigError(str(e)) from None
    backend = setup_jax(cfg)
    logdir = pathlib.Path(cfg.logdir or configlib.default_logdir(cfg)).expanduser()
    logdir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.update({"logdir": str(logdir)})
    cfg.save(logdir / "config.yaml")
    print(f"logdir {logdir} | task {cfg.task} | backend {backend}", flush=True)

    # bsuite's own CSV log (from the first env) lets bsuite's analysis code score the run
    bsuite_dir = str(logdir / "bsuite") if parse_task(cfg.task)[0] == "bsuite" else None
    envs = [make_env(cfg.task, seed=cfg.seed * 1000 + i, length=cfg.envs.length,
                     bsuite_logdir=bsuite_dir if i == 0 else None)
            for i in range(cfg.envs.amount)]
    obs_space, act_space = envs[0].obs_space, envs[0].act_space
    replay = make_replay(cfg.replay, cfg.replay_size, len(envs), seed=cfg.seed,
                         directory=cfg.replay_dir or logdir / "replay",
                         use_lfs=cfg.use_lfs, lfs_dir=cfg.lfs_dir, chunk=cfg.batch_length)
    agent = Agent(cfg, obs_space, act_space, jax.random.PRNGKey(cfg.seed))
    driver = Driver(envs)
    progress = Progress(cfg.run.steps, sys.stdout)  # live status line on a terminal, silent otherwise
    logger = Logger(logdir, outputs + ("console",), wandb_name=cfg.wdb_name, config=cfg.to_dict(),
                    console=progress.println)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.PRNGKey(cfg.seed + 1)
    counters = dict(step=0, updates=0, owed=0.0)

    # resume from the newest intact checkpoint (model, optimisers, replay, counters); with the LFS
    # replay the checkpoints live in the durable tier too, so a restart with a fresh logdir resumes
    durable = getattr(replay, "lfs_dir", None)
    ckpt = Checkpointer((durable or logdir) / "checkpoints", keep=cfg.run.keep_checkpoints)
    chash = config_hash({k: v for k, v in cfg.flat().items() if not k.startswith("run.")})
    restored = ckpt.load_latest({"agent": agent.state, "key": key}, extra=replay.load)
    if restored:
        step, tree, meta = restored
        agent.state, key = tree["agent"], tree["key"]  # the setter places the state on the train devices
        counters.update(meta["counters"])
        rng.bit_generator.state = meta["np_rng"]
        print(f"resumed from {ckpt.loaded} at step {counters['step']} ({len(replay)} replay steps)", flush=True)
        if meta.get("config_hash") != chash:
            print("warning: the config differs from the checkpoint's; continuing with the new one",
                  file=sys.stderr, flush=True)

    def save_checkpoint():
        meta = dict(counters=dict(counters), np_rng=rng.bit_generator.state, config_hash=chash,
                    replay=replay.info())
        try:
            ckpt.save(counters["step"], {"agent": agent.state, "key": key}, meta, extra=replay.save)
        except CheckpointError as e:  # e.g. disk full: keep training, keep the older checkpoints
            print(f"warning: {e}", file=sys.stderr, flush=True)
        except RuntimeError as e:  # agent state lost mid-update (a second Ctrl-C): keep the old ones
            print(f"warning: no checkpoint written ({str(e).splitlines()[0]}); the previous one is kept",
                  file=sys.stderr, flush=True)
        last["save"] = time.time()

    batch_steps = cfg.batch_size * cfg.batch_length
    fill = cfg.run.train_fill or max(batch_steps, cfg.batch_length * len(envs))
    scores = collections.deque(maxlen=50)
    pending = []  # device metrics not yet fetched
    last = dict(time=time.time(), save=time.time(), step=counters["step"], updates=counters["updates"])

    def on_step(tran, workers):
        if STOP["requested"]:  # a safe point: no update in flight, the transition not yet stored
            raise KeyboardInterrupt
        replay.add(tran, workers)
        counters["step"] += len(workers)
        progress.update(counters["step"], counters["updates"], scores)

    def on_episode(ep):
        scores.append(ep["score"])
        logger.add({"episode/score": ep["score"], "episode/length": ep["length"]})
        logger.episode(counters["step"], ep["score"], ep["length"])

    def train_on_step(tran, workers):
        nonlocal key
        on_step(tran, workers)
        counters["owed"] += len(workers) * cfg.run.train_ratio / batch_steps
        while counters["owed"] >= 1.0:
            key, sub = jax.random.split(key)
            pending.append(agent.train(replay.sample(cfg.batch_size, cfg.batch_length), sub))
            counters["owed"] -= 1.0
            counters["updates"] += 1
        if time.time() - last["time"] >= cfg.run.log_every:
            write_logs()
        if time.time() - last["save"] >= cfg.run.save_every:
            save_checkpoint()

    def write_logs():
        now = time.time()
        for metrics in jax.device_get(pending):
            logger.add({k: float(v) for k, v in metrics.items()}, prefix="train")
        pending.clear()
        dt = max(now - last["time"], 1e-9)
        logger.add({"fps": (counters["step"] - last["step"]) / dt,
                    "train_steps_per_sec": (counters["updates"] - last["updates"]) / dt,
                    "replay/size": len(replay), "train/updates": counters["updates"]})
        logger.write(counters["step"])
        last.update(time=now, step=counters["step"], updates=counters["updates"])

    def agent_policy(obs, pstate):
        nonlocal key
        key, sub = jax.random.split(key)
        action, pstate = agent.policy(obs, pstate, sub)
        return {"action": action}, pstate

    def evaluate():
        """`run.eval_eps` greedy episodes on a separate env, logged as eval/*, not added to the replay."""
        eval_driver = Driver([eval_env])
        returns, lengths = [], []

        def on_eval_episode(ep):
            returns.append(ep["score"])
            lengths.append(ep["length"])

        def greedy(obs, pstate):
            nonlocal key
            key, sub = jax.random.split(key)
            action, pstate = agent.policy(obs, pstate, sub, mode="eval")
            return {"action": action}, pstate

        frames = []  # image tasks: the first evaluation episode becomes videos/eval_<step>.gif

        def on_eval_step(tran, workers):
            if not returns and "image" in tran:
                frames.append(np.asarray(tran["image"][0]))

        while len(returns) < cfg.run.eval_eps:
            eval_driver(greedy, steps=1, on_step=on_eval_step, on_episode=on_eval_episode)
        logger.add({"eval/score": float(np.mean(returns)), "eval/length": float(np.mean(lengths))})
        if frames:
            try:
                write_episode_video(logger, logdir / "videos", counters["step"], frames)
            except OSError as e:
                print(f"warning: evaluation video not written ({e})", file=sys.stderr, flush=True)
        counters["next_eval"] = counters["step"] + cfg.run.eval_every

    def report():
        """Open-loop predictions of a replay batch: GIFs (images) / PNG plots (vectors) in <logdir>/videos."""
        nonlocal key
        key, sub = jax.random.split(key)
        try:
            context = min(cfg.run.report_context, cfg.batch_length - 1)
            openloop_report(agent, replay.sample(cfg.batch_size, cfg.batch_length), sub, context,
                            logdir / "videos", counters["step"], logger)
        except (OSError, ValueError) as e:  # a report must never stop training
            print(f"warning: open-loop report skipped ({e})", file=sys.stderr, flush=True)
        counters["next_report"] = counters["step"] + cfg.run.report_every

    eval_env = (make_env(cfg.task, seed=cfg.seed * 1000 + 999, length=cfg.envs.length)
                if cfg.run.eval_eps > 0 else None)
    counters.setdefault("next_report", cfg.run.report_every)
    counters.setdefault("next_eval", cfg.run.eval_every)
    start = time.time()
    interrupted = False
    try:
        if len(replay) < fill:
            print(f"prefill {fill - len(replay)} steps with a random policy", flush=True)
            driver(random_policy(act_space, rng), steps=fill - len(replay), on_step=on_step, on_episode=on_episode)
            driver.reset_policy_state()  # the agent starts from its initial latent; episodes go on
        while counters["step"] < cfg.run.steps:
            driver(agent_policy, steps=min(len(envs) * 16, cfg.run.steps - counters["step"]),
                   on_step=train_on_step, on_episode=on_episode)
            if eval_env is not None and counters["step"] >= counters["next_eval"]:
                evaluate()
            if cfg.run.report_every and counters["step"] >= counters["next_report"]:
                report()
        if cfg.run.report_every and counters["updates"]:  # the final model's predictions
            report()
    except KeyboardInterrupt:
        interrupted = True
        progress.close()
        print("\ninterrupted: saving a checkpoint and the logs", flush=True)
    finally:
        progress.close()
        try:  # an error here (e.g. the lfs_dir filled up) must not keep the logs and envs open
            write_logs()
            save_checkpoint()
            if hasattr(replay, "close"):  # lfs: flush the durable tier, stop its writer thread
                replay.close()
        finally:
            logger.close()
            for env in envs + ([eval_env] if eval_env is not None else []):
                env.close()
    mean = float(np.mean(scores)) if scores else float("nan")
    minutes = (time.time() - start) / 60
    print(f"{'stopped' if interrupted else 'done'}: {counters['step']} env steps, {counters['updates']} updates, "
          f"{minutes:.1f} min | mean return over last {len(scores)} episodes: {mean:.3f} | logs: {logdir}",
          flush=True)
    print(logger.summary(), flush=True)
    return mean


STOP = {"requested": False}


def _stop_on_signal(signum, frame):
    """First Ctrl-C / SIGTERM: stop at the next safe point (between env steps, never inside an
    update, whose input buffers are donated) and save. A second one stops at once."""
    if STOP["requested"]:
        raise KeyboardInterrupt
    STOP["requested"] = True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM (schedulers, `kill`) stop the run the same way: save a checkpoint and
        # the logs. Installed explicitly because a process started in the background may inherit an
        # ignored SIGINT; restored on return for callers that run main() in-process.
        STOP["requested"] = False
        previous = {sig: signal.signal(sig, _stop_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cfg = configlib.parse(argv)
        run(cfg)
    except (configlib.ConfigError, ValueError) as e:  # bad flag, unknown task, ...: one line, says what to do
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
