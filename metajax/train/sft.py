"""Supervised fine-tuning: masked next-token cross-entropy, a jitted sharded step, and the loop.

RaM's expert iteration trains on each selected (question, thought, answer) row with the loss on
the thought and answer tokens only; `loss_mask` marks those targets. The loss is carried as a
(sum, count) pair so that gradient accumulation over micro-batches equals one big batch exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from metajax.batching import bucket, pad_rows
from metajax.models.config import ModelConfig
from metajax.models.sharding import batch_sharding, named_sharding
from metajax.models.transformer import Params, is_param_spec, param_specs
from metajax.rewards.logprobs import token_logprobs
from metajax.train.optim import OptimizerConfig, learning_rate, make_optimizer
from metajax.train.state import TrainState, init_train_state

Batch = dict[str, np.ndarray]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def sft_loss_terms(params: Params, cfg: ModelConfig, tokens: jax.Array, loss_mask: jax.Array, *,
                   attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
                   remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """Summed next-token cross-entropy over the target positions, and their count.

    Args:
      tokens: int32[batch, seq].
      loss_mask: bool[batch, seq]; True at t means tokens[t] is a target, predicted from tokens[:t].
        Position 0 has no context and is never a target; padding (`attention_mask` False) neither.
      attention_mask, segment_ids: as in `metajax.models.forward`.
    Returns:
      (loss_sum float32[], num_targets float32[]); the mean loss is their ratio.
    """
    targets = jnp.asarray(loss_mask, bool).at[:, 0].set(False)
    if attention_mask is not None:
        targets &= jnp.asarray(attention_mask, bool)
    logp = token_logprobs(params, cfg, tokens, attention_mask=attention_mask, segment_ids=segment_ids,
                          remat=remat)
    return -jnp.sum(jnp.where(targets, logp, 0.0)), jnp.sum(targets, dtype=jnp.float32)


def make_sft_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, *, compute_dtype=None,
                  remat: bool = False, mesh=None, grad_accum: int = 1) -> StepFn:
    """One optimizer update on a batch: `step(state, batch) -> (state, metrics)`.

    The step is jitted once per batch shape and donates `state`. The gradient is that of the mean
    loss over every target of the batch, whatever `grad_accum` is.

    Args:
      compute_dtype: run the forward and backward passes in this dtype (bf16, say) on a cast of the
        params; gradients, the optimizer and the master params stay in the params' own dtype (fp32).
      remat: recompute each block's activations in the backward pass.
      mesh: shard the batch over its `data` and `fsdp` axes; params (placed with this mesh, e.g.
        `init_params(..., mesh=mesh)`) and their gradients keep their sharding.
      grad_accum: split the batch into this many micro-batches, run one after another (less
        activation memory); the batch size must be a multiple of it.
    Batch:
      tokens: int32[batch, seq]; loss_mask: bool[batch, seq]; attention_mask: bool[batch, seq].
    Metrics (scalars):
      loss: mean cross-entropy per target; grad_norm: global norm before clipping; lr: learning rate
      of this update (when the optimizer records it, as `make_optimizer`'s does); num_targets.
    """
    if grad_accum < 1:
        raise ValueError(f"grad_accum={grad_accum} must be >= 1")
    param_shardings = None
    if mesh is not None:
        param_shardings = jax.tree.map(lambda s: named_sharding(mesh, s.logical_axes, s.shape),
                                       param_specs(cfg), is_leaf=is_param_spec)

    def loss_terms(params, micro):
        if compute_dtype is not None:
            params = jax.tree.map(lambda p: p.astype(compute_dtype) if jnp.issubdtype(p.dtype, jnp.floating)
                                  else p, params)
        return sft_loss_terms(params, cfg, micro["tokens"], micro["loss_mask"],
                              attention_mask=micro["attention_mask"], remat=remat)

    grad_of_sum = jax.value_and_grad(loss_terms, has_aux=True)

    def accumulate(params, batch):
        """(loss_sum, num_targets, gradient of loss_sum) summed over the micro-batches."""
        if grad_accum == 1:
            (loss_sum, count), grads = grad_of_sum(params, batch)
            return loss_sum, count, grads

        # Micro-batch i takes rows i, i + grad_accum, ...: every device's shard of the batch feeds
        # every micro-batch, so the micro-batches stay evenly sharded.
        def split(x):
            return jnp.swapaxes(x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]), 0, 1)

        def body(carry, micro):
            (loss_sum, count), grads = grad_of_sum(params, micro)
            return jax.tree.map(jnp.add, carry, (loss_sum, count, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        totals, _ = jax.lax.scan(body, zeros, jax.tree.map(split, batch))
        return totals

    def step(state: TrainState, batch: Batch):
        loss_sum, count, grads = accumulate(state.params, batch)
        denominator = jnp.maximum(count, 1.0)  # an all-padding batch makes a zero update, not NaN
        grads = jax.tree.map(lambda g, p: (g / denominator).astype(p.dtype), grads, state.params)
        if param_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, param_shardings)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if param_shardings is not None:
            params = jax.lax.with_sharding_constraint(params, param_shardings)
        metrics = {"loss": loss_sum / denominator, "grad_norm": optax.tree.norm(grads), "num_targets": count}
        lr = learning_rate(opt_state)
        if lr is not None:
            metrics["lr"] = jnp.asarray(lr, jnp.float32)
        return dataclasses.replace(state, params=params, opt_state=opt_state, step=state.step + 1), metrics

    jitted = jax.jit(step, donate_argnums=0)

    def run(state: TrainState, batch: Batch):
        batch_size = batch["tokens"].shape[0]
        if batch_size % grad_accum:
            raise ValueError(f"batch of {batch_size} rows does not split into grad_accum={grad_accum} "
                             "equal micro-batches; make the batch size a multiple of grad_accum")
        batch = {k: batch[k] for k in ("tokens", "loss_mask", "attention_mask")}
        if mesh is None:
            return jitted(state, batch)
        batch = {k: jax.device_put(v, batch_sharding(mesh, v.shape)) for k, v in batch.items()}
        with jax.set_mesh(mesh):
            return jitted(state, batch)

    return run


def sft_batches(sequences: Sequence[tuple[Sequence[int], Sequence[bool]]], *, batch_size: int, seed: int,
                epoch: int, pad_id: int = 0, drop_last: bool = False) -> Iterator[Batch]:
    """One epoch of shuffled, right-padded batches.

    The order depends only on (seed, epoch), so a resumed run sees the same batches. Each batch is
    padded to `bucket(longest row)` tokens, so a run compiles for a few lengths only; the last
    partial batch is filled up with all-masked rows (unless `drop_last`), so every batch has
    `batch_size` rows.

    Args:
      sequences: (tokens, loss_mask) pairs of equal length; loss_mask marks the target tokens.
    Yields:
      dict(tokens int32[batch_size, L], loss_mask bool[batch_size, L],
           attention_mask bool[batch_size, L]) of numpy arrays.
    """
    _check_sequences(sequences, batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(len(sequences))
    for start in range(0, num_sft_batches(len(sequences), batch_size, drop_last=drop_last) * batch_size,
                       batch_size):
        rows = [sequences[i] for i in order[start:start + batch_size]]
        length = bucket(max(len(tokens) for tokens, _ in rows))
        filler = batch_size - len(rows)
        tokens, attention_mask = pad_rows([r[0] for r in rows] + [[]] * filler, length=length, pad_id=pad_id)
        loss_mask = np.zeros_like(attention_mask)
        for i, (_, row_mask) in enumerate(rows):
            loss_mask[i, :len(row_mask)] = row_mask
        yield {"tokens": tokens, "loss_mask": loss_mask, "attention_mask": attention_mask}


def num_sft_batches(num_sequences: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Batches per epoch of `sft_batches`."""
    return num_sequences // batch_size if drop_last else -(-num_sequences // batch_size)


def train_sft(params: Params, cfg: ModelConfig, sequences: Sequence[tuple[Sequence[int], Sequence[bool]]], *,
              optim: OptimizerConfig, batch_size: int, epochs: int = 1, seed: int = 0, compute_dtype=None,
              remat: bool = False, mesh=None, grad_accum: int = 1, checkpointer=None, save_every: int = 0,
              metrics=None, progress: bool = True, desc: str = "sft") -> tuple[Params, list[dict]]:
    """Fine-tunes `params` on `sequences` for `epochs` shuffled passes (RaM: one epoch, batch 16).

    With a `checkpointer` holding a checkpoint of this same run (same data, batch size, epochs,
    seed and optimizer), training resumes from its latest step: the batches already done are
    skipped and the rest come in the same order, so the result equals an uninterrupted run's.
    A checkpoint of a different run in that directory is an error.

    Args:
      params: the starting (fp32 master) params; not modified, not donated.
      sequences: (tokens, loss_mask) pairs, as for `sft_batches`.
      checkpointer: a `metajax.train.Checkpointer`; saves every `save_every` steps (0: only at the
        end) and after the last step.
      metrics: a `MetricsWriter` (or anything with `write(step, metrics, stage=)`), given every
        step's metrics under stage `desc`.
    Returns:
      (trained params, one metrics dict of Python floats per step run now, with its "step").
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    _check_sequences(sequences, batch_size)
    steps_per_epoch = num_sft_batches(len(sequences), batch_size)
    total_steps = epochs * steps_per_epoch
    optimizer = make_optimizer(optim, total_steps)
    state = init_train_state(params, optimizer, jax.random.PRNGKey(seed))
    run_id = _run_fingerprint(sequences, optim, batch_size=batch_size, epochs=epochs, seed=seed)
    if checkpointer is not None and checkpointer.latest_step() is not None:
        state, saved = checkpointer.restore(like=state)
        if saved.get("run") != run_id:
            raise ValueError(
                f"checkpoint directory {checkpointer.directory} holds a different run ({saved.get('run')}); "
                f"this run is {run_id}. Use a fresh directory per run.")
    step_fn = make_sft_step(cfg, optimizer, compute_dtype=compute_dtype, remat=remat, mesh=mesh,
                            grad_accum=grad_accum)
    first_epoch, skip = divmod(int(state.step), steps_per_epoch)
    history = []
    with tqdm(total=total_steps, initial=int(state.step), desc=desc, disable=not progress) as bar:
        for epoch in range(first_epoch, epochs):
            batches = sft_batches(sequences, batch_size=batch_size, seed=seed, epoch=epoch)
            for batch in itertools.islice(batches, skip if epoch == first_epoch else 0, None):
                state, step_metrics = step_fn(state, batch)
                step = int(state.step)
                record = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                history.append({"step": step, **record})
                if metrics is not None:
                    metrics.write(step, record, stage=desc)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if checkpointer is not None and save_every and step % save_every == 0:
                    checkpointer.save(step, state, metadata={"run": run_id}, force=True)
    if checkpointer is not None and checkpointer.latest_step() != total_steps:
        checkpointer.save(total_steps, state, metadata={"run": run_id}, force=True)
    return state.params, history


def _check_sequences(sequences, batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not sequences:
        raise ValueError("no training sequences: the SFT set is empty")
    for i, (tokens, loss_mask) in enumerate(sequences):
        if len(tokens) != len(loss_mask):
            raise ValueError(f"sequence {i} has {len(tokens)} tokens but a loss_mask of {len(loss_mask)}")
        if not len(tokens):
            raise ValueError(f"sequence {i} is empty")


def _run_fingerprint(sequences, optim: OptimizerConfig, **settings) -> dict:
    """What makes two runs the same run: a digest of the data, and the settings that order it."""
    digest = hashlib.sha256()
    for tokens, loss_mask in sequences:
        digest.update(np.asarray(tokens, np.int64).tobytes())
        digest.update(np.asarray(loss_mask, bool).tobytes())
        digest.update(b"|")
    # The JSON round trip makes the fingerprint compare equal to its copy restored from metadata.
    return json.loads(json.dumps({"data": digest.hexdigest(), "optimizer": dataclasses.asdict(optim), **settings}))
