"""Optimisers of the agent: Adam with global-norm clipping and decoupled weight decay on kernels,
and one step that skips non-finite updates (with dynamic loss scaling in float16).

DreamerV3 / R2I (paper appendix): each of the world model, actor and critic has its own optimiser;
the S5 parameters of the sequence model can get their own learning rate (`model_opt.ssm_lr`).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

SSM_LEAVES = ("Lambda_re", "Lambda_im", "B", "C", "D", "log_step")


class OptState(NamedTuple):
    """What one optimised part (world model, actor or critic) carries from update to update."""

    inner: Any  # the optax state
    scale: jax.Array  # [] dynamic loss scale (float16; 1 otherwise)
    good: jax.Array  # [] finite steps in a row


class Step(NamedTuple):
    """What one `Optimizer.step` returns."""

    params: Any
    state: OptState
    loss: jax.Array
    aux: Any  # loss_fn's aux
    grads: Any
    finite: jax.Array  # [] bool: the update was applied


class Optimizer(NamedTuple):
    """An optax transformation with a skip of non-finite updates and, for float16, dynamic loss scaling."""

    tx: optax.GradientTransformation
    fp16: bool

    def init(self, params) -> OptState:
        scale = jnp.asarray(1e4 if self.fp16 else 1.0, jnp.float32)
        return OptState(self.tx.init(params), scale, jnp.zeros((), jnp.int32))

    def step(self, loss_fn, params, state: OptState) -> Step:
        """One step on loss_fn(params) -> (loss, aux).

        The loss is multiplied by the loss scale before differentiation and the gradients divided by
        it (float16); on non-finite gradients the update is skipped and the scale halved, after 1000
        finite steps in a row it doubles (clipped to [1e-4, 1e4]).
        """
        scale, good = state.scale, state.good
        if self.fp16:

            def scaled(p):
                loss, aux = loss_fn(p)
                return loss * scale, (loss, aux)

            (_, (loss, aux)), grads = jax.value_and_grad(scaled, has_aux=True)(params)
            grads = jax.tree.map(lambda g: g * (1.0 / scale), grads)
        else:
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, inner = self.tx.update(grads, state.inner, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jnp.where(finite, new, old)
        params, inner = jax.tree.map(keep, new_params, params), jax.tree.map(keep, inner, state.inner)
        if self.fp16:
            grow = finite & (good + 1 >= 1000)
            scale = jnp.clip(jnp.where(finite, jnp.where(grow, 2 * scale, scale), scale / 2), 1e-4, 1e4)
            good = jnp.where(finite & ~grow, good + 1, 0)
        else:
            good = jnp.where(finite, good + 1, 0)
        return Step(params, OptState(inner, scale, good), loss, aux, grads, finite)


def global_norm(tree):
    """sqrt of the summed squares of all leaves, with one dot product per leaf.

    (optax's square-then-reduce form hits an XLA GPU compiler error on [1]-shaped leaves such as
    the continue head's bias in jax 0.11.2: "Expected instruction to have shape f32[]".)
    """
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.vdot(x.ravel(), x.ravel()).real.astype(jnp.float32) for x in leaves))


def clip_by_global_norm(max_norm):
    def update(updates, state, params=None):
        norm = global_norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda g: (g * factor).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def adam(lr, eps, clip, wd=0.0, wd_mask=None):
    """clip by global norm -> Adam -> decoupled weight decay on kernels -> scale by -lr."""
    parts = [clip_by_global_norm(clip), optax.scale_by_adam(eps=eps)]
    if wd:
        parts.append(optax.add_decayed_weights(wd, mask=wd_mask))
    parts.append(optax.scale(-lr))
    return optax.chain(*parts)


def optimizers(cfg, labels, fp16):
    """The (world model, actor, critic) Optimizers of the config's `model_opt`, `actor_opt`, `critic_opt`.
    `labels`: `param_labels` of the world model; its S5 leaves form their own group (own learning rate,
    own global-norm clip, no weight decay)."""
    m, a, c = cfg.model_opt, cfg.actor_opt, cfg.critic_opt
    groups = {"rest": adam(m.lr, m.eps, m.clip, m.wd, kernel_mask), "ssm": adam(m.ssm_lr, m.eps, m.clip)}
    return (
        Optimizer(optax.multi_transform(groups, labels), fp16),
        Optimizer(adam(a.lr, a.eps, a.clip, a.wd, kernel_mask), fp16),
        Optimizer(adam(c.lr, c.eps, c.clip, c.wd, kernel_mask), fp16),
    )


def _leaf_name(path):
    last = path[-1]
    return getattr(last, "name", getattr(last, "key", str(last)))


def param_labels(tree):
    """'ssm' for the S5 leaves inside the sequence model (their own learning rate, `model_opt.ssm_lr`),
    'rest' otherwise."""

    def label(path, _):
        names = [str(getattr(p, "name", getattr(p, "key", p))) for p in path]
        return "ssm" if "stack" in names and _leaf_name(path) in SSM_LEAVES else "rest"

    return jax.tree_util.tree_map_with_path(label, tree)


def kernel_mask(tree):
    """Weight decay applies to dense kernels only (leaf `w` of our Linear, `weight` of eqx.nn)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: _leaf_name(p) in ("w", "weight"), tree)
