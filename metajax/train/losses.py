"""The loss-terms functions of `metajax.train.make_train_step`: SFT and the clipped policy gradient.

Each is a frozen dataclass (hashable, so a step built from it is cached and compiled once) called as
`loss(params, cfg, batch, remat=) -> (loss_sum, denominator, stats)`. The pair makes accumulation
exact: micro-batch sums and denominators add up, and the step divides once. Token log-probs come
from the vocabulary-chunked `metajax.models.token_logprobs`, so no loss builds float32
`[batch, seq, vocab]` logits.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from metajax.models.logprobs import VOCAB_CHUNK, token_logprobs
from metajax.rewards.policy_gradient import policy_gradient_terms


@dataclasses.dataclass(frozen=True)
class SFTLoss:
    """Masked next-token cross-entropy: summed over the target tokens, divided by their count.

    Batch: tokens int32[batch, seq]; loss_mask bool[batch, seq] (True at t: tokens[t] is a target,
    predicted from tokens[:t]; position 0 and padding never are); attention_mask bool[batch, seq].
    Stats: num_targets.
    """

    vocab_chunk: int = VOCAB_CHUNK

    def __call__(self, params, cfg, batch, *, remat: str = "none"):
        loss_sum, count = sft_loss_terms(params, cfg, batch["tokens"], batch["loss_mask"],
                                         attention_mask=batch["attention_mask"], remat=remat,
                                         vocab_chunk=self.vocab_chunk)
        return loss_sum, count, {"num_targets": count}


def sft_loss_terms(params, cfg, tokens, loss_mask, *, attention_mask=None, segment_ids=None, remat: str = "none",
                   vocab_chunk: int = VOCAB_CHUNK):
    """(summed cross-entropy over the target positions, their count): float32[] each.

    tokens: int32[batch, seq]; loss_mask: bool[batch, seq]; attention_mask, segment_ids: as in
    `metajax.models.forward`.
    """
    targets = jnp.asarray(loss_mask, bool).at[:, 0].set(False)
    if attention_mask is not None:
        targets &= jnp.asarray(attention_mask, bool)
    logp, _ = token_logprobs(params, cfg, tokens, attention_mask=attention_mask, segment_ids=segment_ids,
                             remat=remat, vocab_chunk=vocab_chunk)
    return -jnp.sum(jnp.where(targets, logp, 0.0)), jnp.sum(targets, dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class PolicyGradientLoss:
    """The clipped GRPO / Dr. GRPO objective (`metajax.rewards.policy_gradient_terms`) on sampled tokens.

    Attributes:
      kind: "dr_grpo" or "grpo" (TRL's `loss_type`).
      clip_eps: PPO's clip range (TRL's `epsilon`; Dr. GRPO: 0.2).
      max_tokens: Dr. GRPO's constant normaliser, the generation budget (TRL's `max_completion_length`).
      kl_beta: weight of the k3 KL to the reference (TRL's `beta`; Dr. GRPO: 0).
    Batch: tokens, attention_mask (as for SFT); sampled bool[batch, C] (the tokens that carry the
      gradient); logprobs float32[batch, C] (the behaviour policy's, from the rollout); temperature
      float32[batch] (the one they were sampled at); advantages float32[batch]; ref_logprobs
      float32[batch, C] (only when kl_beta > 0). The C columns are the last C of `tokens`: the
      completions (`metajax.algorithms.grpo.policy_gradient_batch`), whose log-probs are all the loss
      computes, or C = seq for every position.
    Stats: clip_fraction, ratio_mean, kl, entropy (nats, of the current policy at sampled positions),
      sampled_tokens.
    """

    kind: str = "dr_grpo"
    clip_eps: float = 0.2
    max_tokens: int | None = None
    kl_beta: float = 0.0
    vocab_chunk: int = VOCAB_CHUNK

    def __call__(self, params, cfg, batch, *, remat: str = "none"):
        mask = jnp.asarray(batch["sampled"], bool)
        seq = batch["tokens"].shape[1]
        per_token = {name: batch[name].shape for name in ("sampled", "logprobs", "ref_logprobs") if name in batch}
        if len(set(per_token.values())) > 1 or mask.shape[1] > seq:
            raise ValueError(f"policy-gradient batch: {per_token} must share one shape [batch, C] with C <= seq = "
                             f"{seq} (the last C columns of tokens; policy_gradient_batch builds it)")
        completion_len = mask.shape[1] if mask.shape[1] < seq else None
        logp, entropy = token_logprobs(params, cfg, batch["tokens"], attention_mask=batch["attention_mask"],
                                       temperature=batch["temperature"], remat=remat, vocab_chunk=self.vocab_chunk,
                                       completion_len=completion_len)
        loss_sum, denominator, aux = policy_gradient_terms(
            logp, batch["logprobs"], batch["advantages"], mask, kind=self.kind, clip_eps=self.clip_eps,
            max_tokens=self.max_tokens, kl_beta=self.kl_beta, logp_ref=batch.get("ref_logprobs"))
        tokens = jnp.sum(mask, dtype=jnp.float32)
        stats = {name: (aux[key] * tokens, tokens) for name, key in
                 (("clip_fraction", "clip_fraction"), ("ratio_mean", "ratio_mean"), ("kl", "kl_mean"))}
        stats["entropy"] = (jnp.sum(jnp.where(mask, entropy, 0.0)), tokens)
        stats["sampled_tokens"] = tokens
        return loss_sum, denominator, stats
