"""Expert iteration for RaM (VOC filter) and STaR (correctness filter), PAPERS.md section 1.

One iteration = sample -> score -> select -> train, each a function a researcher can call alone:

    rollouts = sample_rollouts(policy, questions, config, rng)        # K chains per question (+ hints)
    groups = score_rollouts(policy, questions, rollouts, config)      # VOC rewards, direct candidate
    rows = select_rows(groups, config)                                # RaM's three-step filter / STaR
    sequences = training_sequences(policy, questions, rows)           # x + sampled z + y, as tokens

`run_expert_iteration` strings them together over a growing question pool, checkpointing each
iteration's policy so an interrupted run resumes where it stopped. Chains stay tokens throughout:
the thought a row is scored and trained on is the one the sampler drew (`metajax.algorithms.chains`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from metajax.algorithms.chains import sampled_thought, score_chains, training_row
from metajax.data.example import Example
from metajax.data.graders import grade_example, split_ram_completion
from metajax.files import write_jsonl_atomic
from metajax.progress import phase
from metajax.rewards.advantages import group_advantages, ram_keep_mask, star_keep_mask
from metajax.rewards.voc import voc_reward
from metajax.sampling.policy import Policy
from metajax.sampling.rollouts import Completion, complete
from metajax.train.checkpoint import Checkpointer
from metajax.train.optim import OptimizerConfig
from metajax.train.sft import train_sft


@dataclasses.dataclass(frozen=True)
class ExpertIterationConfig:
    """Expert iteration settings; defaults reproduce the RaM code (PAPERS.md section 1).

    Attributes:
      filter: "ram" (VOC reward, advantage >= 0) or "star" (keep correct chains).
      iterations: expert-iteration rounds.
      questions_per_iteration: T, new training questions added to the pool each round (RaM: 512).
      samples_per_question: K rollouts per question, the first greedy (RaM: 3).
      temperature, top_p: sampling of the other K - 1 rollouts (RaM: 0.5, 0.9).
      rollout_prompting: "policy": a rollout continues the question and the policy decides whether
        to think (RaM, whose few-shot CoT exemplars lead it to: `data.fewshot`); "cot": every
        rollout opens a thought (`<thought>` forced), for a model that cannot take few-shot
        prompts (the toy model's pretraining context is 128 tokens). Either way the direct
        candidate offers the empty thought, and training rows never contain the prompt's help.
      max_new_tokens: rollout length cap (RaM: 512).
      rationalize: regenerate wrong rollouts with "(The correct answer is y)" appended (RaM: on).
      gamma, cost, eps: VOC reward: U = log(p(y|x,z)+eps) - log(p(y|x)+eps), C = gamma*log(1+l(z))
        ("log") or gamma*l(z) ("linear") (RaM: 0.1, log, 1e-4).
      reset_to_base: train each round from the base model, not the last policy (RaM: on).
      epochs, batch_size: SFT over the filtered rows (RaM: 1 epoch, batch 16).
      gradient_accumulation_steps: micro-batches per SFT update (less activation memory, the same
        gradient); must divide batch_size.
      rollout_batch_size, score_batch_size: prompts per sampler call / sequences per scoring call.
    """

    filter: Literal["ram", "star"] = "ram"
    iterations: int = 3
    questions_per_iteration: int = 512
    samples_per_question: int = 3
    temperature: float = 0.5
    top_p: float = 0.9
    rollout_prompting: Literal["policy", "cot"] = "policy"
    max_new_tokens: int = 512
    rationalize: bool = True
    gamma: float = 0.1
    cost: Literal["log", "linear"] = "log"
    eps: float = 1e-4
    reset_to_base: bool = True
    epochs: int = 1
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    rollout_batch_size: int = 64
    score_batch_size: int = 64

    def __post_init__(self):
        for name in ("iterations", "questions_per_iteration", "samples_per_question", "max_new_tokens",
                     "epochs", "batch_size", "gradient_accumulation_steps", "rollout_batch_size", "score_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"expert_iteration.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(f"expert_iteration.gradient_accumulation_steps={self.gradient_accumulation_steps} must "
                             f"divide batch_size={self.batch_size}")
        if self.gamma < 0 or self.eps <= 0:
            raise ValueError("expert_iteration.gamma must be >= 0 and eps > 0")
        if not 0 < self.top_p <= 1 or self.temperature < 0:
            raise ValueError("expert_iteration.top_p must be in (0, 1] and temperature >= 0")
        if self.rollout_prompting not in ("policy", "cot"):
            raise ValueError(f"expert_iteration.rollout_prompting must be 'policy' or 'cot', got "
                             f"{self.rollout_prompting!r}")


@dataclasses.dataclass(frozen=True)
class Rollout:
    """One candidate chain for question `question_index`.

    thought_ids: the sampled thought block's tokens (`metajax.algorithms.chains.sampled_thought`):
      () for a direct answer, None for a block that never closes (unscoreable: never trained on).
    num_tokens: tokens the completion generated. thought, answer: their text, for logs and graders.
    correct: its answer matches the gold answer. rationalized: produced with the answer hint.
    direct: the empty-thought candidate RaM adds to every group (the p(y|x) baseline).
    """

    question_index: int
    thought_ids: tuple[int, ...] | None
    num_tokens: int
    thought: str | None
    answer: str | None
    correct: bool
    rationalized: bool = False
    direct: bool = False


@dataclasses.dataclass(frozen=True)
class ScoredGroups:
    """Every question's candidates with their rewards, on a [questions, K + 1] grid.

    rewards, correct, valid: float32/bool[questions, K + 1]; the last column is the direct candidate.
    chain_tokens: int32[questions, K + 1], l(z) of each thought block.
    """

    rollouts: list[list[Rollout]]
    rewards: np.ndarray
    correct: np.ndarray
    valid: np.ndarray
    chain_tokens: np.ndarray


def sample_rollouts(policy: Policy, questions: Sequence[Example], config: ExpertIterationConfig, rng: jax.Array, *,
                    fewshot: Sequence[Example] = (), mesh=None) -> list[list[Rollout]]:
    """K rollouts per question (the first greedy, the rest tempered), wrong ones rationalised."""
    prompts = [policy.prompt_ids(q, fewshot) for q in questions]
    opening = policy.opening(config.rollout_prompting)
    k = config.samples_per_question
    temperatures = np.full(k, config.temperature, np.float32)
    temperatures[0] = 0.0
    completions = complete(policy, prompts, max_new_tokens=config.max_new_tokens, n_samples=k,
                           temperature=temperatures, top_p=config.top_p, rng=jax.random.fold_in(rng, 0),
                           batch_size=config.rollout_batch_size, opening=opening, mesh=mesh, desc="rollouts")
    groups = [[_rollout(policy, c, questions) for c in completions[i * k:(i + 1) * k]] for i in range(len(questions))]
    if not config.rationalize:
        return groups
    wrong = [(i, j) for i, group in enumerate(groups) for j, r in enumerate(group) if not r.correct]
    if wrong:
        hinted = [policy.prompt_ids(questions[i], fewshot, style="star_hint") for i, _ in wrong]
        retries = complete(policy, hinted, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                           top_p=config.top_p, rng=jax.random.fold_in(rng, 1), batch_size=config.rollout_batch_size,
                           opening=opening, mesh=mesh, desc="rationalisation")
        for (i, j), c in zip(wrong, retries):
            # The hint was in the prompt only: the row keeps the sampled tokens, under the plain question.
            retry = _rollout(policy, dataclasses.replace(c, prompt_index=i), questions)
            if retry.correct and retry.thought_ids is not None:
                groups[i][j] = dataclasses.replace(retry, rationalized=True)
    return groups


def score_rollouts(policy: Policy, questions: Sequence[Example], rollouts: list[list[Rollout]],
                   config: ExpertIterationConfig, *, fewshot: Sequence[Example] = ()) -> ScoredGroups:
    """VOC rewards of every candidate, the direct candidate appended to each group.

    log p(y | x, z) and log p(y | x) score the GOLD answer y (not the model's) after the sampled
    chain z and after no chain, with the policy itself as the reward model.
    """
    groups = [list(g) + [Rollout(i, (), 0, None, q.answer, correct=False, direct=True)]
              for i, (g, q) in enumerate(zip(rollouts, questions))]
    width = max(len(g) for g in groups)
    shape = (len(groups), width)
    valid = np.zeros(shape, bool)
    correct = np.zeros(shape, bool)
    where, chains = [], []
    for i, group in enumerate(groups):
        for j, r in enumerate(group):
            valid[i, j] = r.thought_ids is not None
            correct[i, j] = r.correct
            if valid[i, j]:
                where.append((i, j))
                chains.append((i, r.thought_ids, r.num_tokens))
    scores = score_chains(policy, questions, chains, fewshot=fewshot, batch_size=config.score_batch_size)
    voc = np.asarray(voc_reward(scores.logp_with_chain, scores.logp_direct, scores.chain_tokens, gamma=config.gamma,
                                cost=config.cost, eps=config.eps))
    rewards = np.zeros(shape, np.float32)
    chain_tokens = np.zeros(shape, np.int32)
    for n, (i, j) in enumerate(where):
        rewards[i, j], chain_tokens[i, j] = voc[n], scores.chain_tokens[n]
    return ScoredGroups(rollouts=groups, rewards=rewards, correct=correct, valid=valid, chain_tokens=chain_tokens)


def select_rows(groups: ScoredGroups, config: ExpertIterationConfig) -> list[Rollout]:
    """The training rows: RaM's three-step filter, or STaR's correctness filter.

    RaM keeps, in questions with at least one correct sampled chain, the candidates that are correct
    or have reward >= 0 and whose advantage over the group mean is >= 0. STaR keeps correct chains.
    """
    if config.filter == "ram":
        keep = np.asarray(ram_keep_mask(groups.rewards, groups.correct, groups.valid))
    else:
        keep = np.asarray(star_keep_mask(groups.correct, groups.valid))
    return [r for i, group in enumerate(groups.rollouts) for j, r in enumerate(group) if keep[i, j]]


def training_sequences(policy: Policy, questions: Sequence[Example], rows: Sequence[Rollout]
                       ) -> list[tuple[list[int], list[bool]]]:
    """(tokens, loss_mask) per kept row: x + z + y + EOS with the sampled thought tokens z, the loss
    on the thought and the answer, never on the question (`metajax.algorithms.chains.training_row`).
    The answer trained on is the gold one, the y its VOC reward scored."""
    return [training_row(policy, questions[r.question_index], r.thought_ids) for r in rows]


def group_statistics(groups: ScoredGroups, rows: Sequence[Rollout]) -> dict[str, float]:
    """What one iteration's rollouts looked like, for metrics.jsonl."""
    sampled = [r for g in groups.rollouts for r in g if not r.direct]
    advantages = np.asarray(group_advantages(groups.rewards, kind="mean", mask=groups.valid))
    return {
        "rollout_accuracy": float(np.mean([r.correct for r in sampled])) if sampled else 0.0,
        "rollout_thought_rate": float(np.mean([r.thought_ids != () for r in sampled])) if sampled else 0.0,
        "rollout_unclosed_rate": float(np.mean([r.thought_ids is None for r in sampled])) if sampled else 0.0,
        "rationalized": int(sum(r.rationalized for r in sampled)),
        "mean_reward": float(groups.rewards[groups.valid].mean()) if groups.valid.any() else 0.0,
        "mean_abs_advantage": float(np.abs(advantages[groups.valid]).mean()) if groups.valid.any() else 0.0,
        "kept_rows": len(rows),
        "kept_direct_rows": int(sum(r.thought_ids == () for r in rows)),
        "mean_kept_chain_tokens": float(np.mean([len(r.thought_ids) for r in rows])) if rows else 0.0,
    }


def save_rows(path: Path, policy: Policy, questions: Sequence[Example], rows: Sequence[Rollout]) -> None:
    """The filtered training set as JSONL, for inspection (written atomically)."""
    def record(row: Rollout) -> dict:
        question = questions[row.question_index]
        return {"id": question.id, "question": question.question, "thought": policy.decode(row.thought_ids),
                "thought_tokens": len(row.thought_ids), "answer": question.answer, "rationalized": row.rationalized,
                "direct_candidate": row.direct}

    write_jsonl_atomic(path, map(record, rows))


def run_expert_iteration(base: Policy, questions: Sequence[Example], config: ExpertIterationConfig,
                         optim: OptimizerConfig, out_dir: Path, *, rng: jax.Array, seed: int = 0, metrics=None,
                         fewshot: Sequence[Example] = (), mesh=None, remat: str = "none",
                         compute_dtype=None) -> Policy:
    """Expert iteration over a growing pool of `questions`; returns the final policy.

    Each iteration's policy is checkpointed (`out_dir/checkpoints`, step = iterations done): a rerun
    with the same arguments resumes after the last finished iteration and ends with the same params.
    """
    needed = config.iterations * config.questions_per_iteration
    if len(questions) < needed:
        raise ValueError(f"expert iteration needs {needed} training questions ({config.iterations} iterations x "
                         f"{config.questions_per_iteration}); only {len(questions)} were loaded")
    out_dir.mkdir(parents=True, exist_ok=True)
    policy = base
    with Checkpointer(out_dir / "checkpoints", max_to_keep=2) as checkpointer:
        done = checkpointer.latest_step() or 0
        if done:
            params, _ = checkpointer.restore(done, like=base.params)
            policy = base.with_params(params)
            print(f"[{config.filter}] resuming after iteration {done}")
        for iteration in range(done, config.iterations):
            started = time.time()
            pool = list(questions[:(iteration + 1) * config.questions_per_iteration])
            key = jax.random.fold_in(rng, iteration)
            label, step = config.filter, f"iteration {iteration + 1}/{config.iterations}"
            with phase(label, f"{step}: {config.samples_per_question} rollouts of {len(pool)} questions"):
                rollouts = sample_rollouts(policy, pool, config, key, fewshot=fewshot, mesh=mesh)
            with phase(label, f"{step}: scoring the chains (VOC reward)"):
                groups = score_rollouts(policy, pool, rollouts, config, fewshot=fewshot)
            rows = select_rows(groups, config)
            save_rows(out_dir / f"rows_iter{iteration + 1}.jsonl", policy, pool, rows)
            stats = group_statistics(groups, rows)
            if not rows:
                raise RuntimeError(f"[{config.filter}] iteration {iteration + 1} kept no training rows: no question "
                                   "had a correct rollout. Check the prompts, the grader and max_new_tokens.")
            start_params = base.params if config.reset_to_base else policy.params
            params, history = train_sft(
                start_params, base.cfg, training_sequences(policy, pool, rows), optim=optim,
                batch_size=config.batch_size, epochs=config.epochs, seed=seed + iteration, mesh=mesh, remat=remat,
                grad_accum=config.gradient_accumulation_steps, compute_dtype=compute_dtype, desc=f"{config.filter} sft {iteration + 1}")
            policy = policy.with_params(params)
            checkpointer.save(iteration + 1, params, metadata={"iteration": iteration + 1, **stats}, force=True)
            stats.update(sft_loss_first=history[0]["loss"], sft_loss_last=history[-1]["loss"],
                         seconds=time.time() - started, pool=len(pool))
            print(f"[{config.filter}] iteration {iteration + 1}/{config.iterations}: " +
                  ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
            if metrics is not None:
                metrics.write(iteration + 1, stats, stage=f"{config.filter}/iteration")
    return policy


def _rollout(policy: Policy, completion: Completion, questions: Sequence[Example]) -> Rollout:
    question = questions[completion.prompt_index]
    thought, answer = split_ram_completion(completion.text)
    correct = answer is not None and grade_example(completion.text, question)
    return Rollout(completion.prompt_index, sampled_thought(policy, completion.ids), completion.num_tokens,
                   thought or None, answer, correct)
