"""Jit-compiled KV-cache generation with per-row token budgets.

One compiled program per shape bucket does everything: prefill the (left-padded) prompts once, then a
`lax.while_loop` of decode steps that stops as soon as every row is finished. Each prompt's keys and
values are stored once and shared by its `n_samples` continuations.

Every row moves through up to three phases:
  FREE    sampling, counted against the row's budget;
  FORCING when the budget (or `max_new_tokens`) runs out before a stop token, the tokens of
          `forced_ending` are fed one by one (e.g. "</thought>\n[Assistant]", or "\\boxed{NA}");
  ANSWER  after a forced ending, up to `answer_allowance` more sampled tokens, so a cut-off chain can
          still produce a parseable answer.
Budgets, `max_new_tokens`, temperatures, top-k/top-p and the forced ending are traced values: a new
value never recompiles. Only the shape buckets (prompts, prompt length, cache length, samples) do.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from metajax.batching import bucket, length_bucket, pad_rows
from metajax.host import to_host
from metajax.models.config import ModelConfig
from metajax.models.decode import cpu_decode_layout, decode_step, prefill
from metajax.models.sharding import batch_sharding
from metajax.models.transformer import Params, cast_params
from metajax.sampling.draw import draw_tokens
from metajax.sampling.stop_text import StopText, advance, initial_state

_FREE, _FORCING, _ANSWER, _DONE = 0, 1, 2, 3

# How many times each bucket's program was traced (= compiled): lets tests and users check that a
# long run compiles a handful of times, not once per batch.
compile_counts: collections.Counter = collections.Counter()


class StopReason(enum.IntEnum):
    STOP_TOKEN = 0  # sampled one of `stop_tokens` (included in the output)
    BUDGET = 1  # spent the row's own budget
    MAX_LENGTH = 2  # spent `max_new_tokens`
    STOP_STRING = 3  # the text reached a stop string (`stop_text`; the token that completed it is kept)


@dataclasses.dataclass(frozen=True)
class Samples:
    """Generated continuations, `n_samples` consecutive rows per prompt, as device arrays (sharded
    over the batch when generated on a mesh; read them on the host with `metajax.host.to_host`).

    Attributes:
      tokens: int32[batch, width], padded with `pad_id` after each row's end; width is
        max_new_tokens + len(forced_ending) + answer_allowance.
      lengths: int32[batch], tokens in each row (stop token and forced tokens included).
      budget_tokens: int32[batch], tokens sampled in the FREE phase, i.e. spent from the budget.
      logprobs: float32[batch, width], the behaviour log-probability of each token: log softmax of
        the logits divided by the row's temperature (1 for greedy rows), taken *before* the top-k /
        top-p filter (see `generate`); the same for forced tokens; 0 past the row's end.
      forced: bool[batch, width], True where a token was forced rather than sampled.
      stop_reason: int32[batch] of `StopReason`: why the FREE phase ended.
      prompt_index: int32[batch], which prompt each row continues.
      temperature: float32[batch], the temperature `logprobs` were taken at (1 for greedy rows).
    """

    tokens: jax.Array
    lengths: jax.Array
    budget_tokens: jax.Array
    logprobs: jax.Array
    forced: jax.Array
    stop_reason: jax.Array
    prompt_index: jax.Array
    temperature: jax.Array

    def token_lists(self) -> list[list[int]]:
        tokens, lengths = to_host((self.tokens, self.lengths))
        return [row[:n].tolist() for row, n in zip(tokens, lengths)]


def generate(params: Params, cfg: ModelConfig, prompts, *, max_new_tokens: int,
             budgets=None, temperature=1.0, top_p: float = 1.0, top_k: int = 0,
             stop_tokens: Sequence[int] = (), rng: jax.Array | None = None, mesh=None,
             n_samples: int = 1, prompt_lengths=None, pad_id: int = 0,
             forced_ending: Sequence[int] = (), answer_allowance: int = 0,
             cache_dtype=None, compute_dtype=None, max_prompt_len: int | None = None,
             stop_text: StopText | None = None) -> Samples:
    """Samples `n_samples` continuations of each prompt.

    Args:
      prompts: a list of token lists of any lengths, or int32[num_prompts, prompt_len] (with
        `prompt_lengths`, real tokens first; without, every column is a real token).
      max_new_tokens: cap on each row's FREE tokens.
      budgets: int[num_prompts] or int[num_prompts * n_samples]: each row's own token budget
        (default `max_new_tokens`); a row is finished once it has sampled that many tokens.
      temperature: a scalar, or float[n_samples] (one per sample of every prompt: RaM draws one greedy
        and two tempered chains), or float[num_prompts * n_samples]. 0 means greedy.
      top_p: nucleus mass in (0, 1]; top_k: keep the k most likely tokens (0: all).
      stop_tokens: ids that end a row (e.g. `cfg.eos_token_ids`).
      rng: PRNG key; results are deterministic for a given key (required unless all rows are greedy).
      mesh: run sharded over this mesh (prompts split over `data`/`fsdp`); params should already be
        placed on it (`load_hf(..., mesh=mesh)`).
      forced_ending: tokens appended when a row's FREE phase ends without a stop token.
      answer_allowance: sampled tokens allowed after the forced ending (until a stop token).
      cache_dtype: dtype of the KV cache (e.g. jnp.bfloat16 with fp32 params); default the
        compute dtype.
      compute_dtype: run the model in this dtype (jnp.bfloat16 over fp32 master params: the cast is
        the compiled program's first step); default the params' own.
      max_prompt_len: longest prompt accepted (default: what fits cfg.max_position_embeddings).
      stop_text: stop strings matched as the text grows (`metajax.sampling.stop_text`), like stop
        tokens: a row ends on the token that completes one.

    The recorded log-probabilities are those of the tempered distribution before the top-k / top-p
    filter: log softmax(logits / T), the quantity a teacher-forced forward at that temperature
    computes (`metajax.models.token_logprobs`), so a policy-gradient ratio against them is exactly 1
    on policy, and later epochs compare like with like. The filter decides which tokens can be
    drawn, not how a drawn token is scored: the filtered distribution's log-probability differs by
    the log of the kept mass, a per-step quantity the trainer's forward cannot know without repeating
    the filter. TRL scores with logits / T and no filter, by a forward pass. Tunix 0.1.7 uses its
    training forward at logits / T when num_iterations = 1, but its separate old-log-prob pass for
    num_iterations > 1 leaves the temperature out (T = 1), so its ratio is off policy from the first
    update at any T != 1 (`benchmarks/tunix_grpo_step.py` cites the code). Here the sampler's own
    numbers are stored, no extra pass is needed, and they match the trainer's at every T. Use
    top_p = 1 and top_k = 0 (Dr. GRPO's recipe) for a gradient on exactly the sampling distribution.
    """
    rows = _prompt_rows(prompts, prompt_lengths)
    num_prompts, batch = len(rows), len(rows) * n_samples
    extra = len(forced_ending) + answer_allowance
    _validate(cfg, rows, max_new_tokens, n_samples, top_p, top_k, answer_allowance, extra, max_prompt_len)
    for name, ids in (("forced_ending", forced_ending), ("stop_tokens", stop_tokens)):
        outside = [t for t in ids if not 0 <= t < cfg.vocab_size]
        if outside:
            raise ValueError(f"{name} id {outside[0]} is outside the vocabulary [0, {cfg.vocab_size})")
    budgets = _per_row(budgets if budgets is not None else max_new_tokens, num_prompts, n_samples, np.int32,
                       "budgets", per="prompt")
    if (budgets < 0).any():
        raise ValueError(f"budgets must be >= 0; got {budgets.min()} (a row with budget 0 generates nothing)")
    temps = _per_row(temperature, num_prompts, n_samples, np.float32, "temperature", per="sample")
    if (temps < 0).any() or not np.isfinite(temps).all():
        raise ValueError("temperature must be finite and >= 0 (0 is greedy)")
    if rng is None:
        if (temps > 0).any():
            raise ValueError("sampling with temperature > 0 needs an rng key (jax.random.key(seed))")
        rng = jax.random.key(0)

    static, inputs = _program(cfg, rows, n_samples=n_samples, max_new_tokens=max_new_tokens, budgets=budgets,
                              temps=temps, top_p=top_p, top_k=top_k, stop_tokens=stop_tokens,
                              forced_ending=forced_ending, answer_allowance=answer_allowance, pad_id=pad_id,
                              cache_dtype=cache_dtype, compute_dtype=compute_dtype, stop_text=stop_text, mesh=mesh)
    if mesh is None:
        out = _generate_core(params, rng=rng, **static, **inputs)
    else:
        inputs = {k: jax.device_put(v, batch_sharding(mesh, v.shape)) if k in _BATCHED else v
                  for k, v in inputs.items()}
        with jax.set_mesh(mesh):
            out = _generate_core(params, rng=rng, **static, **inputs)
    width = max_new_tokens + extra
    # Dummy prompts of the bucket and cache slots past `width` are cut off on the device: the rows stay
    # sharded where they were generated.
    flat = {k: v[:num_prompts].reshape(batch, *v.shape[2:]) for k, v in out.items()}
    inside = jnp.arange(width) < flat["lengths"][:, None]
    return Samples(tokens=jnp.where(inside, flat["tokens"][:, :width], pad_id), lengths=flat["lengths"],
                   budget_tokens=flat["budget_tokens"], logprobs=flat["logprobs"][:, :width],
                   forced=flat["forced"][:, :width], stop_reason=flat["stop_reason"],
                   prompt_index=jnp.repeat(jnp.arange(num_prompts, dtype=jnp.int32), n_samples),
                   temperature=jnp.asarray(np.where(temps > 0, temps, 1.0), jnp.float32))


def lower_generate(params, cfg: ModelConfig, *, num_prompts: int, prompt_len: int, max_new_tokens: int,
                   n_samples: int = 1, forced_len: int = 0, answer_allowance: int = 0, cache_dtype=None,
                   compute_dtype=None, stop_text: StopText | None = None, mesh=None):
    """The program `generate` compiles for this shape bucket, lowered without running it: `params`
    may be `jax.ShapeDtypeStruct`s (`metajax.models.abstract_params`) and no prompt is needed.
    `.compile()` the result ahead of time (`metajax.aot` does, for TPU topologies)."""
    rows = [[0] * prompt_len] * num_prompts
    static, inputs = _program(cfg, rows, n_samples=n_samples, max_new_tokens=max_new_tokens,
                              budgets=np.zeros(num_prompts * n_samples, np.int32),
                              temps=np.ones(num_prompts * n_samples, np.float32), top_p=1.0, top_k=0, stop_tokens=(),
                              forced_ending=(0,) * forced_len, answer_allowance=answer_allowance, pad_id=0,
                              cache_dtype=cache_dtype, compute_dtype=compute_dtype, stop_text=stop_text, mesh=mesh)
    inputs["rng"] = jax.eval_shape(jax.random.key, 0)
    if mesh is None:
        return _generate_core.lower(params, **static, **inputs)

    def abstract(name, x):  # the shardings `generate` gives its inputs; scalars and tables replicated
        if not hasattr(x, "shape"):
            return x
        sharding = batch_sharding(mesh, x.shape) if name in _BATCHED else NamedSharding(mesh, PartitionSpec())
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    with jax.set_mesh(mesh):
        return _generate_core.lower(params, **static, **{k: abstract(k, v) for k, v in inputs.items()})


def _program(cfg, rows, *, n_samples, max_new_tokens, budgets, temps, top_p, top_k, stop_tokens, forced_ending,
             answer_allowance, pad_id, cache_dtype, compute_dtype, stop_text, mesh):
    """(the static arguments of `_generate_core`, its host inputs on the bucketed grid)."""
    num_prompts = len(rows)
    dp = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
    prompt_bucket = max(bucket(num_prompts, minimum=1), dp)
    padded_rows = rows + [[pad_id]] * (prompt_bucket - num_prompts)
    tokens, mask = pad_rows(padded_rows, length=length_bucket(max(map(len, rows))), pad_id=pad_id, left=True)
    cache_len = length_bucket(max_new_tokens + len(forced_ending) + answer_allowance)
    # Padded to sizes that do not depend on their lengths, so a new ending or stop set never recompiles.
    forced = np.zeros(cache_len, np.int32)
    forced[:len(forced_ending)] = forced_ending
    stops = np.full(bucket(len(stop_tokens), minimum=8), -1, np.int32)
    stops[:len(stop_tokens)] = stop_tokens

    def grid(x, fill):  # [num_prompts * n] -> [prompt_bucket, n], dummy prompts get `fill`
        out = np.full((prompt_bucket, n_samples), fill, x.dtype)
        out[:num_prompts] = x.reshape(num_prompts, n_samples)
        return out

    inputs = dict(
        # Dummy prompts of the bucket get budget -1: they start finished and never run a forced phase.
        prompts=tokens, prompt_mask=mask, budgets=grid(budgets, -1), temperatures=grid(temps, 0.0),
        limits=np.array([max_new_tokens, len(forced_ending), answer_allowance], np.int32),
        top_p=np.float32(top_p), top_k=np.int32(top_k), stop_tokens=stops, forced_ending=forced, stop_text=stop_text)
    dtypes = {name: None if d is None else jnp.dtype(d) for name, d in (("cache_dtype", cache_dtype),
                                                                         ("compute_dtype", compute_dtype))}
    # XLA:CPU decodes faster over per-layer buffers; other backends keep the layer scan.
    platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform
    return dict(cfg=cfg, n_samples=n_samples, cache_len=cache_len, cpu_layout=platform == "cpu", **dtypes), inputs


_BATCHED = ("prompts", "prompt_mask", "budgets", "temperatures")


@partial(jax.jit, static_argnames=("cfg", "n_samples", "cache_len", "cpu_layout", "cache_dtype", "compute_dtype"))
def _generate_core(params, *, cfg: ModelConfig, n_samples: int, cache_len: int, cpu_layout: bool, cache_dtype,
                   compute_dtype, prompts, prompt_mask, budgets, temperatures, limits, top_p, top_k, stop_tokens,
                   forced_ending, rng, stop_text):
    """The compiled generation program; arrays are [prompts, n_samples, ...] on the bucketed grid."""
    compile_counts[(prompts.shape, n_samples, cache_len)] += 1
    if compute_dtype is not None:
        params = cast_params(params, compute_dtype)
    max_new, forced_len, allowance = limits[0], limits[1], limits[2]
    num_prompts = prompts.shape[0]
    logits, cache = prefill(params, cfg, prompts, prompt_mask, num_samples=n_samples,
                            max_new_tokens=cache_len, cache_dtype=cache_dtype)
    if cpu_layout:
        params, cache = cpu_decode_layout(params, cache)
    logits = jnp.broadcast_to(logits[:, None], (num_prompts, n_samples, logits.shape[-1]))
    prompt_len = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)[:, None]
    free_limit = jnp.minimum(budgets, max_new)
    grid = (num_prompts, n_samples)
    # Greedy rows record log-probs at temperature 1: the model's own distribution.
    logprob_scale = 1.0 / jnp.where(temperatures > 0, temperatures, 1.0)[..., None]
    state = dict(
        step=jnp.int32(0), logits=logits, cache=cache,
        phase=jnp.where(budgets < 0, _DONE, jnp.where(free_limit > 0, _FREE, jnp.where(forced_len > 0, _FORCING, _DONE))
                        ).astype(jnp.int32),
        phase_count=jnp.zeros(grid, jnp.int32),  # tokens emitted in the current phase
        budget_tokens=jnp.zeros(grid, jnp.int32),
        lengths=jnp.zeros(grid, jnp.int32),
        stop_reason=jnp.where(budgets < max_new, StopReason.BUDGET, StopReason.MAX_LENGTH).astype(jnp.int32),
        tokens=jnp.zeros((*grid, cache_len), jnp.int32),
        logprobs=jnp.zeros((*grid, cache_len), jnp.float32),
        forced=jnp.zeros((*grid, cache_len), bool),
    )
    if stop_text is not None:
        state["tail"], state["armed"] = initial_state(stop_text, grid)

    def cond(s):
        return (s["step"] < cache_len) & jnp.any(s["phase"] != _DONE)

    def body(s):
        step, phase = s["step"], s["phase"]
        active = phase != _DONE
        sampled = draw_tokens(s["logits"], temperatures, top_p, top_k, jax.random.fold_in(rng, step))
        is_forced = phase == _FORCING
        token = jnp.where(is_forced, forced_ending[jnp.minimum(s["phase_count"], forced_ending.shape[0] - 1)], sampled)
        scaled = s["logits"] * logprob_scale
        token_logprob = (jnp.take_along_axis(scaled, token[..., None], axis=-1)[..., 0]
                         - jax.nn.logsumexp(scaled, axis=-1))

        def write(buffer, value):
            return jax.lax.dynamic_update_slice_in_dim(buffer, jnp.where(active, value, jnp.zeros((), buffer.dtype))[..., None].astype(buffer.dtype), step, axis=2)

        count = s["phase_count"] + active
        stop_token = jnp.any(token[..., None] == stop_tokens, axis=-1)
        hit_text = jnp.zeros_like(stop_token)
        extra = {}
        if stop_text is not None:  # forced tokens extend the text too (a forced "[Assistant]" arms the line stop)
            tail, armed, hit_text = advance(stop_text, s["tail"], s["armed"], token)
            extra = dict(tail=jnp.where(active[..., None], tail, s["tail"]), armed=jnp.where(active, armed, s["armed"]))
        hit_stop = (stop_token | hit_text) & (phase != _FORCING)
        free_over = (phase == _FREE) & (hit_stop | (count >= free_limit))
        forcing_over = (phase == _FORCING) & (count >= forced_len)
        answer_over = (phase == _ANSWER) & (hit_stop | (count >= allowance))
        after_free = jnp.where(hit_stop | (forced_len == 0), _DONE, _FORCING)
        after_forcing = jnp.where(allowance > 0, _ANSWER, _DONE)
        next_phase = jnp.where(free_over, after_free,
                               jnp.where(forcing_over, after_forcing, jnp.where(answer_over, _DONE, phase)))
        changed = next_phase != phase
        new = dict(
            step=step + 1, phase=next_phase.astype(jnp.int32), cache=s["cache"],
            phase_count=jnp.where(changed, 0, count),
            budget_tokens=s["budget_tokens"] + (phase == _FREE),
            lengths=s["lengths"] + active,
            stop_reason=jnp.where((phase == _FREE) & hit_stop,
                                  jnp.where(stop_token, StopReason.STOP_TOKEN, StopReason.STOP_STRING), s["stop_reason"]),
            tokens=write(s["tokens"], token), logprobs=write(s["logprobs"], token_logprob),
            forced=write(s["forced"], is_forced), **extra,
        )
        new["logits"], new["cache"] = decode_step(params, cfg, token, prompt_len + step, s["cache"], step)
        return new

    final = jax.lax.while_loop(cond, body, state)
    return {k: final[k] for k in ("tokens", "lengths", "budget_tokens", "logprobs", "forced", "stop_reason")}


# ----------------------------------------------------------------------------------------------
# Input checks: every one runs before anything is compiled.


def _prompt_rows(prompts, prompt_lengths) -> list[list[int]]:
    if isinstance(prompts, (list, tuple)):
        rows = [list(map(int, p)) for p in prompts]
    else:
        array = np.asarray(prompts)
        if array.ndim != 2:
            raise ValueError(f"prompts must be int[num_prompts, prompt_len] or a list of token lists; got shape {array.shape}")
        lengths = np.full(len(array), array.shape[1]) if prompt_lengths is None else np.asarray(prompt_lengths)
        if lengths.shape != (len(array),) or (lengths > array.shape[1]).any():
            raise ValueError(f"prompt_lengths must be int[{len(array)}] with values <= {array.shape[1]}")
        rows = [row[:n].tolist() for row, n in zip(array, lengths)]
    if not rows:
        raise ValueError("no prompts given")
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty: every prompt needs at least one token (e.g. BOS)")
    return rows


def _validate(cfg, rows, max_new_tokens, n_samples, top_p, top_k, answer_allowance, extra, max_prompt_len):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {top_k}")
    if answer_allowance < 0:
        raise ValueError(f"answer_allowance must be >= 0, got {answer_allowance}")
    limit = cfg.max_position_embeddings - max_new_tokens - extra if max_prompt_len is None else max_prompt_len
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    if len(rows[longest]) > limit:
        raise ValueError(
            f"prompt {longest} has {len(rows[longest])} tokens, longer than the cache allows ({limit}: "
            f"max_position_embeddings {cfg.max_position_embeddings} minus the generated tokens); "
            "shorten the prompt or lower max_new_tokens")
    out_of_vocab = [t for r in rows for t in r if not 0 <= t < cfg.vocab_size]
    if out_of_vocab:
        raise ValueError(f"prompt token id {out_of_vocab[0]} is outside the vocabulary [0, {cfg.vocab_size})")


def _per_row(value, num_prompts: int, n_samples: int, dtype, name: str, *, per: str) -> np.ndarray:
    """Broadcasts a scalar, a per-row value [num_prompts * n_samples], or (for `per` "prompt" or
    "sample") a value per prompt [num_prompts] or per sample [n_samples] to [num_prompts * n_samples]."""
    array = np.asarray(value, dtype)
    rows = num_prompts * n_samples
    if array.ndim == 0:
        return np.full(rows, array, dtype)
    if array.shape == (rows,):
        return array
    if per == "prompt" and array.shape == (num_prompts,):
        return np.repeat(array, n_samples)
    if per == "sample" and array.shape == (n_samples,):
        return np.tile(array, num_prompts)
    size = num_prompts if per == "prompt" else n_samples
    raise ValueError(f"{name} has shape {array.shape}; expected a scalar, [{size}] (one per {per}) "
                     f"or [{rows}] (one per row)")
