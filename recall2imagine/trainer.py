"""The training loop: envs -> driver -> replay -> agent.train -> logger, with checkpoints,
evaluation episodes and open-loop reports. `recall2imagine.train` parses the command line and
runs `Trainer(cfg, backend).run()`.
"""

import collections
import json
import pathlib
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from recall2imagine import config as configlib
from recall2imagine.agent import Agent, AgentState
from recall2imagine.checkpoint import Checkpointer, CheckpointError, config_hash, run_checkpoints
from recall2imagine.driver import Driver
from recall2imagine.envs import env_options, make_env, memory_horizon, parse_task
from recall2imagine.logger import Logger, NullLogger, Progress, check_outputs
from recall2imagine.optim import OptState
from recall2imagine.replay import make_replay
from recall2imagine.report import openloop_report, write_episode_video
from recall2imagine.util import warn


def random_policy(act_space, rng):
    def policy(obs, state):
        n = len(obs["is_first"])
        if act_space.discrete:
            action = np.eye(act_space.n, dtype=np.float32)[rng.integers(0, act_space.n, n)]
        else:
            action = rng.uniform(-1, 1, (n, act_space.n)).astype(np.float32)
        return {"action": action}, state

    return policy


# Updates are skipped when their gradients are not finite (optim.Optimizer.step), so the weights stay
# those of the last finite update; this many skipped world-model updates in a row stop the run.
MAX_BAD_UPDATES = 100


def earlier_checkpoints(like):
    """Earlier layouts of the checkpointed tree {"agent": AgentState, "key": ...} as (like_then,
    upgrade) pairs for `Checkpointer.load_latest(earlier=)`. Until 2026-12-04 the loss scales and
    finite-step counts of the world model, actor and critic were two [3] arrays after `updates`."""
    s = like["agent"]
    opts = (s.wm_opt.inner, s.actor_opt.inner, s.critic_opt.inner)
    then = (*s[:4], *opts, s.retnorm, s.updates, jnp.zeros(3, jnp.float32), jnp.zeros(3, jnp.int32))

    def upgrade(tree):
        *nets, wm_opt, actor_opt, critic_opt, retnorm, updates, scale, good = tree["agent"]
        opts = [OptState(o, scale[i], good[i]) for i, o in enumerate((wm_opt, actor_opt, critic_opt))]
        return dict(tree, agent=AgentState(*nets, *opts, retnorm, updates))

    return [(dict(like, agent=then), upgrade)]


class DivergedError(ValueError):
    """The world model's updates stayed non-finite; the message names the last good checkpoint."""


def compile_quietly(lowered):
    """Compiles a lowered program for a later call to find; an error is left to that call, which
    compiles again and raises it where the run reports errors."""
    try:
        lowered.compile()
    except Exception:  # noqa: BLE001
        pass


def env_factory(cfg):
    """make_env, or ProcessEnv (same signature) with `--envs.parallel process`; checks RAM first
    for Memory Maze (~0.6 GB per env)."""
    if parse_task(cfg.task)[0] == "memory_maze":  # refuse before swapping or an OOM kill
        from recall2imagine.envs.memory_maze import check_memory

        try:
            check_memory(cfg.envs.amount + (cfg.run.eval_eps > 0))
        except MemoryError as e:
            raise configlib.ConfigError(str(e)) from None
    if cfg.envs.parallel == "process":  # each env in its own worker process, stepped concurrently
        from recall2imagine.envs.parallel import ProcessEnv

        return ProcessEnv
    return make_env


