"""How many updates a world model needs to learn a POPGym reward that needs memory.

  python benchmarks/wm_memory.py --configs popgym cpu --rssm.hidden 64 --free_bits 2.0 \\
      [--task gym_popgym:popgym-RepeatPreviousMedium-v0] [--updates 12000] [--eval_every 500] [--seed 0]

World-model-only training on random-policy data, no actor or critic. On RepeatPrevious the full
agent stays at chance until its reward head learns that the reward depends on the card `lag`
observations back (3 for Easy, 31 for Medium, 63 for Hard), and that onset is set by the world
model; imagination dominates a CPU update, so this finds the onset several times faster than a
training run and compares settings on the same data. Autoencode (`--task
gym_popgym:popgym-AutoencodeEasy-v0`) recites the 52 cards it was shown in reverse: the k-th answer
(k = 1..52) names the card 2(k - 1) observations back (`probe_memory.answers`), so the accuracy and
the AUC are also printed by lag.

Collects `--data_episodes` random-policy episodes (a random policy is balanced: a quarter of the
actions are rewarded) and trains the world model with the run's own loss and optimiser on
[batch_size, batch_length] windows cut anywhere from the stream of episodes (they cross episode
boundaries, as replayed windows do). Every `--eval_every` updates it prints the training losses
and, on `--eval_episodes` other episodes played from a zero state, how often the reward head
prefers the rewarded action after one imagined step with each action (`probe_memory.imagined_rewards`;
chance 1/4), how well the reward predicted for action 0 alone separates the states where action 0 is
rewarded from the others (ROC AUC; chance 0.5), and how well a linear probe reads the rewarded action
(the card it names) from the SSM state.

`--burn_in N` starts each window from the latent the current model reaches over the N steps before
it (no gradient there) instead of from the initial latent: an idealised stored state (fresh, not the
stale state a replay would hold), to see whether a dependency longer than the window can be learned
once the window starts from a carried state (README, "Training windows and memory").

`--bias p` makes the behaviour policy play action 0 with probability p (else uniformly): with p = 1
the reward is a function of the old card alone ("was it suit 0?"), as it becomes for the training
agent once its policy entropy has collapsed; with p = 0 (uniform) it is a function of the action and
the old card together, which has no first-order signal.
Flags it does not know are config overrides, as for `recall2imagine.train`.
"""

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def stream(env, act_dim, episodes, rng, bias):
    """Random-policy episodes laid end to end like replay rows: {key: [N_steps, ...]}. Row t holds
    obs t, the reward and flags that came with it, and the action chosen after it."""
    rows = {k: [] for k in ("vector", "reward", "is_first", "is_last", "is_terminal", "action")}
    for _ in range(episodes):
        obs = env.reset()
        while True:
            a = np.eye(act_dim, dtype=np.float32)[0 if rng.random() < bias else rng.integers(act_dim)]
            for k, column in rows.items():
                column.append(a if k == "action" else obs[k])
            if obs["is_last"]:
                break
            obs = env.step(a)
    floats = ("vector", "reward", "action")
    return {k: np.asarray(v, np.float32 if k in floats else bool) for k, v in rows.items()}


def roc_auc(score, positive):
    """P(score of a positive > score of a negative), ties counted half."""
    pos, neg = score[positive], np.sort(score[~positive])
    below, not_above = np.searchsorted(neg, pos, "left"), np.searchsorted(neg, pos, "right")
    return float((below + 0.5 * (not_above - below)).sum() / (len(pos) * len(neg)))


