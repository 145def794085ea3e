"""Sampling: the jit-compiled KV-cache sampler with per-row budgets, token-level rollouts, policies."""

from metajax.sampling.draw import filter_logits
from metajax.sampling.policy import Policy
from metajax.sampling.rollouts import Completion, Rollouts, complete, completions, rollout
from metajax.sampling.sampler import Samples, StopReason, compile_counts, generate, lower_generate

__all__ = ["Completion", "Policy", "Rollouts", "Samples", "StopReason", "compile_counts", "complete", "completions",
           "filter_logits", "generate", "lower_generate", "rollout"]
