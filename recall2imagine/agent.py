"""R2I agent: actor-critic in the world model's imagination, as pure functions over a state pytree.

Data flow of one update (paper, section 3 and appendix):
  replay batch [B, T] -> `world_model_loss` (observe, heads, KL) -> model_opt step
  -> posterior states [B*T] (a random `imag_starts` of them) -> `imagine` `imag_horizon` steps
  with the actor -> `lambda_return` of the critic's values -> `critic_loss` and `actor_loss`
  -> critic and actor steps -> `slow_critic_update`. `Agent.train` composes them.
"""

import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from recall2imagine import actor_grad
from recall2imagine.devices import DTYPES, Placement, PolicyParams, resolve_precision
from recall2imagine.devices import release_programs, scan_parallel, trim_after_compiles
from recall2imagine.nets import dists
from recall2imagine.nets.layers import MLP, feature_size, features
from recall2imagine.optim import OptState, global_norm, optimizers, param_labels
from recall2imagine.world_model import WorldModel, openloop, world_model_loss

sg = jax.lax.stop_gradient


class Setup(NamedTuple):
    """What the update functions read besides parameters and data; fixed for a run."""

    cfg: Any
    dtype: Any  # compute dtype of the networks
    reward_bins: jax.Array  # two-hot bins of the reward head
    value_bins: jax.Array  # ... and of the critic
    act: dists.ActionDist  # the actor's outputs as an action distribution

    @property
    def gamma(self):
        return 1.0 - 1.0 / self.cfg.horizon


# ------------------------------------------------------------ the update as pure functions


def act(actor, latent, key, setup, greedy=False):
    """The actor's action [N, A] in latent states [N]: sampled, or with `greedy` the mode."""
    return setup.act.sample(actor(features(latent, setup.cfg.actor.inputs, setup.dtype)), key, greedy)


def n_imagination_starts(n, tokens):
    """How many of a batch's `tokens` = B*T posterior states imagination starts from: `n`
    (config `imag_starts`) when 0 < n < B*T, else all of them."""
    return n if 0 < n < tokens else tokens


def imagination_starts(post, is_terminal, n, key):
    """The posterior latents [B, T] imagination starts from, as [B*T] (all of them, or `n` of them at
    random when 0 < n < B*T) with their continue flags. Returns (start [N], start_cont [N])."""
    start = jax.tree.map(lambda x: sg(x.reshape((-1,) + x.shape[2:])), post)
    start_cont = 1.0 - is_terminal.reshape(-1).astype(jnp.float32)
    tokens = start_cont.shape[0]
    if n_imagination_starts(n, tokens) < tokens:
        idx = jax.random.permutation(key, tokens)[:n]
        start, start_cont = jax.tree.map(lambda x: x[idx], start), start_cont[idx]
    return start, start_cont


def imagine(wm, actor, start, start_cont, key, setup, save=False):
    """Rolls the world model's prior K = `imag_horizon` steps from `start` [N] with the actor.

    Returns (traj, saved). traj: actions [K, N, A], outs (the actor's outputs) [K, N, O], reward
    [K, N] (r_1..r_K), cont and weight (discounted continuation) [K+1, N] with cont_0 = `start_cont`,
    feat: {tuple(inputs): features [K, N, F] of states 0..K-1} for the critic's and the actor's
    inputs, last: the critic's features [N, F] of state K. saved: with `save`, the actor's pre-norm
    hidden activations of each call (`actor_grad.call_saving`) stacked over K, else None.

    Each step keeps only the features its readers take (the critic and actor those of state t, the
    reward and continue heads those of state t+1), so no [K+1]-stacked latents or features are built
    and sliced: that copying was a third of the update's temporaries (BENCHMARKS.md, session 19).
    """
    cfg, dtype = setup.cfg, setup.dtype
    now = list(dict.fromkeys([tuple(cfg.critic.inputs), tuple(cfg.actor.inputs)]))

    def step(latent, key):
        k1, k2 = jax.random.split(key)
        feat = {inputs: features(latent, inputs, dtype) for inputs in now}
        x = sg(feat[tuple(cfg.actor.inputs)])
        out, saved = actor_grad.call_saving(actor, x) if save else (actor(x), None)
        action = setup.act.sample(out, k1)
        latent = wm.rssm.img_step(latent, action, k2)
        reward = dists.twohot_mean(
            wm.reward(features(latent, cfg.reward_head.inputs, dtype)), setup.reward_bins
        )
        cont = (wm.cont(features(latent, cfg.cont_head.inputs, dtype))[..., 0] > 0).astype(jnp.float32)
        return latent, (feat, reward, cont, action, out, saved)

    keys = jax.random.split(key, cfg.imag_horizon)
    last, (feat, reward, cont, actions, outs, saved) = jax.lax.scan(step, start, keys)
    cont = jnp.concatenate([start_cont[None], cont], 0)  # [K+1, N]
    weight = sg(jnp.cumprod(setup.gamma * cont, 0) / setup.gamma)
    last = features(last, cfg.critic.inputs, dtype)
    traj = dict(actions=actions, outs=outs, reward=reward, cont=cont, weight=weight, feat=feat, last=last)
    return traj, saved


