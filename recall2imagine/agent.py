"""R2I agent: world model + actor-critic in imagination, as pure functions over a state pytree.

Data flow of one update (paper, section 3 and appendix):
  replay batch [B, T] -> world-model loss (observe, heads, KL) -> model_opt step
  -> posterior states [B*T] -> imagine `imag_horizon` steps with the actor
  -> lambda-returns (fast critic) -> actor step -> critic step -> slow critic EMA.
"""
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from recall2imagine.devices import DTYPES, resolve_devices, resolve_precision
from recall2imagine.nets import dists
from recall2imagine.nets.gru import GRURSSM
from recall2imagine.nets.heads import Decoder, Encoder
from recall2imagine.nets.layers import MLP, feature_size, features
from recall2imagine.nets.rssm import RSSM
from recall2imagine.optim import adam, global_norm, kernel_mask, optimize, param_labels

sg = jax.lax.stop_gradient


class WorldModel(eqx.Module):
    encoder: Encoder
    rssm: RSSM | GRURSSM
    decoder: Decoder
    reward: MLP
    cont: MLP

    def __init__(self, cfg, obs_space, act_dim, parallel, *, key):
        ks = jax.random.split(key, 5)
        self.encoder = Encoder(cfg, obs_space, key=ks[0])
        cores = {"ssm": RSSM, "gru": GRURSSM}
        if cfg.rssm.core not in cores:
            raise ValueError(f"rssm.core must be ssm or gru, got {cfg.rssm.core!r}")
        self.rssm = cores[cfg.rssm.core](cfg, self.encoder.out_dim, act_dim, parallel, key=ks[1])
        fs = lambda inputs, name: feature_size(inputs, self.rssm.feature_sizes(), name)
        self.decoder = Decoder(cfg, obs_space, fs(cfg.decoder.inputs, "decoder.inputs"), key=ks[2])
        r, c = cfg.reward_head, cfg.cont_head
        self.reward = MLP(fs(r.inputs, "reward_head.inputs"), r.layers, r.units, r.bins, key=ks[3],
                          outscale=r.outscale)
        self.cont = MLP(fs(c.inputs, "cont_head.inputs"), c.layers, c.units, 1, key=ks[4], outscale=c.outscale)


def replayed_outputs(static):
    """f(params, saved, outs) -> outs: the outputs [K, N, O] an MLP (`static` its non-array part)
    computed earlier with `call_saving` at these same `params`, with what that kept (`saved`,
    arrays [K, N, ...]), as a function of the parameters. Its gradient runs the MLP's backward pass
    from `saved`, so a loss on those outputs is differentiated without a second forward pass."""
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # [K, N, ...] -> [K N, ...]

    @jax.custom_vjp
    def f(params, saved, outs):
        return outs

    def fwd(params, saved, outs):
        return outs, (params, saved)

    def bwd(res, d_outs):
        params, saved = res
        grads = eqx.combine(params, static).grads_from_saved([flat(x) for x in saved], flat(d_outs))
        return eqx.filter(grads, eqx.is_array), jax.tree.map(jnp.zeros_like, saved), jnp.zeros_like(d_outs)

    f.defvjp(fwd, bwd)
    return f


def _head_bins(name, head):
    """The two-hot bins of a head config (`bins` over [-bin_max, bin_max] in symlog space), validated."""
    if head.bins < 2 or not head.bin_max > 0:
        raise ValueError(f"{name}.bins must be >= 2 and {name}.bin_max > 0, got {head.bins} and {head.bin_max}")
    return dists.twohot_bins(head.bins, -head.bin_max, head.bin_max)


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


class AgentState(NamedTuple):
    wm: WorldModel
    actor: MLP
    critic: MLP
    slow_critic: MLP
    wm_opt: optax.OptState
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    retnorm: jax.Array  # [2] EMAs of the 5th and 95th return percentiles
    updates: jax.Array  # [] number of updates done
    loss_scale: jax.Array  # [3] dynamic loss scales of model, actor, critic (float16 only, else 1)
    good_steps: jax.Array  # [3] consecutive finite steps per optimiser


