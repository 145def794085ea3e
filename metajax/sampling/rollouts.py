"""Token-level rollouts: what the sampler drew, laid out for training, and its text for graders.

`rollout` samples completions and returns them as `Rollouts`, device arrays in the layout every
trainer reads (`[prompt | completion]` rows with masks and the behaviour log-probs), so the tokens a
model is trained on are the tokens it sampled. `completions` decodes them on the host, for graders,
logs and people; nothing decoded is ever encoded again on the way to a gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from metajax.batching import length_bucket, pad_rows
from metajax.data.formats import ANSWER_MARKER
from metajax.host import to_host
from metajax.models.sharding import batch_sharding
from metajax.progress import bar as progress_bar
from metajax.sampling.policy import Policy
from metajax.sampling.sampler import generate

_DATA_FIELDS = ("tokens", "attention_mask", "sampled", "forced", "logprobs", "temperature", "lengths",
                "budget_tokens", "stop_reason", "prompt_index")


@partial(jax.tree_util.register_dataclass, data_fields=list(_DATA_FIELDS), meta_fields=["completion_start"])
@dataclasses.dataclass(frozen=True)
class Rollouts:
    """Sampled completions as training rows, `n_samples` consecutive rows per prompt.

    Attributes:
      tokens: int32[batch, seq]: the prompt left-padded, then the completion, then right padding;
        the completion starts at column `completion_start` with the forced opening, if any.
      attention_mask: bool[batch, seq], True on real tokens (prompt and completion).
      sampled: bool[batch, seq], completion tokens the sampler drew: the policy-gradient targets.
      forced: bool[batch, seq], completion tokens it was made to emit (an opening such as
        "<thought>", or a forced ending); they count as generated but carry no policy gradient.
      logprobs: float32[batch, seq], the behaviour policy's log-probability of each completion
        token, as `metajax.sampling.generate` records it (temperature applied, before top-k /
        top-p); 0 at the prompt, the opening and padding.
      temperature: float32[batch], the temperature of `logprobs` (1 for greedy rows).
      lengths: int32[batch], completion tokens (opening included).
      budget_tokens: int32[batch], tokens spent from each row's budget.
      stop_reason: int32[batch], `StopReason` of each row.
      prompt_index: int32[batch], which prompt each row continues.
      completion_start: static column where every completion starts.
    """

    tokens: jax.Array
    attention_mask: jax.Array
    sampled: jax.Array
    forced: jax.Array
    logprobs: jax.Array
    temperature: jax.Array
    lengths: jax.Array
    budget_tokens: jax.Array
    stop_reason: jax.Array
    prompt_index: jax.Array
    completion_start: int

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def take(self, rows: jax.Array) -> "Rollouts":
        """The rows `rows` (int32[k]), e.g. a shuffled mini-batch."""
        return jax.tree.map(lambda x: x[rows], self)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One completion, read on the host.

    ids: the completion's token ids as sampled (forced opening first, stop token last).
    text: their decoding, cut after the answer line (base models run on into a next "[User]" block).
    num_tokens: tokens generated up to that cut (the opening included).
    prompt_index: which prompt it continues.
    raw_text: the decoding of all of `ids`, before the cut.
    stop_reason: the sampler's `StopReason`: a stop token, or a budget spent (cut mid-sentence).
    """

    ids: tuple[int, ...]
    text: str
    num_tokens: int
    prompt_index: int
    raw_text: str
    stop_reason: int


def rollout(policy: Policy, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, n_samples: int = 1,
            temperature=0.0, top_p: float = 1.0, top_k: int = 0, budgets=None, opening: Sequence[int] = (),
            rng: jax.Array | None = None, mesh=None, forced_ending: Sequence[int] = (), answer_allowance: int = 0,
            cache_dtype=None, answer_line_stop: bool = True, stop_strings: tuple[str, ...] = ()) -> Rollouts:
    """Samples `n_samples` completions of each prompt in one compiled call (`metajax.sampling.generate`,
    whose arguments these are), each opening with the forced tokens `opening`.

    The opening is fed with the prompt (its keys and values come from the prefill) and marked as
    forced completion tokens: it counts as generated, as RaM charges a forced "<thought>" to the chain.
    A row ends at a stop token or where its text ends (`Policy.stop_text`: the end of the answer line
    in the text format; `answer_line_stop=False` keeps going past it, for exams) or at one of
    `stop_strings`, inside the compiled loop, so a finished row spends no more budget.
    """
    rows = [list(p) + list(opening) for p in prompts]
    samples = generate(policy.params, policy.cfg, rows, max_new_tokens=max_new_tokens, n_samples=n_samples,
                       temperature=temperature, top_p=top_p, top_k=top_k, budgets=budgets,
                       stop_tokens=policy.stop_ids, rng=rng, mesh=mesh, pad_id=policy.pad_id,
                       forced_ending=forced_ending, answer_allowance=answer_allowance, cache_dtype=cache_dtype,
                       compute_dtype=policy.compute_dtype,
                       stop_text=policy.stop_text(opening, answer_line=answer_line_stop, stop_strings=stop_strings))
    prompt_tokens, prompt_mask = pad_rows(rows, length=length_bucket(max(map(len, rows))), pad_id=policy.pad_id, left=True)
    prompt_tokens, prompt_mask = (np.repeat(x, n_samples, axis=0) for x in (prompt_tokens, prompt_mask))
    if mesh is not None:
        prompt_tokens, prompt_mask = (jax.device_put(x, batch_sharding(mesh, x.shape))
                                      for x in (prompt_tokens, prompt_mask))
    parts = _assemble(prompt_tokens, prompt_mask, samples.tokens, samples.lengths, samples.forced, samples.logprobs,
                      opening_len=len(opening))
    return Rollouts(**parts, temperature=samples.temperature, budget_tokens=samples.budget_tokens,
                    stop_reason=samples.stop_reason, prompt_index=samples.prompt_index,
                    completion_start=prompt_tokens.shape[1] - len(opening))


