"""Jit-compiled KV-cache sampling with per-row token budgets and forced endings."""

from metajax.sampling.sampler import Samples, StopReason, compile_counts, filter_logits, generate

__all__ = ["Samples", "StopReason", "compile_counts", "filter_logits", "generate"]
