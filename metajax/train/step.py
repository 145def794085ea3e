"""One jit train step for every loss: SFT and policy gradients share it whole.

A loss is a *loss-terms* function `loss(params, cfg, batch, remat=) -> (loss_sum, denominator, stats)`
(`metajax.train.losses`). The step owns everything around it: casting to the compute dtype over
fp32 master params, gradient accumulation over micro-batches as exact (sum, denominator) pairs,
clipping and the optimizer (`make_optimizer`), donation of the state, the mesh shardings of params
and batch, remat, and what to do with a non-finite loss or gradient.

The learning rate is an argument of each call (the schedule runs on the host), so one compiled step
serves every round of a run whatever its length: `make_train_step` is cached on its (hashable)
arguments, and a run compiles it once per batch shape.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax.models.config import ModelConfig
from metajax.models.sharding import batch_sharding, named_sharding
from metajax.models.transformer import cast_params, is_param_spec, param_specs, remat_name
from metajax.train.optim import learning_rate
from metajax.train.state import TrainState

Batch = dict[str, jax.Array | np.ndarray]
# stats: name -> a scalar summed over micro-batches, or a (sum, count) pair reported as sum / count.
LossTerms = Callable[..., tuple[jax.Array, jax.Array, dict]]
StepFn = Callable[..., tuple[TrainState, dict[str, jax.Array]]]


# How many times a train step was traced (= compiled), by loss and batch shapes: lets tests and users
# check that a run compiles once per shape bucket, not once per round or step.
compile_counts: collections.Counter = collections.Counter()


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN or infinite; the message names the stage and the step."""