def lambda_return(reward, cont, value, gamma, lam):
    """TD(lambda) returns R_t, t = 0..K-1, bootstrapped with R_K = v_K.

    reward, cont [K, N]: r_{t+1}, c_{t+1} received on reaching state t+1; value [K+1, N]: v_0..v_K.
    R_t = r_{t+1} + gamma c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1}).
    """

    def step(next_ret, inp):
        r, c, v = inp
        ret = r + gamma * c * ((1 - lam) * v + lam * next_ret)
        return ret, ret

    _, ret = jax.lax.scan(step, value[-1], (reward, cont, value[1:]), reverse=True)
    return ret


def returns(traj, value, setup):
    """lambda-returns [K, N] of an imagined trajectory with values [K+1, N]."""
    return lambda_return(traj["reward"], traj["cont"][1:], value, setup.gamma, setup.cfg.return_lambda)


def values(critic, traj, setup):
    """The critic's mean values [K+1, N] of the imagined states."""
    return _values(critic(traj["feat"][tuple(setup.cfg.critic.inputs)]), critic, traj, setup)


def _values(logits, critic, traj, setup):
    """Mean values [K+1, N]: of states 0..K-1 from the critic's `logits` [K, N, bins] there, of
    state K from its features `traj["last"]`."""
    last = dists.twohot_mean(critic(traj["last"]), setup.value_bins)
    return jnp.concatenate([dists.twohot_mean(logits, setup.value_bins), last[None]], 0)


def actor_loss(outs, traj, value, ret, retnorm, setup):
    """Actor loss from its outputs `outs` [K, N, O] in the imagined states 0..K-1: REINFORCE for
    discrete actions, the returns backpropagated through the dynamics for continuous ones, plus
    the entropy bonus `actent` (paper appendix). Advantages are scaled by the EMA `retnorm` [2] of
    the returns' percentiles. Returns (loss, (new retnorm, metrics))."""
    cfg = setup.cfg
    lo_hi = jnp.percentile(ret, jnp.array([cfg.retnorm.perclo, cfg.retnorm.perchi]))  # one sort
    retnorm = cfg.retnorm.decay * retnorm + (1 - cfg.retnorm.decay) * sg(lo_hi)
    scale = jnp.maximum(cfg.retnorm.max, retnorm[1] - retnorm[0])
    adv = (ret - value[:-1]) / scale  # [K, N]
    logp, ent = setup.act.logprob_entropy(outs, sg(traj["actions"]))
    objective = logp * sg(adv) if setup.act.discrete else adv
    weight = traj["weight"]
    loss = -(weight[:-1] * (objective + cfg.actent * ent)).mean() * cfg.loss_scales.actor
    metrics = dict(
        actor_loss=loss,
        policy_entropy=ent.mean(),
        imag_reward=traj["reward"].mean(),
        return_raw=ret.mean(),
        return_scale=scale,
        adv_mag=jnp.abs(adv).mean(),
        imag_cont=weight[-1].mean(),
    )
    return loss, (retnorm, metrics)