_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))  # fresh buffers on the input's device


class Agent:
    """Holds the static structure (config, optimisers, jitted functions); state is a pytree.

    Devices: training is data-parallel over `jax.train_devices` (a 1-D mesh; the batch [B, T, ...]
    is split along B, the state is replicated and GSPMD all-reduces the gradients). The policy runs
    on `jax.policy_devices[0]`: with one train device that is also the policy device it uses the
    live parameters, else its own copy of the world model and actor, refreshed every
    `jax.sync_every` updates.
    """

    def __init__(self, cfg, obs_space, act_space, key):
        self.cfg = cfg
        self.train_devices, self.policy_device = resolve_devices(cfg)
        if len(self.train_devices) == 1:
            self._mesh = None
            self._state_sharding = self._batch_sharding = jax.sharding.SingleDeviceSharding(
                self.train_devices[0])
        else:
            self._mesh = jax.sharding.Mesh(np.array(self.train_devices), ("batch",))
            self._state_sharding = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())
            self._batch_sharding = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec("batch"))
        # one train device that is also the policy device: the policy reads the live parameters
        self._shared = self.train_devices == [self.policy_device]
        self._policy_params = None  # (wm, actor) on the policy device, when not shared
        self._since_sync = 0
        self.discrete = act_space.discrete
        self.act_dim = act_space.n
        self.dtype = DTYPES[resolve_precision(cfg.jax.precision)]
        self.fp16 = self.dtype == jnp.float16
        parallel = {"auto": jax.default_backend() != "cpu", "True": True, "False": False}
        if str(cfg.ssm.parallel) not in parallel:
            raise ValueError(f"ssm.parallel must be auto, True or False, got {cfg.ssm.parallel!r}")
        parallel = parallel[str(cfg.ssm.parallel)]
        k_wm, k_actor, k_critic = jax.random.split(key, 3)
        wm = WorldModel(cfg, obs_space, self.act_dim, parallel, key=k_wm)
        fs = lambda inputs, name: feature_size(inputs, wm.rssm.feature_sizes(), name)
        a, c = cfg.actor, cfg.critic
        actor_out = self.act_dim if self.discrete else 2 * self.act_dim
        self.actor_in = fs(a.inputs, "actor.inputs")
        actor = MLP(self.actor_in, a.layers, a.units, actor_out, key=k_actor)
        critic = MLP(fs(c.inputs, "critic.inputs"), c.layers, c.units, c.bins, key=k_critic, outscale=c.outscale)
        self.value_bins = _head_bins("critic", c)
        self.reward_bins = _head_bins("reward_head", cfg.reward_head)
        wm_params = eqx.filter(wm, eqx.is_array)
        m, ao, co = cfg.model_opt, cfg.actor_opt, cfg.critic_opt
        # the S5 leaves form their own group: own lr, own global-norm clip, no weight decay
        self.labels = param_labels(wm_params)
        self.wm_opt = optax.multi_transform(
            {"rest": adam(m.lr, m.eps, m.clip, m.wd, kernel_mask), "ssm": adam(m.ssm_lr, m.eps, m.clip)},
            self.labels)
        self.actor_opt = adam(ao.lr, ao.eps, ao.clip, ao.wd, kernel_mask)
        self.critic_opt = adam(co.lr, co.eps, co.clip, co.wd, kernel_mask)
        self.state = AgentState(  # the `state` setter places it on the train devices
            wm=wm, actor=actor, critic=critic, slow_critic=jax.tree.map(jnp.copy, critic),
            wm_opt=self.wm_opt.init(wm_params),
            actor_opt=self.actor_opt.init(eqx.filter(actor, eqx.is_array)),
            critic_opt=self.critic_opt.init(eqx.filter(critic, eqx.is_array)),
            retnorm=jnp.zeros(2, jnp.float32), updates=jnp.zeros((), jnp.int32),
            loss_scale=jnp.full(3, 1e4 if self.dtype == jnp.float16 else 1.0, jnp.float32),
            good_steps=jnp.zeros(3, jnp.int32))
        self._train = eqx.filter_jit(self._train_impl, donate="all-except-first")
        self._policy = eqx.filter_jit(self._policy_impl)

    # ------------------------------------------------------------ acting

    @property
    def state(self) -> AgentState:
        return self._state

    @state.setter
    def state(self, state):
        """Places `state` on the train devices (replicated; a restored checkpoint arrives on the
        default device) and refreshes the policy's copy. Saving needs nothing: every leaf is whole
        on each train device, so `np.asarray` reads it."""
        arrays, static = eqx.partition(state, eqx.is_array)
        self._state = eqx.combine(jax.device_put(arrays, self._state_sharding), static)
        self._sync_policy()

    def _sync_policy(self):
        """Copies the world model and actor to the policy device (a no-op when shared)."""
        self._since_sync = 0
        if self._shared:
            return
        arrays, static = eqx.partition((self._state.wm, self._state.actor), eqx.is_array)
        arrays = jax.device_put(arrays, self.policy_device)
        if self.policy_device in self.train_devices:
            # device_put hands back the train state's own buffers there (even with may_alias=False,
            # jax 0.10), which the next update donates: copy them
            arrays = _copy_tree(arrays)
        self._policy_params = eqx.combine(arrays, static)

    def _acting_params(self):
        return (self._state.wm, self._state.actor) if self._shared else self._policy_params

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
        action = self._act(actor, latent, k2, greedy)
        return action, (latent, action)

    def _actor_dist(self, out):  # actor network output -> unimix logits, or (mean, std)
        if self.discrete:
            return dists.unimix_logits(out, self.cfg.actor.unimix)
        mean, std = jnp.split(out, 2, -1)
        lo, hi = self.cfg.actor.minstd, self.cfg.actor.maxstd
        return jnp.tanh(mean), (hi - lo) * jax.nn.sigmoid(std + 2.0) + lo

    def _sample(self, out, key, greedy=False):  # actor output -> action
        d = self._actor_dist(out)
        if self.discrete:
            idx = jnp.argmax(d, -1) if greedy else dists.categorical_sample(key, d)
            return jax.nn.one_hot(idx, self.act_dim, dtype=jnp.float32)
        mean, std = d
        return mean if greedy else mean + std * jax.random.normal(key, mean.shape)

    def _act(self, actor, latent, key, greedy=False):
        return self._sample(actor(features(latent, self.cfg.actor.inputs, self.dtype)), key, greedy)

    def _logprob_entropy(self, out, action):  # out: actor outputs [..., O]
        d = self._actor_dist(out)
        if self.discrete:
            return dists.onehot_logprob(d, action), dists.categorical_entropy(d)
        mean, std = d
        return dists.normal_logprob(mean, std, action), dists.normal_entropy(std)

    # ------------------------------------------------------------ open-loop prediction

    def openloop(self, batch, key, context):
        """World-model predictions of a replay batch [B, T]: steps < `context` are reconstructions
        from the posterior; later steps are imagined open loop from the last context state with the
        recorded actions and never see an observation. Returns {key: (truth, model)} of decoded
        keys as numpy [B, T, ...] and {'reward': (truth, model)}."""
        T = batch["is_first"].shape[1]
        if not 0 < context < T:
            raise ValueError(f"open-loop context must be in [1, {T - 1}] for sequences of {T}, got {context}")
        batch = {k: v for k, v in batch.items() if not k.startswith("log_")}
        pred = jax.device_get(self._openloop(self.state.wm, batch, key, context))
        out = {k: (np.asarray(batch[k]), np.asarray(v)) for k, v in pred.items()}
        return out

    @eqx.filter_jit
    def _openloop(self, wm, batch, key, context):
        cfg, dtype = self.cfg, self.dtype
        k1, k2 = jax.random.split(key)
        obs = jax.tree.map(lambda x: jnp.asarray(x)[:, :context], batch)
        action = jnp.asarray(batch["action"], jnp.float32)  # [B, T, A], chosen after obs t
        B = action.shape[0]
        prev_action = jnp.concatenate([jnp.zeros_like(action[:, :1]), action[:, :context - 1]], 1)
        post, _ = wm.rssm.observe(wm.encoder(obs, dtype), prev_action, jnp.asarray(obs["is_first"]),
                                  wm.rssm.initial((B,), dtype), k1)
        last = jax.tree.map(lambda x: x[:, -1], post)

        def step(latent, inp):
            act, k = inp
            latent = wm.rssm.img_step(latent, act, k)
            return latent, latent

        acts = jnp.swapaxes(action[:, context - 1:-1], 0, 1)  # [T - context, B, A]
        keys = jax.random.split(k2, acts.shape[0])
        _, imag = jax.lax.scan(step, last, (acts, keys))
        imag = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), imag)  # [B, T - context, ...]
        seq = {k: jnp.concatenate([post[k], imag[k].astype(post[k].dtype)], 1) for k in ("stoch", "deter", "hidden")
               if k in post}
        pred = wm.decoder.predict(features(seq, cfg.decoder.inputs, dtype))
        pred["reward"] = dists.twohot_mean(wm.reward(features(seq, cfg.reward_head.inputs, dtype)), self.reward_bins)
        return pred

    # ------------------------------------------------------------ training

    def train(self, batch, key):
        """One update on a replay batch (dict of [B, T, ...] numpy arrays). Returns metrics (device)."""
        batch = {k: v for k, v in batch.items() if not k.startswith("log_")}
        B, n = len(batch["is_first"]), len(self.train_devices)
        if B % n:
            raise ValueError(f"batch size {B} is not divisible by the {n} train devices; "
                             f"sample a multiple of {n} (--batch_size)")
        batch = jax.device_put(batch, self._batch_sharding)  # split along B over the train devices
        self._state, metrics = self._train(key, self._state, batch)
        self._since_sync += 1
        if not self._shared and self._since_sync >= self.cfg.jax.sync_every:
            self._sync_policy()
        return metrics

    def _train_impl(self, key, state, batch):  # key first: state and batch are donated
        k_wm, k_imag, k_start = jax.random.split(key, 3)
        wm_params, wm_static = eqx.partition(state.wm, eqx.is_array)

        def wm_loss_fn(params):
            return self._wm_loss(eqx.combine(params, wm_static), batch, k_wm)

        scale, good = state.loss_scale, state.good_steps
        wm_params, wm_opt, s0, g0, _, (post, wm_metrics), grads, finite = optimize(
            self.wm_opt, wm_loss_fn, wm_params, state.wm_opt, scale[0], good[0], self.fp16)
        wm = eqx.combine(wm_params, wm_static)
        metrics = dict(wm_metrics, model_opt_skipped=1.0 - finite, model_opt_loss_scale=s0)
        metrics.update(self._grad_norms("model_opt", grads))
        state = state._replace(loss_scale=scale.at[0].set(s0), good_steps=good.at[0].set(g0))

        start = jax.tree.map(lambda x: sg(x.reshape((-1,) + x.shape[2:])), post)  # [B*T]
        start_cont = 1.0 - batch["is_terminal"].reshape(-1).astype(jnp.float32)
        n = self.cfg.imag_starts
        if 0 < n < start_cont.shape[0]:  # imagine from a random subset of the B*T posterior states
            idx = jax.random.permutation(k_start, start_cont.shape[0])[:n]
            start, start_cont = jax.tree.map(lambda x: x[idx], start), start_cont[idx]
        state = state._replace(wm=wm, wm_opt=wm_opt)
        state, ac_metrics = self._actor_critic(state, start, start_cont, k_imag)
        metrics.update(ac_metrics)
        out = state._replace(updates=state.updates + 1), metrics
        if self._mesh is not None:  # keep the new state and the metrics whole on every train device
            arrays, static = eqx.partition(out, eqx.is_array)
            out = eqx.combine(jax.lax.with_sharding_constraint(arrays, self._state_sharding), static)
        return out

    def _grad_norms(self, name, grads):
        out = {f"{name}_grad_norm": global_norm(grads)}
        if name == "model_opt":
            is_ssm = jax.tree.map(lambda l: l == "ssm", self.labels)
            ssm = [g for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(is_ssm)) if m]
            out["model_opt_ssm_grad_norm"] = global_norm(ssm)
        return out

    def _wm_loss(self, wm, batch, key, start=None):
        """World-model loss of windows `batch` [B, T]. `start`: None (each window starts from the
        initial latent, as in the paper) or (latent [B], action [B, A]): the state before the window
        and the action taken there, e.g. a latent carried over from the steps before the window."""
        cfg, dtype = self.cfg, self.dtype
        is_first = jnp.asarray(batch["is_first"])
        action = jnp.asarray(batch["action"], jnp.float32)  # [B, T, A], chosen after obs t
        B = is_first.shape[0]
        if start is None:
            start = wm.rssm.initial((B,), dtype), jnp.zeros_like(action[:, 0])
        start_latent, start_action = start
        prev_action = jnp.concatenate([start_action[:, None], action[:, :-1]], 1)
        embed = wm.encoder(batch, dtype)  # [B, T, E]
        post, prior = wm.rssm.observe(embed, prev_action, is_first, start_latent, key)
        feat = lambda inputs: features(post, inputs, dtype)
        losses = {}
        losses.update(wm.decoder.loss(feat(cfg.decoder.inputs), batch))  # vector and/or image
        reward_logits = wm.reward(feat(cfg.reward_head.inputs))
        losses["reward"] = -dists.twohot_logprob(reward_logits, jnp.asarray(batch["reward"], jnp.float32),
                                                 self.reward_bins)
        cont_logit = wm.cont(feat(cfg.cont_head.inputs))[..., 0]
        cont = 1.0 - jnp.asarray(batch["is_terminal"], jnp.float32)
        losses["cont"] = -dists.bernoulli_logprob(cont_logit, cont)
        kl_dyn = dists.categorical_kl(sg(post["logit"]), prior["logit"]).sum(-1)  # [B, T]
        kl_rep = dists.categorical_kl(post["logit"], sg(prior["logit"])).sum(-1)
        losses["dyn"] = jnp.maximum(kl_dyn, cfg.free_bits)
        losses["rep"] = jnp.maximum(kl_rep, cfg.free_bits)
        s = cfg.loss_scales
        scales = dict(vector=s.vector, image=s.image, reward=s.reward, cont=s.cont, dyn=s.dyn, rep=s.rep)
        total = sum(scales[k] * v for k, v in losses.items()).mean()
        metrics = {f"{k}_loss": v.mean() for k, v in losses.items()}
        metrics.update(
            model_loss=total, kl_dyn=kl_dyn.mean(),
            prior_ent=dists.categorical_entropy(prior["logit"]).sum(-1).mean(),
            post_ent=dists.categorical_entropy(post["logit"]).sum(-1).mean(),
            reward_max_data=jnp.abs(batch["reward"]).max(),
            reward_max_pred=jnp.abs(dists.twohot_mean(reward_logits, self.reward_bins)).max(),
            cont_acc=((cont_logit > 0) == (cont > 0.5)).mean())
        return total, (post, metrics)

    def _imagine(self, wm, actor, start, key, save=False):
        """Roll the prior for imag_horizon steps: latents [K+1, N], actions [K, N, A], the actor's
        outputs [K, N, O] and, with `save` (else None), what `MLP.call_saving` keeps of each actor
        call (its input and hidden pre-norm activations), stacked over K: the REINFORCE gradient then
        needs no second actor forward pass over the K x N states (see `replayed_outputs`)."""

        def step(latent, key):
            k1, k2 = jax.random.split(key)
            feat = features(jax.tree.map(sg, latent), self.cfg.actor.inputs, self.dtype)
            out, saved = actor.call_saving(feat) if save else (actor(feat), None)
            action = self._sample(out, k1)
            return wm.rssm.img_step(latent, action, k2), (latent, action, out, saved)

        keys = jax.random.split(key, self.cfg.imag_horizon)
        last, (latents, actions, outs, saved) = jax.lax.scan(step, start, keys)
        latents = jax.tree.map(lambda xs, x: jnp.concatenate([xs, x[None]], 0), latents, last)
        return latents, actions, outs, saved

    def _actor_critic(self, state, start, start_cont, key):
        """Imagine from `start` [N], then update the critic and the actor (both from their old params).

        Discrete actions (REINFORCE): the rollout needs no gradient, so it runs once outside both
        losses; it keeps the actor's outputs and each actor layer's inputs, so the actor's gradient
        is the backward pass from those (no second forward pass), and the critic's logits of
        the K+1 imagined states give its value, the lambda-returns and its loss in one forward pass.
        Continuous actions: the actor's loss backpropagates the returns through the imagined
        dynamics, so it contains the rollout.
        """
        cfg = self.cfg
        gamma = 1.0 - 1.0 / cfg.horizon
        frozen_wm = jax.tree.map(sg, state.wm)
        actor_params, actor_static = eqx.partition(state.actor, eqx.is_array)
        critic_params, critic_static = eqx.partition(state.critic, eqx.is_array)
        value_of = lambda logits: dists.twohot_mean(logits, self.value_bins)
        returns = lambda traj, value: lambda_return(traj["reward"], traj["cont"][1:], value, gamma,
                                                    cfg.return_lambda)  # [K, N]

        def rollout(actor, save=False):
            """latents [K+1, N], actions [K, N, A], actor outputs [K, N, O], reward [K, N] (r_1..r_K),
            cont/weight [K+1, N], feat: features of the latents per input list ({tuple(inputs): [K+1, N, F]}),
            saved: the actor's saved activations (with `save`)."""
            latents, actions, outs, saved = self._imagine(frozen_wm, actor, start, key, save)
            feat = {}
            for inputs in (cfg.reward_head.inputs, cfg.cont_head.inputs, cfg.critic.inputs):
                if tuple(inputs) not in feat:
                    feat[tuple(inputs)] = features(latents, inputs, self.dtype)
            f_rew, f_cont = feat[tuple(cfg.reward_head.inputs)][1:], feat[tuple(cfg.cont_head.inputs)][1:]
            reward = dists.twohot_mean(frozen_wm.reward(f_rew), self.reward_bins)  # state 0's is never used
            cont = (frozen_wm.cont(f_cont)[..., 0] > 0).astype(jnp.float32)
            cont = jnp.concatenate([start_cont[None], cont], 0)  # [K+1, N]
            weight = sg(jnp.cumprod(gamma * cont, 0) / gamma)
            return dict(latents=latents, actions=actions, outs=outs, reward=reward, cont=cont, weight=weight,
                        feat=feat), saved

        def actor_objective(outs, traj, value, ret):
            """Actor loss from its outputs `outs` [K, N, O] for the imagined states 0..K-1."""
            lo_hi = jnp.percentile(ret, jnp.array([cfg.retnorm.perclo, cfg.retnorm.perchi]))  # one sort
            retnorm = cfg.retnorm.decay * state.retnorm + (1 - cfg.retnorm.decay) * sg(lo_hi)
            scale = jnp.maximum(cfg.retnorm.max, retnorm[1] - retnorm[0])
            adv = (ret - value[:-1]) / scale  # [K, N]
            logp, ent = self._logprob_entropy(outs, sg(traj["actions"]))
            objective = logp * sg(adv) if self.discrete else adv
            weight = traj["weight"]
            loss = -(weight[:-1] * (objective + cfg.actent * ent)).mean() * cfg.loss_scales.actor
            aux = dict(traj=jax.tree.map(sg, traj), retnorm=retnorm, metrics=dict(
                actor_loss=loss, policy_entropy=ent.mean(), imag_reward=traj["reward"].mean(),
                return_raw=ret.mean(), return_scale=scale, adv_mag=jnp.abs(adv).mean(),
                imag_cont=weight[-1].mean()))
            return loss, aux

        def actor_loss_fn(params):  # continuous: returns differentiated through the imagined dynamics
            traj, _ = rollout(eqx.combine(params, actor_static))
            value = value_of(state.critic(traj["feat"][tuple(cfg.critic.inputs)]))  # [K+1, N]
            return actor_objective(traj["outs"], traj, value, returns(traj, value))

        def critic_loss_fn(params, traj):  # traj: no gradient; targets from this critic's own values
            feat = traj["feat"][tuple(cfg.critic.inputs)]
            logits = eqx.combine(params, critic_static)(feat)  # [K+1, N, bins]
            value = sg(value_of(logits))
            ret = sg(returns(traj, value))
            slow_mean = sg(value_of(state.slow_critic(feat[:-1])))
            loss = -dists.twohot_logprob(logits[:-1], ret, self.value_bins)
            loss = loss - cfg.loss_scales.slowreg * dists.twohot_logprob(logits[:-1], slow_mean, self.value_bins)
            return (traj["weight"][:-1] * loss).mean() * cfg.loss_scales.critic, (value, ret)

        scale, good = state.loss_scale, state.good_steps
        update_critic = lambda traj: optimize(self.critic_opt, lambda p: critic_loss_fn(p, traj), critic_params,
                                              state.critic_opt, scale[2], good[2], self.fp16)
        if self.discrete:
            # keep the actor's input and pre-norm activations from the rollout if they fit the budget
            a = cfg.actor
            n_saved = cfg.imag_horizon * start_cont.shape[0] * (self.actor_in + a.layers * a.units)
            reuse = n_saved * jnp.dtype(self.dtype).itemsize <= cfg.actor_vjp_mb * 2**20
            traj, saved = rollout(jax.tree.map(sg, state.actor), save=reuse)
            critic_params_, critic_opt, s2, g2, c_loss, (value, ret), c_grads, c_finite = update_critic(traj)
            if reuse:
                outs_of = replayed_outputs(actor_static)
                fn = lambda p: actor_objective(outs_of(p, saved, traj["outs"]), traj, value, ret)
            else:  # a second actor forward over the imagined states
                feat = traj["feat"].get(tuple(cfg.actor.inputs))
                feat = features(traj["latents"], cfg.actor.inputs, self.dtype) if feat is None else feat
                fn = lambda p: actor_objective(eqx.combine(p, actor_static)(feat[:-1]), traj, value, ret)
            actor_params_, actor_opt, s1, g1, _, aux, a_grads, a_finite = optimize(
                self.actor_opt, fn, actor_params, state.actor_opt, scale[1], good[1], self.fp16)
        else:
            actor_params_, actor_opt, s1, g1, _, aux, a_grads, a_finite = optimize(
                self.actor_opt, actor_loss_fn, actor_params, state.actor_opt, scale[1], good[1], self.fp16)
            critic_params_, critic_opt, s2, g2, c_loss, (value, _), c_grads, c_finite = update_critic(aux["traj"])
        actor = eqx.combine(actor_params_, actor_static)
        critic = eqx.combine(critic_params_, critic_static)
        metrics = dict(aux["metrics"], critic_value=value.mean(), critic_loss=c_loss,
                       actor_opt_grad_norm=global_norm(a_grads), actor_opt_skipped=1.0 - a_finite,
                       critic_opt_grad_norm=global_norm(c_grads), critic_opt_skipped=1.0 - c_finite)
        # slow critic: full copy on the first update, then EMA with slow_critic_fraction
        mix = jnp.where(state.updates == 0, 1.0, cfg.slow_critic_fraction)
        slow = jax.tree.map(lambda s_, c_: (1 - mix) * s_ + mix * c_,
                            eqx.filter(state.slow_critic, eqx.is_array), eqx.filter(critic, eqx.is_array))
        slow = eqx.combine(slow, critic_static)
        state = state._replace(actor=actor, actor_opt=actor_opt, critic=critic, critic_opt=critic_opt,
                               slow_critic=slow, retnorm=aux["retnorm"],
                               loss_scale=scale.at[1].set(s1).at[2].set(s2),
                               good_steps=good.at[1].set(g1).at[2].set(g2))
        return state, metrics
