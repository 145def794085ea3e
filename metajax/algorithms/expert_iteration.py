"""Expert iteration for RaM (VOC filter) and STaR (correctness filter), PAPERS.md section 1.

One iteration = sample -> score -> select -> train, each a function a researcher can call alone:

    rollouts = sample_rollouts(policy, questions, config, rng)        # K chains per question (+ hints)
    groups = score_rollouts(policy, questions, rollouts, config)      # VOC rewards, direct candidate
    rows = select_rows(groups, config)                                # RaM's three-step filter / STaR
    params = train_on_rows(base, rows, optim, config)                 # SFT from the base model

`run_expert_iteration` strings them together over a growing question pool, checkpointing each
iteration's policy so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from metajax.algorithms.policy import Completion, Policy, complete
from metajax.data.example import Example
from metajax.data.graders import grade_example, split_ram_completion
from metajax.data.prompts import PromptConfig, encode_prompt, encode_ram, ram_scoring_pair
from metajax.files import write_jsonl_atomic
from metajax.rewards.advantages import group_advantages, ram_keep_mask, star_keep_mask
from metajax.rewards.logprobs import score_sequences
from metajax.rewards.voc import voc_reward


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
    rollout_batch_size: int = 64
    score_batch_size: int = 64

    def __post_init__(self):
        for name in ("iterations", "questions_per_iteration", "samples_per_question", "max_new_tokens",
                     "epochs", "batch_size", "rollout_batch_size", "score_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"expert_iteration.{name} must be >= 1, got {getattr(self, name)}")
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

    thought: the chain z (None: answered directly). answer: the model's own answer text.
    correct: its answer matches the gold answer. rationalized: produced with the answer hint.
    direct: the empty-thought candidate RaM adds to every group (the p(y|x) baseline).
    """

    question_index: int
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
    prompt_cfg = PromptConfig(style="ram")
    prompts = [encode_prompt(policy.tokenizer, prompt_cfg, q, fewshot) for q in questions]
    forced = policy.opening(config.rollout_prompting)
    k = config.samples_per_question
    temperatures = np.full(k, config.temperature, np.float32)
    temperatures[0] = 0.0
    completions = complete(policy, prompts, max_new_tokens=config.max_new_tokens, n_samples=k,
                           temperature=temperatures, top_p=config.top_p, rng=jax.random.fold_in(rng, 0),
                           batch_size=config.rollout_batch_size, forced_prefix=forced, mesh=mesh, desc="rollouts")
    groups = [[_rollout(c, questions) for c in completions[i * k:(i + 1) * k]] for i in range(len(questions))]
    if not config.rationalize:
        return groups
    wrong = [(i, j) for i, group in enumerate(groups) for j, r in enumerate(group) if not r.correct]
    if wrong:
        hint_cfg = PromptConfig(style="star_hint")
        hinted = [encode_prompt(policy.tokenizer, hint_cfg, questions[i], fewshot) for i, _ in wrong]
        retries = complete(policy, hinted, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                           top_p=config.top_p, rng=jax.random.fold_in(rng, 1), batch_size=config.rollout_batch_size,
                           forced_prefix=forced, mesh=mesh, desc="rationalisation")
        for (i, j), c in zip(wrong, retries):
            retry = _rollout(dataclasses.replace(c, prompt_index=i), questions)
            if retry.correct:
                groups[i][j] = dataclasses.replace(retry, rationalized=True)
    return groups


