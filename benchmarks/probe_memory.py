"""What a trained RepeatPrevious agent remembers: the numbers behind BENCHMARKS.md's RepeatPreviousEasy diagnosis.

  python benchmarks/probe_memory.py RUN_DIR [--episodes 30] [--probe_episodes 200] [--lags 0 1 2]

RUN_DIR is a training logdir (config.yaml + checkpoints/) of a POPGym RepeatPrevious or Autoencode
task, whose observation ends with the one-hot suit of the current card. Prints
  * greedy and sampled scores, the policy's accuracy by position in the episode (RepeatPrevious) or
    over all answers (Autoencode), and how often it answers each suit;
  * RepeatPrevious: for the rewarded steps, how often the action equals the suit seen L steps back
    (L = 0..7 and the task's lag +-1): the task's lag has ~100%; for the wrong actions, the rates at
    other lags tell guesses (all ~25%) from confusions (one lag high);
  * linear probes (least squares, half of `--probe_episodes` random-policy episodes held out) of that
    suit from the posterior latents' `hidden`, `deter` and `stoch` features;
  * on the same states, one imagined step with each action: how often the reward head prefers the
    rewarded action, against how often the greedy actor picks it.
"""

import argparse
import collections
import pathlib
import re
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LAGS = range(8)
TASK_LAGS = {"Easy": 3, "Medium": 31, "Hard": 63}  # POPGym RepeatPrevious: the card k = 4, 32, 64 back


def task_lag(task):
    """Observations between the suit to repeat and the step that acts on it, from the task id."""
    m = re.search(r"RepeatPrevious(Easy|Medium|Hard)", task)
    if not m:
        raise SystemExit(
            f"{task} is not a POPGym RepeatPrevious or Autoencode task; use "
            "gym_popgym:popgym-RepeatPrevious{Easy,Medium,Hard}-v0 or gym_popgym:popgym-AutoencodeEasy-v0"
        )
    return TASK_LAGS[m.group(1)]


def card_suits(obs, act_dim):
    """The suit of each observation's card [...], from obs [..., C] whose last `act_dim` entries are
    the card's one-hot suit (RepeatPrevious and Autoencode alike)."""
    return np.argmax(obs[..., -act_dim:], -1)


def suit_back(obs, lag, act_dim):
    """The suit `lag` observations before each one: [N, T] (-1 for the first `lag`), from obs [N, T, C]."""
    suits = card_suits(obs, act_dim)
    out = np.full(suits.shape, -1)
    if lag < suits.shape[1]:
        out[:, lag:] = suits[:, : suits.shape[1] - lag]
    return out


def answers(task, obs, act_dim):
    """The rewarded action after each observation of whole episodes obs [N, T, C] (from their first
    step) and how far back the card it names was shown: (target [N, T], -1 where no action is judged;
    lag [N, T]). RepeatPrevious: the suit `task_lag` observations back. Autoencode: the cards are
    recited in reverse once the mode bit (obs[..., 0], POPGym's PLAY) turns on at observation p, so the
    action after observation t >= p names the card shown at 2p - t, 2 (t - p) observations back."""
    if "Autoencode" not in task:
        lag = task_lag(task)
        return suit_back(obs, lag, act_dim), np.full(obs.shape[:2], lag)
    suits = card_suits(obs, act_dim)
    N, T = suits.shape
    target, lag = np.full((N, T), -1), np.full((N, T), -1)
    for n in range(N):
        if not (obs[n, :, 0] > 0.5).any():
            continue  # still watching
        p = int(np.argmax(obs[n, :, 0] > 0.5))
        t = np.arange(p, min(T, 2 * p + 1))
        target[n, t], lag[n, t] = suits[n, 2 * p - t], 2 * (t - p)
    return target, lag


def load(run):
    import jax

    from recall2imagine import config as configlib
    from recall2imagine.agent import Agent
    from recall2imagine.checkpoint import Checkpointer
    from recall2imagine.envs import make_env

    cfg = configlib.Config.load(run / "config.yaml")
    jax.config.update("jax_platforms", "cpu")
    env = make_env(cfg.task, seed=12345)
    agent = Agent(cfg, env.obs_space, env.act_space, jax.random.PRNGKey(0))
    step, tree, _ = Checkpointer(run / "checkpoints").load_latest(
        {"agent": agent.state, "key": jax.random.PRNGKey(0)}
    )
    agent.state = tree["agent"]
    return cfg, env, agent, step