def critic_loss(critic, slow_critic, traj, setup):
    """Critic loss on an imagined trajectory (no gradient into it): two-hot NLL of the lambda-returns
    of its own values, plus `slowreg` times that of the slow critic's values, weighted by the
    discounted continuation. Returns (loss, (values [K+1, N], returns [K, N]))."""
    cfg, bins = setup.cfg, setup.value_bins
    feat = traj["feat"][tuple(cfg.critic.inputs)]  # states 0..K-1
    logits = critic(feat)  # [K, N, bins]
    value = sg(_values(logits, critic, traj, setup))
    ret = sg(returns(traj, value, setup))
    slow_mean = sg(dists.twohot_mean(slow_critic(feat), bins))
    loss = -dists.twohot_logprob(logits, ret, bins) - cfg.loss_scales.slowreg * dists.twohot_logprob(
        logits, slow_mean, bins
    )
    return (traj["weight"][:-1] * loss).mean() * cfg.loss_scales.critic, (value, ret)


def slow_critic_update(slow, critic, first, fraction):
    """The slow critic: a copy of the critic on the first update (`first`), then an EMA with `fraction`."""
    mix = jnp.where(first, 1.0, fraction)
    arrays = jax.tree.map(
        lambda s, c: (1 - mix) * s + mix * c, eqx.filter(slow, eqx.is_array), eqx.filter(critic, eqx.is_array)
    )
    return eqx.combine(arrays, eqx.filter(critic, eqx.is_array, inverse=True))


class AgentState(NamedTuple):
    wm: WorldModel
    actor: MLP
    critic: MLP
    slow_critic: MLP
    wm_opt: OptState
    actor_opt: OptState
    critic_opt: OptState
    retnorm: jax.Array  # [2] EMAs of the 5th and 95th return percentiles
    updates: jax.Array  # [] number of updates done