@functools.cache
def make_train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, loss: LossTerms, *,
                    compute_dtype=None, remat: str = "none", mesh=None, grad_accum: int = 1,
                    skip_nonfinite: bool = False) -> StepFn:
    """`step(state, batch, lr=None) -> (state, metrics)`: one optimizer update on `batch`;
    `step.lower(state, batch, lr)` lowers it without running it.

    Jitted once per batch shape; `state` is donated. The gradient is that of
    `sum(loss_sum) / sum(denominator)` over the whole batch, whatever `grad_accum` is.

    Args:
      optimizer: an optax optimizer; with `make_optimizer`'s, `lr` sets each update's learning rate.
      loss: a hashable loss-terms callable (a frozen dataclass of `metajax.train.losses`).
      compute_dtype: run forward and backward in this dtype (bf16) on a cast of the params;
        gradients, optimizer state and master params stay in the params' dtype (fp32).
      remat: a `metajax.models.REMAT_POLICIES` name ("none", "save_dots", "full"), passed to `loss`.
      mesh: shard the batch over `data` and `fsdp`; params (placed on this mesh) and their
        gradients keep their shardings.
      grad_accum: split the batch into this many micro-batches run one after another (less
        activation memory); the batch size must be a multiple of it.
      skip_nonfinite: a non-finite loss or gradient leaves params and optimizer state as they were
        (reported as metric `nonfinite` = 1) instead of applying the update.
    Metrics (scalars): loss (sum / denominator), denominator, grad_norm (before clipping), lr (when
      the optimizer records it), nonfinite (0 or 1), and the loss's own stats.
    """
    if grad_accum < 1:
        raise ValueError(f"grad_accum={grad_accum} must be >= 1")
    remat = remat_name(remat)
    param_shardings = None
    if mesh is not None:
        param_shardings = jax.tree.map(lambda s: named_sharding(mesh, s.logical_axes, s.shape),
                                       param_specs(cfg), is_leaf=is_param_spec)

    def loss_terms(params, micro):
        if compute_dtype is not None:
            params = cast_params(params, compute_dtype)
        loss_sum, denominator, stats = loss(params, cfg, micro, remat=remat)
        return loss_sum, (denominator, stats)

    grad_of_sum = jax.value_and_grad(loss_terms, has_aux=True)

    def accumulate(params, batch):
        """(loss_sum, denominator, stats, gradient of loss_sum) summed over the micro-batches."""
        if grad_accum == 1:
            (loss_sum, (denominator, stats)), grads = grad_of_sum(params, batch)
            return loss_sum, denominator, stats, grads

        # Micro-batch i takes rows i, i + grad_accum, ...: every device's shard of the batch feeds
        # every micro-batch, so the micro-batches stay evenly sharded.
        def split(x):
            return jnp.swapaxes(x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]), 0, 1)

        def body(carry, micro):
            (loss_sum, (denominator, stats)), grads = grad_of_sum(params, micro)
            return jax.tree.map(jnp.add, carry, (loss_sum, denominator, stats, grads)), None

        shapes = jax.eval_shape(grad_of_sum, params, jax.tree.map(lambda x: x[0], jax.tree.map(split, batch)))
        (_, (_, stat_shapes)), _ = shapes
        zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
                 jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stat_shapes), jax.tree.map(jnp.zeros_like, params))
        totals, _ = jax.lax.scan(body, zeros, jax.tree.map(split, batch))
        return totals

    def step(state: TrainState, batch: Batch, lr):
        compile_counts[(loss, tuple(sorted((k, v.shape) for k, v in batch.items())))] += 1
        loss_sum, denominator, stats, grads = accumulate(state.params, batch)
        scale = jnp.maximum(denominator, 1e-9)  # an all-padding batch makes a zero update, not NaN
        grads = jax.tree.map(lambda g, p: (g / scale).astype(p.dtype), grads, state.params)
        if param_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, param_shardings)
        grad_norm = optax.tree.norm(grads)
        opt_state = state.opt_state
        if lr is not None:
            opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        updates, new_opt_state = optimizer.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            params, new_opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                                 (params, new_opt_state), (state.params, opt_state))
        if param_shardings is not None:
            params = jax.lax.with_sharding_constraint(params, param_shardings)
        metrics = {"loss": loss_sum / scale, "denominator": denominator, "grad_norm": grad_norm,
                   "nonfinite": (~finite).astype(jnp.float32)}
        for name, value in stats.items():
            metrics[name] = value[0] / jnp.maximum(value[1], 1.0) if isinstance(value, tuple) else value
        recorded = learning_rate(new_opt_state)
        if recorded is not None:
            metrics["lr"] = jnp.asarray(recorded, jnp.float32)
        return dataclasses.replace(state, params=params, opt_state=new_opt_state, step=state.step + 1), metrics

    jitted = jax.jit(step, donate_argnums=0)

    def run(state: TrainState, batch: Batch, lr=None):
        batch_size = next(iter(batch.values())).shape[0]
        if batch_size % grad_accum:
            raise ValueError(f"batch of {batch_size} rows does not split into grad_accum={grad_accum} "
                             "equal micro-batches; make the batch size a multiple of grad_accum")
        lr = None if lr is None else np.float32(lr)
        if mesh is None:
            return jitted(state, batch, lr)
        batch = {k: v if _placed(v, mesh) else jax.device_put(v, batch_sharding(mesh, v.shape))
                 for k, v in batch.items()}
        with jax.set_mesh(mesh):
            return jitted(state, batch, lr)

    def lower(state, batch: Batch, lr=None):
        """The step lowered for these arguments (arrays or `jax.ShapeDtypeStruct`s carrying their
        shardings): `.compile()` it ahead of time, as `metajax.aot` does for TPU topologies."""
        with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
            return jitted.lower(state, batch, lr)

    run.lower = lower
    return run


def check_finite(metrics: dict, *, stage: str, step: int, skip_nonfinite: bool) -> None:
    """Raises `NonFiniteError` naming `stage` and `step` when a step reported a non-finite loss or
    gradient (`metrics["nonfinite"]`), unless such steps are skipped."""
    if metrics.get("nonfinite", 0.0) and not skip_nonfinite:
        raise NonFiniteError(
            f"{stage} step {step}: the loss or gradient is NaN or infinite (loss={metrics.get('loss')}, "
            f"grad_norm={metrics.get('grad_norm')}); the last good checkpoint is kept. Lower the learning rate, "
            "check the data, or set train.skip_nonfinite: true to skip such steps")


def _placed(x, mesh) -> bool:
    return isinstance(x, jax.Array) and getattr(x.sharding, "mesh", None) == mesh
