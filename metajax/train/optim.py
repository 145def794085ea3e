"""AdamW with a warm-up schedule and global-norm clipping, built from a static config."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np
import optax

SCHEDULES = ("linear", "constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyperparameters. The defaults are RaM's expert-iteration SFT (authors' code): AdamW,
    lr 1e-6, linear decay after a 1% warm-up, grad-norm clip 1.0.

    Attributes:
      learning_rate: peak learning rate (RaM: 1e-6; Dr. GRPO: 1e-6 constant).
      schedule: "linear" (warm-up, then linear decay to 0: RaM, like transformers'
        `get_linear_schedule_with_warmup`), "constant" (warm-up, then flat: Dr. GRPO) or "cosine"
        (warm-up, then cosine decay to 0).
      warmup_fraction: share of the total steps spent warming up from 0, rounded up to whole steps
        as transformers' `warmup_ratio` is (RaM: 0.01).
      weight_decay: decoupled weight decay, applied to every parameter (RaM: 0, transformers'
        default).
      b1, b2, eps: Adam moments (transformers' defaults).
      max_grad_norm: clip the gradient's global norm to this before Adam (RaM: 1.0); None: no clip.
      skip_nonfinite: a step whose loss or gradient is NaN or infinite is skipped (params and
        optimizer state unchanged) and counted in the metrics, instead of stopping the run.
    """

    learning_rate: float = 1e-6
    schedule: str = "linear"
    warmup_fraction: float = 0.01
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    skip_nonfinite: bool = False

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction={self.warmup_fraction} must lie in [0, 1]")
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be >= 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm} must be > 0, or None to disable clipping")


@functools.cache
def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Clip-then-AdamW, one object per config (so the train steps built on it are shared).

    The hyperparameters are injected (`optax.inject_hyperparams`): the train step sets each update's
    learning rate from `make_schedule` (computed on the host, so a new schedule length never
    recompiles the step), and `learning_rate(opt_state)` reads the latest one for logging. Until a
    step sets it, the rate is the peak `cfg.learning_rate`.
    """
    return optax.inject_hyperparams(_clipped_adamw, static_args="max_grad_norm")(
        learning_rate=cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the update count: transformers' warm-up from 0 (the first update
    of a warm-up is at lr 0), then the schedule's decay.

    The warm-up never takes the whole run: a run of one update (a small expert-iteration round) would
    otherwise train at lr 0 and change nothing."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1 (is the training set empty?)")
    warmup = min(total_steps - 1, math.ceil(cfg.warmup_fraction * total_steps))
    peak, decay_steps = cfg.learning_rate, max(1, total_steps - warmup)
    after_warmup = {
        "linear": optax.linear_schedule(peak, 0.0, decay_steps),
        "constant": optax.constant_schedule(peak),
        "cosine": optax.cosine_decay_schedule(peak, decay_steps),
    }[cfg.schedule]
    # Built by hand: optax's warmup_constant_schedule gives 0 forever when warmup_steps is 0.
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after_warmup], boundaries=[warmup])


def learning_rate(opt_state) -> float | None:
    """The learning rate of the latest update of an injected-hyperparameter optimizer (traced
    scalar under jit), or None for an optimizer that does not record it."""
    # The schedule's own state is also keyed "learning_rate"; only the value is an array.
    return optax.tree_utils.tree_get(opt_state, "learning_rate",
                                     filtering=lambda _, value: isinstance(value, (jax.Array, np.ndarray)))


def _clipped_adamw(learning_rate, b1, b2, eps, weight_decay, max_grad_norm):
    adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)