def score_rollouts(policy: Policy, questions: Sequence[Example], rollouts: list[list[Rollout]],
                   config: ExpertIterationConfig, *, fewshot: Sequence[Example] = ()) -> ScoredGroups:
    """VOC rewards of every candidate, the direct candidate appended to each group.

    log p(y | x, z) and log p(y | x) score the GOLD answer y (not the model's) after the chain z and
    after no chain, with the policy itself as the reward model.
    """
    groups = [list(g) + [Rollout(i, None, q.answer, correct=False, direct=True)]
              for i, (g, q) in enumerate(zip(rollouts, questions))]
    width = max(len(g) for g in groups)
    shape = (len(groups), width)
    valid = np.zeros(shape, bool)
    correct = np.zeros(shape, bool)
    chain_tokens = np.zeros(shape, np.int32)
    sequences, where = [], []
    for i, group in enumerate(groups):
        for j, r in enumerate(group):
            valid[i, j] = r.direct or r.thought is not None or r.answer is not None
            correct[i, j] = r.correct
            if r.direct or not r.thought:
                continue  # an empty chain has U = 0 and C = 0: nothing to score
            with_chain, direct = ram_scoring_pair(policy.tokenizer, questions[i], r.thought, questions[i].answer,
                                                  fewshot=fewshot)
            # The pair shares its prompt and answer tokens (ram_scoring_pair checks it): the
            # difference in length is the thought block, l(z).
            chain_tokens[i, j] = len(with_chain.tokens) - len(direct.tokens)
            sequences += [(with_chain.tokens, with_chain.target_mask), (direct.tokens, direct.target_mask)]
            where.append((i, j))
    logp = (score_sequences(policy.params, policy.cfg, sequences, pad_id=policy.pad_id,
                            batch_size=config.score_batch_size) if sequences else np.zeros(0, np.float32))
    logp_chain = np.zeros(shape, np.float32)
    logp_direct = np.zeros(shape, np.float32)
    for n, (i, j) in enumerate(where):
        logp_chain[i, j], logp_direct[i, j] = logp[2 * n], logp[2 * n + 1]
    rewards = np.asarray(voc_reward(logp_chain, logp_direct, chain_tokens, gamma=config.gamma, cost=config.cost,
                                    eps=config.eps))
    return ScoredGroups(rollouts=groups, rewards=np.where(valid, rewards, 0.0).astype(np.float32),
                        correct=correct, valid=valid, chain_tokens=chain_tokens)


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
    """(tokens, loss_mask) per kept row: x + z + y with the loss on the thought and the answer (and
    the EOS that ends it), never on the question. The answer trained on is the gold one."""
    eos = list(policy.stop_ids[:1])
    sequences = []
    for r in rows:
        encoded = encode_ram(policy.tokenizer, questions[r.question_index], r.thought, questions[r.question_index].answer)
        tokens = encoded.tokens + eos
        mask = [False] * encoded.prompt_len + [True] * (len(tokens) - encoded.prompt_len)
        sequences.append((tokens, mask))
    return sequences


def group_statistics(groups: ScoredGroups, rows: Sequence[Rollout]) -> dict[str, float]:
    """What one iteration's rollouts looked like, for metrics.jsonl."""
    sampled = [r for g in groups.rollouts for r in g if not r.direct]
    advantages = np.asarray(group_advantages(groups.rewards, kind="mean", mask=groups.valid))
    return {
        "rollout_accuracy": float(np.mean([r.correct for r in sampled])) if sampled else 0.0,
        "rollout_thought_rate": float(np.mean([r.thought is not None for r in sampled])) if sampled else 0.0,
        "rationalized": int(sum(r.rationalized for r in sampled)),
        "mean_reward": float(groups.rewards[groups.valid].mean()) if groups.valid.any() else 0.0,
        "mean_abs_advantage": float(np.abs(advantages[groups.valid]).mean()) if groups.valid.any() else 0.0,
        "kept_rows": len(rows),
        "kept_direct_rows": int(sum(r.thought is None for r in rows)),
        "mean_kept_chain_tokens": float(np.mean([_kept_tokens(groups, r) for r in rows])) if rows else 0.0,
    }


def save_rows(path: Path, questions: Sequence[Example], rows: Sequence[Rollout]) -> None:
    """The filtered training set as JSONL, for inspection (written atomically)."""
    def record(row: Rollout) -> dict:
        question = questions[row.question_index]
        return {"id": question.id, "question": question.question, "thought": row.thought,
                "answer": question.answer, "rationalized": row.rationalized, "direct_candidate": row.direct}

    write_jsonl_atomic(path, map(record, rows))


def _rollout(completion: Completion, questions: Sequence[Example]) -> Rollout:
    question = questions[completion.prompt_index]
    thought, answer = split_ram_completion(completion.text)
    correct = answer is not None and grade_example(completion.text, question)
    return Rollout(completion.prompt_index, thought or None, answer, correct)


def _kept_tokens(groups: ScoredGroups, row: Rollout) -> int:
    group = groups.rollouts[row.question_index]
    return int(groups.chain_tokens[row.question_index, group.index(row)])