def window_warning(batch_length, horizon):
    """A one-line warning when replayed windows of `batch_length` steps are too short for a task
    whose longest dependency spans `horizon` = (steps, what) steps, else None. A window starts from
    the initial state, so a reward at window position t can be linked to the step k before it only
    when t >= k: a fraction (T - k) / T of the positions. Below half of them (T < 2k), learning the
    dependency is slow or impossible (README, "Training windows and memory")."""
    if horizon is None:
        return None
    k, what = horizon
    if batch_length >= 2 * k:
        return None
    start = (
        f"--batch_length {batch_length} is under 2x this task's memory horizon of {k} steps (it {what}): "
        f"a replayed window starts from the initial state, so"
    )
    if batch_length <= k:
        seen = f"no position in it sees {k} steps back (nothing older than {batch_length - 1} steps can be learned)"
    else:
        seen = f"only {(batch_length - k) / batch_length:.0%} of its positions see {k} steps back"
    return f"{start} {seen}; set --batch_length {2 * k} or more (and a smaller --batch_size to keep the cost)"


# settings of this process that change neither what is learned nor how: no warning when they differ on resume
PROCESS_KEYS = ("jax.process_id", "jax.compile_cache", "jax.malloc")


def config_changes(old, new, limit=8) -> str:
    """' in KEY (OLD -> NEW), ...' for the keys whose values differ; '' when `old` is missing (older
    checkpoints hold only the config's hash)."""
    if not isinstance(old, dict):
        return ""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in PROCESS_KEYS)
    if not keys:
        return ""
    shown = ", ".join(f"{k} ({old.get(k, '-')} -> {new.get(k, '-')})" for k in keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f" in {shown}{more}"


class Trainer:
    """Builds everything from a config and runs the loop. `should_stop()` is polled between env
    steps (a safe point: no update in flight); when it returns True the run saves and ends."""

    def __init__(self, cfg, backend, should_stop=lambda: False):
        # jsonl always; W&B also when a run name is given
        outputs = check_outputs(
            dict.fromkeys(("jsonl", *cfg.run.loggers, *(("wandb",) if cfg.wdb_name else ())))
        )
        new_env = env_factory(cfg)
        self.logdir = logdir = pathlib.Path(cfg.logdir or configlib.default_logdir(cfg)).expanduser()
        logdir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg = cfg.update({"logdir": str(logdir)})
        # several processes (jax.distributed): each has its own envs and replay and supplies its share
        # of the batch; process 0 ("lead") writes the config, logs, checkpoints, evaluations and reports
        self.processes, self.rank = jax.process_count(), jax.process_index()
        self.lead = self.rank == 0
        self.process_seed = cfg.seed + 7919 * self.rank  # replay sampling and the random prefill policy
        if self.processes > 1 and (cfg.replay != "memory" or cfg.use_lfs):
            raise configlib.ConfigError(
                "several processes (--jax.num_processes) train with the memory replay only; "
                "drop --replay / --use_lfs"
            )
        if self.lead:
            cfg.save(logdir / "config.yaml")
        print(f"logdir {logdir} | task {cfg.task} | backend {backend}", flush=True)
        message = window_warning(cfg.batch_length, memory_horizon(cfg.task, cfg.envs.length))
        if message:
            warn(message)
        self.should_stop = should_stop
        self.ahead = None  # the thread compiling the update during the prefill (`prefill_step`)

        # bsuite's own CSV log (from the first env) lets bsuite's analysis code score the run
        bsuite_dir = str(logdir / "bsuite") if parse_task(cfg.task)[0] == "bsuite" else None
        self.envs, self.eval_env = [], None
        try:
            options = env_options(cfg)
            for i in range(cfg.envs.amount):
                self.envs.append(
                    new_env(
                        cfg.task,
                        seed=cfg.seed * 1000 + self.rank * cfg.envs.amount + i,
                        bsuite_logdir=bsuite_dir if i == 0 else None,
                        **options,
                    )
                )
            if cfg.run.eval_eps > 0 and self.lead:
                self.eval_env = new_env(cfg.task, seed=cfg.seed * 1000 + 999, **options)
            self.act_space = self.envs[0].act_space
            self.replay = make_replay(
                cfg.replay,
                cfg.replay_size,
                len(self.envs),
                seed=self.process_seed,
                directory=cfg.replay_dir or logdir / "replay",
                use_lfs=cfg.use_lfs,
                lfs_dir=cfg.lfs_dir,
                chunk=cfg.batch_length,
            )
        except BaseException:
            self._close_envs()
            raise
        try:
            self._build(cfg, outputs)
        except BaseException:  # e.g. a bad config value in the agent: no worker or lock left behind
            self._close_envs()
            if hasattr(self.replay, "close"):
                self.replay.close()
            raise

    def _build(self, cfg, outputs):
        logdir = self.logdir
        self.agent = Agent(cfg, self.envs[0].obs_space, self.act_space, jax.random.PRNGKey(cfg.seed))
        self.driver = Driver(self.envs)
        # live status line on a terminal, silent otherwise
        self.progress = Progress(cfg.run.steps, sys.stdout)
        self.rng = np.random.default_rng(self.process_seed)
        self.key = jax.random.PRNGKey(cfg.seed + 1)  # acting (and, with one process, updates)
        self.counters = dict(step=0, updates=0, owed=0.0)
        self.bad_updates, self.no_save = 0, False  # non-finite world-model updates in a row; see diverged()
        self.reward_limit = float(np.expm1(cfg.reward_head.bin_max))  # the reward head's largest |reward|
        self.ckpt = Checkpointer(run_checkpoints(logdir, cfg), keep=cfg.run.keep_checkpoints)
        # the config without run.* and the process's own settings, as meta.json holds it (tuples as lists)
        self.model_config = json.loads(
            json.dumps(
                {k: v for k, v in cfg.flat().items() if not k.startswith("run.") and k not in PROCESS_KEYS},
                default=str,
            )
        )
        self.config_hash = config_hash(self.model_config)
        self.resume()
        if self.rank:  # the other processes act with keys of their own
            self.key = jax.random.fold_in(self.key, self.rank)
        continued = self.continue_from_durable_replay()
        # after a resume, what the logs hold beyond the resumed step is dropped: steps never go back
        self.logger = (
            NullLogger()
            if not self.lead
            else Logger(
                logdir,
                outputs + ("console",),
                wandb_name=cfg.wdb_name,
                config=cfg.to_dict(),
                console=self.progress.println,
                resume_step=self.counters["step"] if self.ckpt.loaded or continued else None,
            )
        )
        self.counters.setdefault("next_report", cfg.run.report_every)
        self.counters.setdefault("next_eval", cfg.run.eval_every)
        self.batch_steps = cfg.batch_size * cfg.batch_length
        self.scores = collections.deque(maxlen=50)
        self.pending = []  # device metrics not yet fetched
        now = time.time()
        self.last = dict(time=now, save=now, step=self.counters["step"], updates=self.counters["updates"])

    def train_key(self):
        """The key of the next update: with several processes the same on all of them."""
        if self.processes == 1:
            return self.next_key()
        return jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed + 2), self.counters["updates"])

    def stop_agreed(self):
        """Several processes stop together (an update needs all of them): at the same step, when any
        of them was asked to. A collective, called by all at the same points."""
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([self.should_stop()]))))

    def next_key(self):
        self.key, sub = jax.random.split(self.key)
        return sub

    # ------------------------------------------------------------ checkpoints

    def resume(self):
        """Restore the newest intact checkpoint: model, optimisers, replay, counters, RNG state."""
        like = {"agent": self.agent.state, "key": self.key}
        restored = self.ckpt.load_latest(like, extra=self.replay.load, earlier=earlier_checkpoints(like))
        if not restored:
            if self.cfg.run.from_checkpoint:  # a new run from another run's agent
                from recall2imagine.evaluate import load_agent_state

                step, folder = load_agent_state(self.agent, self.cfg.run.from_checkpoint)
                print(
                    f"starting from the agent of {folder} (its step {step}); counters and replay start anew",
                    flush=True,
                )
            return
        _, tree, meta = restored
        self.agent.state, self.key = tree["agent"], tree["key"]  # the setter places it on the train devices
        self.counters.update(meta["counters"])
        self.rng.bit_generator.state = meta["np_rng"]
        print(
            f"resumed from {self.ckpt.loaded} at step {self.counters['step']} ({len(self.replay)} replay steps)",
            flush=True,
        )
        if meta.get("config_hash") != self.config_hash:
            old = meta.get("config")
            changes = config_changes(old, self.model_config)
            if changes or not isinstance(old, dict):  # not when only process settings (PROCESS_KEYS) differ
                warn(f"the config differs from the checkpoint's{changes}; continuing with the new one")

    def continue_from_durable_replay(self):
        """With the LFS replay, steps flushed to the durable tier after the checkpoint are in the replay:
        the env-step counter continues from them (a crash loses agent updates, not env steps)."""
        durable = getattr(self.replay, "durable_steps", None)
        if durable is None or durable <= self.counters["step"]:
            return False
        print(
            f"the durable replay holds {durable - self.counters['step']:,} env steps after "
            f"{'the checkpoint' if self.ckpt.loaded else 'step 0'}; the env-step counter continues from "
            f"{durable:,}",
            flush=True,
        )
        self.counters["step"] = durable
        return True

    def save_checkpoint(self):
        if not self.lead:
            return
        meta = dict(
            counters=dict(self.counters),
            np_rng=self.rng.bit_generator.state,
            config_hash=self.config_hash,
            config=self.model_config,
            replay=self.replay.info(),
        )
        start = time.perf_counter()
        try:
            folder = self.ckpt.save(
                self.counters["step"],
                {"agent": self.agent.state, "key": self.key},
                meta,
                extra=self.replay.save,
            )
            self.logger.add(
                {
                    "checkpoint/seconds": time.perf_counter() - start,
                    "checkpoint/bytes": self.ckpt.bytes(folder),
                    "checkpoint/dir_bytes": self.ckpt.bytes(),
                }
            )
        except CheckpointError as e:  # e.g. disk full: keep training, keep the older checkpoints
            warn(str(e))
        except RuntimeError as e:  # agent state lost mid-update (a second Ctrl-C): keep the old ones
            warn(f"no checkpoint written ({str(e).splitlines()[0]}); the previous one is kept")
        self.last["save"] = time.time()

    # ------------------------------------------------------------ driver callbacks

    def on_step(self, tran, workers):
        # a safe point: no update in flight, the step not stored (several processes agree in run())
        if self.processes == 1 and self.should_stop():
            raise KeyboardInterrupt
        self.replay.add(tran, workers)
        biggest = np.abs(tran["reward"]).max()
        if self.reward_limit is not None and biggest > self.reward_limit:
            warn(
                f"reward {biggest:.4g} is outside the reward head's range "
                f"(|r| <= {self.reward_limit:.4g}) and is learned as that; raise --reward_head.bin_max "
                f"(symlog space, DreamerV3: 20)"
            )
            self.reward_limit = None  # once per run
        self.counters["step"] += len(workers) * self.processes  # env steps of all processes
        self.progress.update(self.counters["step"], self.counters["updates"], self.scores)

    def on_episode(self, ep):
        self.scores.append(ep["score"])
        self.logger.add({"episode/score": ep["score"], "episode/length": ep["length"]})
        self.logger.episode(self.counters["step"], ep["score"], ep["length"])

    def prefill_step(self, tran, workers):
        """A random-policy step of the prefill. The first one lowers the update for a batch of its keys,
        dtypes and shapes (`Agent.lower_update`) and compiles it in a thread, so that the compile (10-30
        s on 2 CPU cores) overlaps the rest of the prefill instead of following it. One process only:
        with several, the update is a collective program they compile together."""
        if self.ahead is None and self.processes == 1 and self.counters["updates"] == 0:
            B, T = self.cfg.batch_size, self.cfg.batch_length
            batch = {
                k: np.broadcast_to(np.asarray(v)[0], (B, T) + np.shape(v)[1:]).copy() for k, v in tran.items()
            }
            self.ahead = threading.Thread(
                target=compile_quietly, args=(self.agent.lower_update(batch),), daemon=True
            )
            self.ahead.start()
        self.on_step(tran, workers)

    def join_ahead(self):
        """Waits for `prefill_step`'s compile, so that the first update uses it rather than compiling
        the same program a second time."""
        if self.ahead is not None:
            self.ahead.join()
            self.ahead = None

    def train_on_step(self, tran, workers):
        """Store the step, then owe `train_ratio / (B T)` updates per env step and pay them."""
        cfg, counters = self.cfg, self.counters
        self.on_step(tran, workers)
        counters["owed"] += len(workers) * self.processes * cfg.run.train_ratio / self.batch_steps
        while counters["owed"] >= 1.0:
            self.join_ahead()
            batch = self.replay.sample(cfg.batch_size // self.processes, cfg.batch_length)
            self.pending.append(self.agent.train(batch, self.train_key()))
            counters["owed"] -= 1.0
            counters["updates"] += 1
        if time.time() - self.last["time"] >= cfg.run.log_every:
            self.write_logs()
            if self.bad_updates >= MAX_BAD_UPDATES:
                self.diverged()
        if time.time() - self.last["save"] >= cfg.run.save_every:
            self.save_checkpoint()

    def diverged(self):
        """Stops the run without a new checkpoint: the last one holds the last good state."""
        self.no_save = True
        steps = self.ckpt.steps()
        last = (
            f"the last good checkpoint is {self.ckpt.path(steps[-1])}"
            if steps
            else "no checkpoint was written yet"
        )
        raise DivergedError(
            f"the last {self.bad_updates} world-model updates had non-finite gradients and were "
            f"skipped (step {self.counters['step']}); {last} and is kept: resume it with a lower "
            f"--model_opt.lr or --model_opt.clip"
        )

    def policy(self, obs, pstate, mode="train"):
        action, pstate = self.agent.policy(obs, pstate, self.next_key(), mode=mode)
        return {"action": action}, pstate

    # ------------------------------------------------------------ outputs

    def write_logs(self):
        now, counters = time.time(), self.counters
        if getattr(self.replay, "durable_steps", None) is not None:
            self.replay.flush()  # LFS: every env step the logs report is durable, so a SIGKILL loses none of them
        for metrics in jax.device_get(self.pending):
            bad = float(metrics.get("model_opt_skipped", 0.0)) > 0.5
            self.bad_updates = self.bad_updates + 1 if bad else 0
            self.logger.add({k: float(v) for k, v in metrics.items()}, prefix="train")
        self.pending.clear()
        dt = max(now - self.last["time"], 1e-9)
        self.logger.add(
            {
                "fps": (counters["step"] - self.last["step"]) / dt,
                "train_steps_per_sec": (counters["updates"] - self.last["updates"]) / dt,
                "replay/size": len(self.replay),
                "train/updates": counters["updates"],
            }
        )
        self.logger.write(counters["step"])
        self.last.update(time=now, step=counters["step"], updates=counters["updates"])

    def evaluate(self):
        """`run.eval_eps` greedy episodes on a separate env, logged as eval/*, not added to the replay;
        on image tasks the first becomes videos/eval_<step>.gif."""
        returns, lengths, frames = [], [], []

        def on_eval_step(tran, workers):
            if not returns and "image" in tran:
                frames.append(np.asarray(tran["image"][0]))

        def on_eval_episode(ep):
            returns.append(ep["score"])
            lengths.append(ep["length"])

        driver = Driver([self.eval_env])
        while len(returns) < self.cfg.run.eval_eps:
            driver(
                lambda obs, s: self.policy(obs, s, mode="eval"),
                steps=1,
                on_step=on_eval_step,
                on_episode=on_eval_episode,
            )
        self.logger.add({"eval/score": float(np.mean(returns)), "eval/length": float(np.mean(lengths))})
        if frames:
            try:
                write_episode_video(self.logger, self.logdir / "videos", self.counters["step"], frames)
            except OSError as e:
                warn(f"evaluation video not written ({e})")
        self.counters["next_eval"] = self.counters["step"] + self.cfg.run.eval_every

    def report(self):
        """Open-loop predictions of a replay batch: GIFs (images) / PNG plots (vectors) in <logdir>/videos."""
        cfg = self.cfg
        try:
            context = min(cfg.run.report_context, cfg.batch_length - 1)
            openloop_report(
                self.agent,
                self.replay.sample(cfg.batch_size, cfg.batch_length),
                self.next_key(),
                context,
                self.logdir / "videos",
                self.counters["step"],
                self.logger,
            )
        except (OSError, ValueError) as e:  # a report must never stop training
            warn(f"open-loop report skipped ({e})")
        self.counters["next_report"] = self.counters["step"] + cfg.run.report_every

    # ------------------------------------------------------------ the loop

    def run(self):
        """Prefill, then act and train until run.steps; returns the mean of the last 50 episode returns."""
        cfg, counters, driver = self.cfg, self.counters, self.driver
        fill = cfg.run.train_fill or max(self.batch_steps, cfg.batch_length * len(self.envs))
        start, interrupted = time.time(), False
        try:
            if len(self.replay) < fill:
                print(f"prefill {fill - len(self.replay)} steps with a random policy", flush=True)
                driver(
                    random_policy(self.act_space, self.rng),
                    steps=fill - len(self.replay),
                    on_step=self.prefill_step,
                    on_episode=self.on_episode,
                )
                driver.reset_policy_state()  # the agent starts from its initial latent; episodes go on
            while counters["step"] < cfg.run.steps:
                left = -(-(cfg.run.steps - counters["step"]) // self.processes)  # env steps of this process
                driver(
                    self.policy,
                    steps=min(len(self.envs) * 16, left),
                    on_step=self.train_on_step,
                    on_episode=self.on_episode,
                )
                if self.processes > 1 and self.stop_agreed():
                    raise KeyboardInterrupt
                if self.eval_env is not None and counters["step"] >= counters["next_eval"]:
                    self.evaluate()
                if self.lead and cfg.run.report_every and counters["step"] >= counters["next_report"]:
                    self.report()
            if self.lead and cfg.run.report_every and counters["updates"]:  # the final model's predictions
                self.report()
        except KeyboardInterrupt:
            interrupted = True
            self.progress.close()
            print("\ninterrupted: saving a checkpoint and the logs", flush=True)
        finally:
            self.close()
        mean = float(np.mean(self.scores)) if self.scores else float("nan")
        minutes = (time.time() - start) / 60
        print(
            f"{'stopped' if interrupted else 'done'}: {counters['step']} env steps, {counters['updates']} "
            f"updates, {minutes:.1f} min | mean return over last {len(self.scores)} episodes: {mean:.3f} | "
            f"logs: {self.logdir}",
            flush=True,
        )
        print(self.logger.summary(), flush=True)
        return mean

    def close(self):
        """Final logs and checkpoint; an error there (e.g. the lfs_dir filled up) still closes the
        logs and the envs."""
        self.progress.close()
        self.join_ahead()  # no compile left running while the process exits
        try:
            self.write_logs()
            if not self.no_save:
                self.save_checkpoint()
            if hasattr(self.replay, "close"):  # lfs: flush the durable tier, stop its writer thread
                self.replay.close()
        finally:
            self.logger.close()
            self._close_envs()

    def _close_envs(self):
        for env in self.envs + ([self.eval_env] if self.eval_env is not None else []):
            env.close()
