"""The training state: one pytree that jit, donation and orbax checkpoints handle whole."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a training run needs to continue exactly where it stopped.

    Attributes:
      params: the (fp32 master) parameters.
      opt_state: the optimizer's state for `params`.
      step: int32 scalar, updates applied so far.
      rng: uint32[2] raw PRNG key data (checkpointable as a plain array); steps that sample split it.
    """

    params: dict
    opt_state: optax.OptState
    step: jax.Array
    rng: jax.Array


def init_train_state(params, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A state at step 0 that owns a copy of `params`.

    The copy matters: the train step donates its state, and the caller's `params` (RaM restarts
    every iteration from the same base model) must survive it. Copies keep each leaf's sharding,
    and the optimizer state is built eagerly, so its moments take the params' shardings
    (under jit they would land on one device).

    Args:
      rng: a PRNG key, typed (`jax.random.key`) or raw (`jax.random.PRNGKey`).
    """
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    params = jax.tree.map(jnp.copy, params)
    return TrainState(params=params, opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), rng=jnp.asarray(rng, jnp.uint32))


def abstract_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """The `TrainState` `init_train_state` would build, as `jax.ShapeDtypeStruct`s: from abstract
    `params` (`metajax.models.abstract_params`), for compiling a train step ahead of time.

    Optimizer moments take their params' shardings (as the eager `optimizer.init` gives them), the
    optimizer's scalars and the step are replicated on the params' mesh.
    """
    shapes = jax.eval_shape(lambda p: init_train_state(p, optimizer, jax.random.PRNGKey(0)), params)
    shardings = [leaf.sharding for leaf in jax.tree.leaves(params)]
    if not shardings or shardings[0] is None:
        return shapes
    replicated = jax.sharding.NamedSharding(shardings[0].mesh, jax.sharding.PartitionSpec())

    def placed(leaf, sharding):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    opt_state = optax.tree_map_params(optimizer, lambda leaf, param: placed(leaf, param.sharding), shapes.opt_state,
                                      params, transform_non_params=lambda leaf: placed(leaf, replicated))
    return TrainState(params=params, opt_state=opt_state, step=placed(shapes.step, replicated),
                      rng=placed(shapes.rng, replicated))
