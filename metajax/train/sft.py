"""Supervised fine-tuning: shuffled bucketed batches and the loop over the shared train step.

RaM's expert iteration trains on each selected (question, thought, answer) row with the loss on
the thought and answer tokens only; `loss_mask` marks those targets. The step is
`metajax.train.make_train_step` with `SFTLoss`, shared by every call with the same settings, so
the rounds of an expert-iteration run compile it once per batch shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from metajax.batching import bucket, pad_rows
from metajax.host import to_host
from metajax.models.config import ModelConfig
from metajax.models.transformer import Params
from metajax.progress import bar as progress_bar
from metajax.train.losses import SFTLoss
from metajax.train.optim import OptimizerConfig, make_optimizer, make_schedule
from metajax.train.state import init_train_state
from metajax.train.step import check_finite, make_train_step

Batch = dict[str, np.ndarray]


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
              remat: str = "none", mesh=None, grad_accum: int = 1, checkpointer=None, save_every: int = 0,
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
    optimizer = make_optimizer(optim)
    schedule = make_schedule(optim, total_steps)
    state = init_train_state(params, optimizer, jax.random.PRNGKey(seed))
    run_id = _run_fingerprint(sequences, optim, batch_size=batch_size, epochs=epochs, seed=seed)
    if checkpointer is not None and checkpointer.latest_step() is not None:
        state, saved = checkpointer.restore(like=state)
        if saved.get("run") != run_id:
            raise ValueError(
                f"checkpoint directory {checkpointer.directory} holds a different run ({saved.get('run')}); "
                f"this run is {run_id}. Use a fresh directory per run.")
    step_fn = make_train_step(cfg, optimizer, SFTLoss(), compute_dtype=compute_dtype, remat=remat, mesh=mesh,
                              grad_accum=grad_accum, skip_nonfinite=optim.skip_nonfinite)
    first_epoch, skip = divmod(int(state.step), steps_per_epoch)
    history = []
    with progress_bar(total=total_steps, initial=int(state.step), desc=desc, disable=not progress) as bar:
        for epoch in range(first_epoch, epochs):
            batches = sft_batches(sequences, batch_size=batch_size, seed=seed, epoch=epoch)
            for batch in itertools.islice(batches, skip if epoch == first_epoch else 0, None):
                state, step_metrics = step_fn(state, batch, schedule(int(state.step)))
                step = int(state.step)
                record = {k: float(v) for k, v in to_host(step_metrics).items()}
                check_finite(record, stage=desc, step=step, skip_nonfinite=optim.skip_nonfinite)
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