class Agent:
    """Holds the static structure (config, optimisers, placement, jitted functions); state is a pytree.

    Devices (`devices.Placement`): the update is data-parallel over `jax.train_devices`; the policy
    runs on `jax.policy_devices[0]`, on the live parameters or on a copy refreshed every
    `jax.sync_every` updates.
    """

    def __init__(self, cfg, obs_space, act_space, key):
        self.cfg = cfg
        trim_after_compiles()
        self.place = Placement(cfg)
        self.train_devices, self.policy_device = self.place.train_devices, self.place.policy_device
        self.acting = PolicyParams(self.place, cfg.jax.sync_every)
        self.discrete, self.act_dim = act_space.discrete, act_space.n
        self.dtype = DTYPES[resolve_precision(cfg.jax.precision)]
        self.fp16 = self.dtype == jnp.float16
        a, c = cfg.actor, cfg.critic

        def networks(key):
            k_wm, k_actor, k_critic = jax.random.split(key, 3)
            wm = WorldModel(cfg, obs_space, self.act_dim, scan_parallel(cfg.ssm.parallel), key=k_wm)
            fs = lambda inputs, name: feature_size(inputs, wm.rssm.feature_sizes(), name)
            out = self.act_dim * (1 if self.discrete else 2)
            actor = MLP(fs(a.inputs, "actor.inputs"), a.layers, a.units, out, key=k_actor)
            critic = MLP(
                fs(c.inputs, "critic.inputs"), c.layers, c.units, c.bins, key=k_critic, outscale=c.outscale
            )
            return wm, actor, critic

        # the parameters and the optimiser states come from two XLA programs: op by op, each of the
        # hundreds of initialiser shapes would be compiled and kept as a program of its own
        init_networks = eqx.filter_jit(networks)
        wm, actor, critic = init_networks(key)
        self.actor_in = feature_size(a.inputs, wm.rssm.feature_sizes(), "actor.inputs")
        # two-hot bins: `bins` over [-bin_max, bin_max] in symlog space
        self.value_bins = dists.twohot_bins(c.bins, -c.bin_max, c.bin_max)
        r = cfg.reward_head
        self.reward_bins = dists.twohot_bins(r.bins, -r.bin_max, r.bin_max)
        self.setup = Setup(
            cfg,
            self.dtype,
            self.reward_bins,
            self.value_bins,
            dists.ActionDist(self.discrete, self.act_dim, a.unimix, a.minstd, a.maxstd),
        )
        self.labels = param_labels(eqx.filter(wm, eqx.is_array))
        self.wm_opt, self.actor_opt, self.critic_opt = optimizers(cfg, self.labels, self.fp16)
        initial_state = lambda wm, actor, critic: AgentState(
            wm=wm,
            actor=actor,
            critic=critic,
            slow_critic=jax.tree.map(jnp.copy, critic),
            wm_opt=self.wm_opt.init(eqx.filter(wm, eqx.is_array)),
            actor_opt=self.actor_opt.init(eqx.filter(actor, eqx.is_array)),
            critic_opt=self.critic_opt.init(eqx.filter(critic, eqx.is_array)),
            retnorm=jnp.zeros(2, jnp.float32),
            updates=jnp.zeros((), jnp.int32),
        )
        init_state = eqx.filter_jit(initial_state)
        self.state = init_state(wm, actor, critic)  # the setter places it
        # both ran once: their compiled code (~50 MB at popgym_main) would otherwise sit under the
        # update's compile and raise the process's peak memory (BENCHMARKS.md)
        release_programs(init_networks, init_state)
        self._train = eqx.filter_jit(self._train_impl, donate="all-except-first")
        self._policy = eqx.filter_jit(self._policy_impl)
        self._openloop = eqx.filter_jit(
            lambda wm, batch, key, context: openloop(wm, batch, key, context, self.setup)
        )

    # ------------------------------------------------------------ acting

    @property
    def state(self) -> AgentState:
        return self._state

    @state.setter
    def state(self, state):
        """Places `state` on the train devices and refreshes the policy's copy."""
        self._state = self.place.state(state)
        self.acting.set((self._state.wm, self._state.actor))

    def _acting_params(self):
        return self.acting.get((self._state.wm, self._state.actor))

    def init_policy_state(self, n):
        wm, _ = self._acting_params()
        latent = wm.rssm.initial((n,), self.dtype)
        return jax.device_put((latent, jnp.zeros((n, self.act_dim), jnp.float32)), self.policy_device)

    def policy(self, obs, state, key, mode="train"):
        """obs: dict of [N, ...] numpy arrays -> (action [N, A] numpy, new state on the policy device)."""
        if state is None:
            state = self.init_policy_state(len(obs["is_first"]))
        obs = {k: v for k, v in obs.items() if not k.startswith("log_")}
        wm, actor = self._acting_params()
        action, state = self._policy(wm, actor, obs, state, key, mode == "eval")
        return np.asarray(action), state

    def _policy_impl(self, wm, actor, obs, state, key, greedy):
        latent, prev_action = state
        k1, k2 = jax.random.split(key)
        embed = wm.encoder(obs, self.dtype)
        latent = wm.rssm.obs_step(latent, prev_action, embed, jnp.asarray(obs["is_first"]), k1)
        action = act(actor, latent, k2, self.setup, greedy)
        return action, (latent, action)

    # ------------------------------------------------------------ open-loop prediction

    def openloop(self, batch, key, context):
        """World-model predictions of a replay batch [B, T] (`world_model.openloop`): steps < `context`
        reconstructed, later ones imagined from the recorded actions. Returns {key: (truth, model)}
        of the decoded keys and the reward as numpy [B, T, ...]."""
        T = batch["is_first"].shape[1]
        if not 0 < context < T:
            raise ValueError(f"open-loop context must be in [1, {T - 1}] for sequences of {T}, got {context}")
        batch = {k: v for k, v in batch.items() if not k.startswith("log_")}
        # with several processes the live state spans all of them: predict with this process's copy
        wm = self._acting_params()[0] if self.place.processes > 1 else self.state.wm
        pred = jax.device_get(self._openloop(wm, batch, key, context))
        return {k: (np.asarray(batch[k]), np.asarray(v)) for k, v in pred.items()}

    # ------------------------------------------------------------ training

    def train(self, batch, key):
        """One update on a replay batch (dict of [B, T, ...] numpy arrays). Returns metrics (device)."""
        self._state, metrics = self._train(self.place.replicate(key), self._state, self._placed(batch))
        self.acting.updated((self._state.wm, self._state.actor))
        return metrics

    def lower_update(self, batch):
        """The update traced and lowered for replay batches shaped like `batch` ({key: [B, T, ...]}
        numpy), not compiled: `.compile()` it (e.g. in a thread while the replay fills) and a later
        `train` on such batches finds the program compiled."""
        key, batch = self.place.replicate(jax.random.PRNGKey(0)), self._placed(batch)
        with warnings.catch_warnings():  # the batch is donated, and no output has its shapes to reuse it
            warnings.filterwarnings("ignore", "Some donated buffers were not usable")
            return self._train.lower(key, self._state, batch)

    def _placed(self, batch):
        """A replay batch on the update's devices, without its `log_` entries."""
        return self.place.batch({k: v for k, v in batch.items() if not k.startswith("log_")})

    def _train_impl(self, key, state, batch):  # key first: state and batch are donated
        k_wm, k_imag, k_start = jax.random.split(key, 3)
        wm_params, wm_static = eqx.partition(state.wm, eqx.is_array)
        loss_fn = lambda p: world_model_loss(eqx.combine(p, wm_static), batch, k_wm, self.setup)
        step = self.wm_opt.step(loss_fn, wm_params, state.wm_opt)
        post, metrics = step.aux
        metrics = dict(
            metrics,
            model_opt_skipped=1.0 - step.finite,
            model_opt_loss_scale=step.state.scale,
            **self._grad_norms(step.grads),
        )
        state = state._replace(wm=eqx.combine(step.params, wm_static), wm_opt=step.state)
        start, start_cont = imagination_starts(post, batch["is_terminal"], self.cfg.imag_starts, k_start)
        state, ac_metrics = self._actor_critic(state, start, start_cont, k_imag)
        return self.place.whole((state._replace(updates=state.updates + 1), dict(metrics, **ac_metrics)))

    def _grad_norms(self, grads):
        is_ssm = jax.tree.map(lambda label: label == "ssm", self.labels)
        ssm = [g for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(is_ssm)) if m]
        return dict(model_opt_grad_norm=global_norm(grads), model_opt_ssm_grad_norm=global_norm(ssm))

    def _actor_critic(self, state, start, start_cont, key):
        """Imagines from `start` [N], then one critic and one actor step (both from their old params).

        Discrete actions (REINFORCE): the rollout needs no gradient, so it runs once outside both
        losses, and the actor's gradient may reuse its activations (`actor_grad`). Continuous
        actions: the actor's loss backpropagates the returns through the imagined dynamics, so it
        contains the rollout, and the critic learns on that rollout.
        """
        cfg, setup, wm = self.cfg, self.setup, jax.tree.map(sg, state.wm)
        actor_params, actor_static = eqx.partition(state.actor, eqx.is_array)
        critic_params, critic_static = eqx.partition(state.critic, eqx.is_array)
        critic_step = lambda traj: self.critic_opt.step(
            lambda p: critic_loss(eqx.combine(p, critic_static), state.slow_critic, traj, setup),
            critic_params,
            state.critic_opt,
        )
        actor_step = lambda fn: self.actor_opt.step(fn, actor_params, state.actor_opt)
        if self.discrete:
            reuse = actor_grad.fits(cfg, start_cont.shape[0], self.actor_in, self.dtype)
            traj, saved = imagine(
                wm, jax.tree.map(sg, state.actor), start, start_cont, key, setup, save=reuse
            )
            c = critic_step(traj)
            value, ret = c.aux
            outs_of = actor_grad.actor_outputs(actor_static, traj, saved, cfg.actor.inputs)
            a = actor_step(lambda p: actor_loss(outs_of(p), traj, value, ret, state.retnorm, setup))
        else:

            def loss_fn(params):  # the returns differentiated through the imagined dynamics
                traj, _ = imagine(wm, eqx.combine(params, actor_static), start, start_cont, key, setup)
                value = values(state.critic, traj, setup)
                loss, aux = actor_loss(
                    traj["outs"], traj, value, returns(traj, value, setup), state.retnorm, setup
                )
                return loss, (*aux, jax.tree.map(sg, traj))

            a = actor_step(loss_fn)
            c = critic_step(a.aux[2])
            value = c.aux[0]
        retnorm, metrics = a.aux[:2]
        critic = eqx.combine(c.params, critic_static)
        metrics = dict(
            metrics,
            critic_value=value.mean(),
            critic_loss=c.loss,
            actor_opt_grad_norm=global_norm(a.grads),
            actor_opt_skipped=1.0 - a.finite,
            critic_opt_grad_norm=global_norm(c.grads),
            critic_opt_skipped=1.0 - c.finite,
        )
        state = state._replace(
            actor=eqx.combine(a.params, actor_static),
            actor_opt=a.state,
            critic=critic,
            critic_opt=c.state,
            slow_critic=slow_critic_update(
                state.slow_critic, critic, state.updates == 0, cfg.slow_critic_fraction
            ),
            retnorm=retnorm,
        )
        return state, metrics
