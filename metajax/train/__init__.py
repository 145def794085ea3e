"""Training: one jit train step for every loss, its losses, optimizers, orbax checkpoints, metrics."""

from metajax.train.checkpoint import Checkpointer, CheckpointNotFoundError, CorruptCheckpointError
from metajax.train.losses import PolicyGradientLoss, SFTLoss, sft_loss_terms
from metajax.train.metrics import MetricsWriter, read_metrics
from metajax.train.optim import OptimizerConfig, learning_rate, make_optimizer, make_schedule
from metajax.train.sft import num_sft_batches, sft_batches, train_sft
from metajax.train.state import TrainState, init_train_state
from metajax.train.step import NonFiniteError, check_finite, make_train_step

__all__ = [
    "Checkpointer", "CheckpointNotFoundError", "CorruptCheckpointError", "MetricsWriter", "NonFiniteError",
    "OptimizerConfig", "PolicyGradientLoss", "SFTLoss", "TrainState", "check_finite", "init_train_state",
    "learning_rate", "make_optimizer", "make_schedule", "make_train_step", "num_sft_batches", "read_metrics",
    "sft_batches", "sft_loss_terms", "train_sft",
]