def by_lag(stat, lags, edges=(0, 10, 30, 60)):
    """' (by lag 0-9 a, 10-29 b, ...)': stat(mask) over the states [M] of each lag bucket (lags [M]);
    '' when all states share one lag."""
    if lags.min() == lags.max():
        return ""
    bounds = list(edges) + [lags.max() + 1]
    masks = [(lo, hi, (lags >= lo) & (lags < hi)) for lo, hi in zip(bounds, bounds[1:])]
    return " (by lag " + ", ".join(f"{lo}-{hi - 1} {stat(m):.2f}" for lo, hi, m in masks if m.any()) + ")"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=12000)
    p.add_argument("--eval_every", type=int, default=500)
    p.add_argument("--data_episodes", type=int, default=2000)
    p.add_argument("--eval_episodes", type=int, default=100)
    p.add_argument("--bias", type=float, default=0.0, help="probability of playing action 0 (else uniform)")
    p.add_argument(
        "--burn_in", type=int, default=0, help="steps before each window that carry the state into it"
    )
    args, overrides = p.parse_known_args(argv)

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from probe_memory import answers, imagined_rewards, posteriors, probes, random_episodes

    from recall2imagine import config as configlib
    from recall2imagine.agent import Agent
    from recall2imagine.world_model import world_model_loss
    from recall2imagine.envs import make_env

    cfg = configlib.parse(overrides)
    jax.config.update("jax_platforms", cfg.jax.platform if cfg.jax.platform != "auto" else "cpu")
    env = make_env(cfg.task, seed=cfg.seed)
    agent = Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(cfg.seed))
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    data = stream(env, agent.act_dim, args.data_episodes, rng, args.bias)
    eval_obs, eval_act = random_episodes(
        make_env(cfg.task, seed=cfg.seed + 10_000), agent.act_dim, args.eval_episodes, seed=cfg.seed + 1
    )
    target, lags = answers(cfg.task, eval_obs, agent.act_dim)
    judged_lags = lags[target >= 0]  # [M], in imagined_rewards' order
    lag_range = f"lag {lags.max()}" if lags.min() == lags.max() else f"lags 0-{lags.max()}"
    n_rows, B, T = len(data["reward"]), cfg.batch_size, cfg.batch_length
    burn = f" after {args.burn_in} burn-in steps" if args.burn_in else ""
    print(
        f"{cfg.task}: {lag_range}, {n_rows} steps of a policy playing action 0 with probability {args.bias:g}"
        f" + uniform ({time.time() - t0:.0f} s), updates of {B} x {T}{burn}; overrides: {' '.join(overrides)}",
        flush=True,
    )

    N = args.burn_in

    def carried(wm, burn, key):
        """(latent [B], action [B, A]) at the last of the burn-in steps `burn` [B, N], no gradient."""
        wm = jax.tree.map(jax.lax.stop_gradient, wm)
        action = jnp.asarray(burn["action"])
        prev = jnp.concatenate([jnp.zeros_like(action[:, :1]), action[:, :-1]], 1)
        post, _ = wm.rssm.observe(
            wm.encoder(burn, agent.dtype),
            prev,
            jnp.asarray(burn["is_first"]),
            wm.rssm.initial((action.shape[0],), agent.dtype),
            key,
        )
        return jax.tree.map(lambda x: x[:, -1], post), action[:, -1]

    @eqx.filter_jit
    def update(wm, opt_state, batch, key):
        params, static = eqx.partition(wm, eqx.is_array)
        start = None
        if N:
            key, k_burn = jax.random.split(key)
            start = carried(wm, {k: v[:, :N] for k, v in batch.items()}, k_burn)
            batch = {k: v[:, N:] for k, v in batch.items()}
        loss_fn = lambda p: world_model_loss(eqx.combine(p, static), batch, key, agent.setup, start)
        step = agent.wm_opt.step(loss_fn, params, opt_state)
        return eqx.combine(step.params, static), step.state, step.aux[1]

    wm, opt_state, key = agent.state.wm, agent.state.wm_opt, jax.random.PRNGKey(cfg.seed)
    sums, onset, onset0, t0 = {}, None, None, time.time()
    for i in range(1, args.updates + 1):
        starts = rng.integers(0, n_rows - N - T, B)
        idx = starts[:, None] + np.arange(N + T)  # [B, N + T]
        batch = {k: v[idx] for k, v in data.items()}
        key, sub = jax.random.split(key)
        wm, opt_state, metrics = update(wm, opt_state, batch, sub)
        for k in ("reward_loss", "vector_loss", "kl_dyn"):
            sums[k] = sums.get(k, 0.0) + float(metrics[k])
        if i % args.eval_every == 0 or i == args.updates:
            n = args.eval_every if i % args.eval_every == 0 else i % args.eval_every
            agent.state = agent.state._replace(wm=wm, wm_opt=opt_state)
            post = posteriors(agent, eval_obs, eval_act)
            _, preds, judged = imagined_rewards(agent, post, target)
            right = preds.argmax(-1) == judged
            acc, auc = float(np.mean(right)), roc_auc(preds[:, 0], judged == 0)
            acc_by_lag = by_lag(lambda m: np.mean(right[m]), judged_lags)
            auc_by_lag = by_lag(lambda m: roc_auc(preds[m, 0], judged[m] == 0), judged_lags)
            hidden = probes(post, target).get("hidden", float("nan"))
            if onset is None and acc >= 0.5:
                onset = i
            if onset0 is None and auc >= 0.75:
                onset0 = i
            print(
                f"update {i:6d} ({time.time() - t0:5.0f} s) | "
                + " ".join(f"{k} {v / n:.4f}" for k, v in sums.items())
                + f" | reward head prefers the rewarded action {acc:.3f}{acc_by_lag},"
                f" action-0 AUC {auc:.3f}{auc_by_lag} | answer probe from hidden {hidden:.3f}",
                flush=True,
            )
            sums = {}
    at = lambda u: f"update {u}" if u else "not reached"
    print(
        f"of {args.updates} updates: reward-head accuracy >= 0.5 at {at(onset)}, action-0 AUC >= 0.75 at "
        f"{at(onset0)}; final accuracy {acc:.3f}, AUC {auc:.3f}"
    )


if __name__ == "__main__":
    main()
