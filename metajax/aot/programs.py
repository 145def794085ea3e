"""The compiled programs of a configured run, built from abstract shapes (no weights, no data).

A run's task decides which programs it compiles: expert iteration (RaM, STaR) samples rollouts,
scores chains and takes SFT steps; GRPO samples groups and takes policy-gradient steps; ROI
adds MFT's sampling and SFT before RARL; evaluation only samples. Each `Program` lowers the same
jitted function with the same shardings, static settings and bucketed shapes the run itself uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from metajax.aot.estimate import Dims
from metajax.batching import bucket, length_bucket
from metajax.models.config import ModelConfig
from metajax.models.logprobs import shared_prefix_logprobs
from metajax.models.sharding import batch_sharding
from metajax.models.transformer import abstract_params
from metajax.pipelines import DTYPES
from metajax.sampling.sampler import lower_generate
from metajax.train.losses import PolicyGradientLoss, SFTLoss
from metajax.train.optim import make_optimizer
from metajax.train.state import abstract_train_state
from metajax.train.step import make_train_step

# Answer tokens scored after a chain (VOC's log p(y | x, z)) and appended to an SFT row.
ANSWER_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program of the run.

    name: e.g. "sft_step"; what: its shapes in words; dims: its shapes for `metajax.aot.estimate`;
    knobs: the config keys that trade its memory without changing the algorithm: "grad_accum"
      (micro-batches of a train step), "batch" (prompts or sequences per sampling or scoring call);
    lower: builds the `jax.stages.Lowered` (call `.compile()` on it).
    """

    name: str
    what: str
    dims: Dims
    knobs: dict[str, str]
    lower: Callable[[], jax.stages.Lowered]


def run_programs(config, cfg: ModelConfig, mesh, *, prompt_len: int) -> list[Program]:
    """The programs `config.task` compiles, on `mesh` (built from the target's devices)."""
    model = config.model
    param_bytes, compute_bytes = (jnp.dtype(DTYPES[d]).itemsize for d in (model.dtype, model.compute_dtype))
    common = dict(cfg=cfg, mesh=mesh, param_dtype=DTYPES[model.dtype], compute_dtype=DTYPES[model.compute_dtype],
                  param_bytes=param_bytes, compute_bytes=compute_bytes)
    train = dict(common, remat=model.remat)
    ei, grpo, mft = config.expert_iteration, config.grpo, config.mft
    task = config.task
    if task in ("ram", "star"):
        seq = bucket(prompt_len + ei.max_new_tokens + ANSWER_TOKENS)
        return [
            _generate("rollouts", num_prompts=ei.rollout_batch_size, prompt_len=prompt_len, n=ei.samples_per_question,
                      new=ei.max_new_tokens, knobs={"batch": "expert_iteration.rollout_batch_size"}, **common),
            _score("scoring", batch=ei.score_batch_size, prompt_len=prompt_len, chains=ei.samples_per_question,
                   chain_len=ei.max_new_tokens, knobs={"batch": "expert_iteration.score_batch_size"}, **common),
            _train("sft_step", SFTLoss(), make_optimizer(config.train), batch=ei.batch_size, seq=seq,
                   grad_accum=ei.gradient_accumulation_steps,
                   knobs={"grad_accum": "expert_iteration.gradient_accumulation_steps"}, **train),
        ]
    if task in ("grpo", "roi"):
        prefix = "rarl_" if task == "roi" else ""
        group = grpo.prompts_per_step * grpo.num_generations
        pg = PolicyGradientLoss(kind=grpo.loss_type, clip_eps=grpo.epsilon, max_tokens=grpo.max_completion_length,
                                kl_beta=grpo.beta)
        programs = []
        if task == "roi":
            budget = mft.stage1_budget or max(config.roi.budgets)
            programs += [
                _generate("mft_rollouts", num_prompts=mft.sample_batch_size, prompt_len=prompt_len,
                          n=mft.samples_per_question, new=budget, knobs={"batch": "mft.sample_batch_size"}, **common),
                _train("mft_sft_step", SFTLoss(), make_optimizer(config.train), batch=mft.batch_size,
                       seq=bucket(prompt_len + budget), grad_accum=mft.gradient_accumulation_steps,
                       knobs={"grad_accum": "mft.gradient_accumulation_steps"}, **train)]
        programs += [
            _generate(f"{prefix}rollouts", num_prompts=grpo.prompts_per_step, prompt_len=prompt_len,
                      n=grpo.num_generations, new=grpo.max_completion_length,
                      knobs={}, **common),  # its batch is the algorithm's: prompts per step
            _train(f"{prefix}policy_gradient_step", pg, make_optimizer(grpo.optimizer(config.train)),
                   batch=grpo.mini_batch_size or group, seq=bucket(prompt_len + grpo.max_completion_length),
                   completion=grpo.max_completion_length, grad_accum=grpo.gradient_accumulation_steps,
                   knobs={"grad_accum": "grpo.gradient_accumulation_steps"}, **train)]
        return programs
    if task == "eval":
        return [_generate("eval_generate", num_prompts=config.eval.batch_size, prompt_len=prompt_len, n=1,
                          new=config.eval.max_new_tokens, knobs={"batch": "eval.batch_size"}, **common)]
    raise ValueError(f"task {task!r} has no compiled programs to report; metajax.aot covers ram, star, grpo, roi "
                     "and eval")