@partial(jax.jit, static_argnames="opening_len")
def _assemble(prompt_tokens, prompt_mask, tokens, lengths, forced, logprobs, *, opening_len: int):
    """[prompt | completion] rows and their masks from the sampler's completion-only arrays."""
    batch, prompt_width = prompt_tokens.shape
    inside = jnp.arange(tokens.shape[1]) < lengths[:, None]
    opening = jnp.broadcast_to(jnp.arange(prompt_width) >= prompt_width - opening_len, (batch, prompt_width))
    no = jnp.zeros((batch, prompt_width), bool)
    return dict(
        tokens=jnp.concatenate([prompt_tokens, tokens], axis=1),
        attention_mask=jnp.concatenate([prompt_mask.astype(bool), inside], axis=1),
        sampled=jnp.concatenate([no, inside & ~forced], axis=1),
        forced=jnp.concatenate([opening, inside & forced], axis=1),
        logprobs=jnp.concatenate([jnp.zeros((batch, prompt_width), jnp.float32), jnp.where(inside, logprobs, 0.0)],
                                 axis=1),
        lengths=lengths + opening_len,
    )


def completions(policy: Policy, rollouts: Rollouts, *, first_prompt: int = 0) -> list[Completion]:
    """Every row of `rollouts` read on the host and decoded (a collective in a multi-process run).

    first_prompt: added to each row's prompt index (the offset of a batch within a longer list).
    """
    tokens, lengths, prompt_index, stop_reason = to_host(
        (rollouts.tokens, rollouts.lengths, rollouts.prompt_index, rollouts.stop_reason))
    start = rollouts.completion_start
    out = []
    for row, length, index, reason in zip(tokens, lengths, prompt_index, stop_reason):
        ids = row[start:start + length].tolist()
        raw = policy.decode(ids)
        text = cut_after_answer(raw)
        out.append(Completion(ids=tuple(ids), text=text, num_tokens=tokens_within(policy, ids, len(text)),
                              prompt_index=first_prompt + int(index), raw_text=raw, stop_reason=int(reason)))
    return out


def complete(policy: Policy, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, n_samples: int = 1,
             temperature=0.0, top_p: float = 1.0, rng: jax.Array | None = None, batch_size: int = 64,
             opening: Sequence[int] = (), mesh=None, desc: str | None = None) -> list[Completion]:
    """`rollout` over `prompts` in batches of `batch_size` prompts, decoded: `n_samples` completions
    per prompt, in prompt order. Batch b samples with `fold_in(rng, b)`."""
    out: list[Completion] = []
    starts = range(0, len(prompts), batch_size)
    for batch_number, start in enumerate(progress_bar(starts, desc=desc, disable=desc is None, leave=False)):
        key = None if rng is None else jax.random.fold_in(rng, batch_number)
        rows = rollout(policy, prompts[start:start + batch_size], max_new_tokens=max_new_tokens, n_samples=n_samples,
                       temperature=temperature, top_p=top_p, rng=key, opening=opening, mesh=mesh)
        out += completions(policy, rows, first_prompt=start)
    return out


def cut_after_answer(text: str) -> str:
    """The completion up to and including the line that starts with the answer marker."""
    marker = text.find(ANSWER_MARKER)
    if marker < 0:
        return text
    end = text.find("\n", marker)
    return text if end < 0 else text[:end + 1]


def tokens_within(policy: Policy, ids: Sequence[int], num_chars: int) -> int:
    """How many of `ids` it takes to spell the first `num_chars` characters of their decoding."""
    ids = list(ids)
    if num_chars >= len(policy.decode(ids)):
        return len(ids)
    lo, hi = 0, len(ids)
    while lo < hi:  # smallest prefix whose decoding covers num_chars characters
        mid = (lo + hi) // 2
        if len(policy.decode(ids[:mid])) >= num_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo
