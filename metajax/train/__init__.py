"""Training: train state, SFT step and loop, optimizers, orbax checkpoints, metrics."""

from metajax.train.checkpoint import Checkpointer, CheckpointNotFoundError, CorruptCheckpointError
from metajax.train.metrics import MetricsWriter, read_metrics
from metajax.train.optim import OptimizerConfig, learning_rate, make_optimizer, make_schedule
from metajax.train.sft import make_sft_step, num_sft_batches, sft_batches, sft_loss_terms, train_sft
from metajax.train.state import TrainState, init_train_state

__all__ = [
    "Checkpointer", "CheckpointNotFoundError", "CorruptCheckpointError", "MetricsWriter", "read_metrics",
    "OptimizerConfig", "learning_rate", "make_optimizer", "make_schedule", "make_sft_step",
    "num_sft_batches", "sft_batches", "sft_loss_terms", "train_sft", "TrainState", "init_train_state",
]