def _replicated(mesh, shape=(), dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec()))


def _rows(mesh, batch, seq, dtype):
    return jax.ShapeDtypeStruct((batch, seq), dtype, sharding=batch_sharding(mesh, (batch, seq)))


def _generate(name, *, cfg, mesh, param_dtype, compute_dtype, param_bytes, compute_bytes, num_prompts, prompt_len, n,
              new, knobs):
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    prompts, cache_len = max(bucket(num_prompts, minimum=1), dp), length_bucket(new)  # as `generate` buckets them
    dims = Dims("generate", batch=prompts, seq=length_bucket(prompt_len), samples=n, new_tokens=cache_len,
                param_bytes=param_bytes, compute_bytes=compute_bytes)

    def lower():
        params = abstract_params(cfg, dtype=param_dtype, mesh=mesh)
        # As the run's policy samples: in the compute dtype when it differs from the params'.
        return lower_generate(params, cfg, num_prompts=num_prompts, prompt_len=prompt_len, max_new_tokens=new,
                              n_samples=n, mesh=mesh, compute_dtype=None if compute_dtype == param_dtype else compute_dtype)

    what = f"{num_prompts} prompts x {n} samples, prompt {prompt_len} tokens, {new} new tokens (cache {cache_len})"
    return Program(name, what, dims, knobs, lower)


def _score(name, *, cfg, mesh, param_dtype, compute_dtype, param_bytes, compute_bytes, batch, prompt_len, chains,
           chain_len, knobs):
    # As `metajax.algorithms.chains.score_chains` calls it: a question's prompt once, then its direct
    # answer and its chains, as many questions as fit `batch` continuations.
    width = bucket(chains + 1, minimum=1)
    prompts = bucket(max(1, batch // width), minimum=1)
    prompt_tokens, length = length_bucket(prompt_len), length_bucket(chain_len + ANSWER_TOKENS)
    max_targets = bucket(ANSWER_TOKENS, minimum=8)
    dims = Dims("score_shared", batch=prompts, seq=prompt_tokens, samples=width, new_tokens=max_targets,
                continuation=length, param_bytes=param_bytes, compute_bytes=param_bytes)

    def lower():
        params = abstract_params(cfg, dtype=param_dtype, mesh=mesh)
        prompt, prompt_mask = _rows(mesh, prompts, prompt_tokens, jnp.int32), _rows(mesh, prompts, prompt_tokens, bool)
        shape = (prompts, width, length)
        tokens, mask = (jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, shape))
                        for dtype in (jnp.int32, bool))
        with jax.set_mesh(mesh):
            return shared_prefix_logprobs.lower(params, cfg, prompt, prompt_mask, tokens, mask, mask,
                                                max_targets=max_targets)

    what = (f"{prompts} prompts of {prompt_tokens} tokens x {width} continuations (the direct answer and {chains} "
            f"chains) of {length} tokens, {ANSWER_TOKENS} answer tokens scored")
    return Program(name, what, dims, knobs, lower)


def _train(name, loss, optimizer, *, cfg, mesh, param_dtype, param_bytes, compute_bytes, compute_dtype, remat, batch,
           seq, grad_accum, knobs, completion: int | None = None):
    """`completion`: the policy gradient's sampled columns, the last of the `seq` (`policy_gradient_batch`);
    None: all `seq` of them."""
    dims = Dims("train", batch=batch, seq=seq, remat=remat, grad_accum=grad_accum, param_bytes=param_bytes,
                compute_bytes=compute_bytes)

    def lower():
        step = make_train_step(cfg, optimizer, loss, compute_dtype=compute_dtype, remat=remat, mesh=mesh,
                               grad_accum=grad_accum)
        state = abstract_train_state(abstract_params(cfg, dtype=param_dtype, mesh=mesh), optimizer)
        rows = {"tokens": _rows(mesh, batch, seq, jnp.int32), "attention_mask": _rows(mesh, batch, seq, bool)}
        if isinstance(loss, SFTLoss):
            rows["loss_mask"] = _rows(mesh, batch, seq, bool)
        else:
            width = seq if completion is None else completion
            per_row = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=batch_sharding(mesh, (batch,)))
            rows.update(sampled=_rows(mesh, batch, width, bool), logprobs=_rows(mesh, batch, width, jnp.float32),
                        temperature=per_row, advantages=per_row)
            if loss.kl_beta > 0:
                rows["ref_logprobs"] = _rows(mesh, batch, width, jnp.float32)
        return step.lower(state, rows, _replicated(mesh))

    what = f"batch {batch} x seq {seq}, remat {remat}, grad_accum {grad_accum}"
    return Program(name, what, dims, knobs, lower)