def play(env, agent, episodes, mode, key):
    """-> scores, per-position correctness, and (action, suits so far, reward) per rewarded step."""
    import jax

    scores, by_pos, steps = [], collections.defaultdict(list), []
    for _ in range(episodes):
        obs, state, suits, score = env.reset(), None, [], 0.0
        while True:
            suits.append(int(card_suits(obs["vector"], agent.act_dim)))
            key, sub = jax.random.split(key)
            act, state = agent.policy({k: np.asarray(v)[None] for k, v in obs.items()}, state, sub, mode=mode)
            a = int(np.argmax(act[0]))
            obs = env.step(act[0])
            score += float(obs["reward"])
            if obs["reward"] != 0:
                by_pos[len(suits)].append(obs["reward"] > 0)
                steps.append((a, list(suits), float(obs["reward"])))
            if obs["is_last"]:
                break
        scores.append(score)
    return scores, by_pos, steps, key


def lag_rates(steps, right, lags):
    sel = [(a, s) for a, s, r in steps if (r > 0) == right]
    return {lag: np.mean([len(s) > lag and s[-1 - lag] == a for a, s in sel]) for lag in lags}, len(sel)


def random_episodes(env, act_dim, episodes, seed=0):
    """`episodes` random-policy episodes cut to the shortest: (obs [N, T, C] one-hot suits, actions
    [N, T, A] one-hot, action t chosen after obs t). Random actions: the probes are about memory, not
    the policy."""
    rng = np.random.default_rng(seed)
    obs_eps, act_eps = [], []
    for _ in range(episodes):
        obs, os_, as_ = env.reset(), [], []
        while True:
            a = np.eye(act_dim, dtype=np.float32)[rng.integers(act_dim)]
            os_.append(obs["vector"])
            as_.append(a)
            obs = env.step(a)
            if obs["is_last"]:
                break
        obs_eps.append(np.stack(os_))
        act_eps.append(np.stack(as_))
    T = min(len(o) for o in obs_eps)
    return np.stack([o[:T] for o in obs_eps]), np.stack([a[:T] for a in act_eps])


def posteriors(agent, obs, actions):
    """Posterior latents {k: [N, T, ...]} of the agent's world model on whole episodes from a zero state."""
    import jax
    import jax.numpy as jnp

    O, A = jnp.asarray(obs), jnp.asarray(actions)
    N, T = O.shape[:2]
    wm = agent.state.wm
    is_first = jnp.zeros((N, T), bool).at[:, 0].set(True)
    embed = wm.encoder({"vector": O, "is_first": is_first}, jnp.float32)
    prev_action = jnp.concatenate([jnp.zeros_like(A[:, :1]), A[:, :-1]], 1)
    post, _ = wm.rssm.observe(
        embed, prev_action, is_first, wm.rssm.initial((N,), jnp.float32), jax.random.PRNGKey(3)
    )
    return post


def random_posteriors(env, agent, episodes):
    """(post {k: [N, T, ...]}, obs [N, T, C]) of `episodes` random-policy episodes."""
    obs, actions = random_episodes(env, agent.act_dim, episodes)
    return posteriors(agent, obs, actions), obs


def probes(post, target):
    """Linear probes: {feature: held-out accuracy of reading target [N, T] (-1: skipped) from each
    state}; least squares on the first half of the episodes, tested on the rest."""
    import jax.numpy as jnp

    from recall2imagine.nets.layers import features

    keep, first = target >= 0, np.arange(len(target)) < len(target) // 2
    fit, test = keep & first[:, None], keep & ~first[:, None]
    Y = np.eye(target.max() + 1)[target[fit]]
    out = {}
    for name in ("hidden", "deter", "stoch"):
        if name not in post:
            continue
        X = np.asarray(features(post, [name], jnp.float32))
        X = np.concatenate([X, np.ones((*X.shape[:2], 1))], -1)
        W = np.linalg.solve(X[fit].T @ X[fit] + 1e-2 * np.eye(X.shape[-1]), X[fit].T @ Y)
        out[name] = float(np.mean(np.argmax(X[test] @ W, -1) == target[test]))
    return out


def imagined_rewards(agent, post, target):
    """From each posterior state whose action is judged (target [N, T] >= 0), one imagined step with
    every action: -> (start latents {k: [M, ...]}, predicted rewards [M, A], the rewarded action [M])."""
    import jax
    import jax.numpy as jnp

    from recall2imagine.nets import dists
    from recall2imagine.nets.layers import features

    wm, cfg = agent.state.wm, agent.cfg
    keep = target >= 0
    start = {k: np.asarray(v)[keep] for k, v in post.items()}  # [M, ...]
    preds = []
    for a in range(agent.act_dim):
        act = jnp.zeros((int(keep.sum()), agent.act_dim)).at[:, a].set(1.0)
        nxt = wm.rssm.img_step(start, act, jax.random.PRNGKey(a))
        logits = wm.reward(features(nxt, cfg.reward_head.inputs, jnp.float32))
        preds.append(np.asarray(dists.twohot_mean(logits, agent.reward_bins)))
    return start, np.stack(preds, -1), target[keep]


def reward_check(agent, start, preds, target):
    """On `imagined_rewards`' states: does the reward head prefer the rewarded action, and does the
    actor pick it? -> (world model's accuracy, actor's accuracy, mean predicted reward for the
    rewarded action and for the others). Equal accuracies mean the actor knows what the world model
    knows: the model's memory, not the actor, limits the score."""
    import jax

    from recall2imagine.agent import act

    chosen = np.asarray(act(agent.state.actor, start, jax.random.PRNGKey(0), agent.setup, True)).argmax(-1)
    right = np.eye(agent.act_dim, dtype=bool)[target]
    return (
        float(np.mean(preds.argmax(-1) == target)),
        float(np.mean(chosen == target)),
        float(preds[right].mean()),
        float(preds[~right].mean()),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=pathlib.Path)
    p.add_argument("--episodes", type=int, default=30, help="episodes per acting mode")
    p.add_argument("--probe_episodes", type=int, default=200)
    p.add_argument(
        "--lags",
        type=int,
        nargs="*",
        default=[],
        help="also probe the suit these many observations back (0: the current card)",
    )
    args = p.parse_args(argv)
    import jax

    cfg, env, agent, step = load(args.run)
    print(f"{args.run}: {cfg.task}, checkpoint at step {step}")
    autoencode = "Autoencode" in cfg.task
    key, lag = jax.random.PRNGKey(1), None if autoencode else task_lag(cfg.task)
    for mode in ("eval", "train"):
        scores, by_pos, steps, key = play(env, agent, args.episodes, mode, key)
        if autoencode:
            acc = f"{np.mean([r > 0 for _, _, r in steps]):.3f} over all answers"
        else:
            acc = "by position " + " ".join(f"{t}:{np.mean(v):.2f}" for t, v in sorted(by_pos.items()))
        shares = np.bincount([a for a, _, _ in steps], minlength=agent.act_dim) / max(1, len(steps))
        print(
            f"{'greedy' if mode == 'eval' else 'sampled'}: score {np.mean(scores):.3f}, accuracy {acc}; "
            "answers by suit " + " ".join(f"{s:.2f}" for s in shares)
        )
        if autoencode:
            continue
        lags = sorted(set(LAGS) | {lag - 1, lag, lag + 1})
        right, n_right = lag_rates(steps, True, lags)
        wrong, n_wrong = lag_rates(steps, False, lags)
        print(
            f"  action = suit L steps back, rewarded steps (n={n_right}): "
            + " ".join(f"L{lag}:{r:.2f}" for lag, r in right.items())
        )
        print(
            f"  action = suit L steps back, wrong steps (n={n_wrong}): "
            + " ".join(f"L{lag}:{r:.2f}" for lag, r in wrong.items())
        )
    post, obs = random_posteriors(env, agent, args.probe_episodes)
    answer = answers(cfg.task, obs, agent.act_dim)[0]
    start, preds, target = imagined_rewards(agent, post, answer)
    wm_acc, actor_acc, r_right, r_wrong = reward_check(agent, start, preds, target)
    print(
        f"one imagined step from random-policy states: the reward head prefers the rewarded action "
        f"{wm_acc:.3f} of the time (predicted reward {r_right:+.4f} for it, {r_wrong:+.4f} for the others); "
        f"the greedy actor picks it {actor_acc:.3f}"
    )
    print("mean predicted reward for action a (rows) when action b is the rewarded one (columns):")
    for a in range(agent.act_dim):
        print(f"  a={a}: " + " ".join(f"{preds[target == b, a].mean():+.4f}" for b in range(agent.act_dim)))
    if autoencode:
        accs = probes(post, answer)
        print(
            "linear probe of the rewarded answer: "
            + ", ".join(f"{k} {v:.3f}" for k, v in accs.items())
            + f" (chance {1 / agent.act_dim:.2f})"
        )
    for probe_lag in ([] if autoencode else [lag]) + [extra for extra in args.lags if extra != lag]:
        accs = probes(post, suit_back(obs, probe_lag, agent.act_dim))
        print(
            f"linear probe of the suit {probe_lag} observations back: "
            + ", ".join(f"{k} {v:.3f}" for k, v in accs.items())
            + f" (chance {1 / agent.act_dim:.2f})"
        )


if __name__ == "__main__":
    main()
