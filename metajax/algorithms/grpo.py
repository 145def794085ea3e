"""Group-relative policy gradients: GRPO and Dr. GRPO (PAPERS.md section 3), on token-level rollouts.

Each step:
  1. draws `prompts_per_step` questions (a seeded order, reshuffled every pass over the data);
  2. samples `num_generations` completions of each in one compiled call, the prompt's keys and
     values shared by its group (`metajax.sampling.rollout`);
  3. scores them (`metajax.algorithms.completion_rewards`: correctness, RaM's VOC, a token cost,
     any TRL-signature function, or a weighted sum);
  4. turns rewards into group advantages (`grpo`: standardised; `dr_grpo`: centred only);
  5. runs `num_iterations` epochs of clipped updates over mini-batches, the ratio taken against
     the log-probs the sampler stored with the rollout (`metajax.train.PolicyGradientLoss` in the
     shared `make_train_step`), with an optional k3 KL to the frozen base (`beta`).
Tokens go from the sampler to the gradient untouched; text is decoded only for the graders.
Orbax checkpoints every `save_steps` hold the whole `TrainState` (params, optimizer state, step,
RNG) and the data position, so a rerun in the same directory resumes and ends bitwise equal to an
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from metajax.algorithms.completion_rewards import RewardTerm, reward_columns, total_reward
from metajax.data.example import Example
from metajax.host import to_host
from metajax.models.logprobs import token_logprobs
from metajax.progress import bar as progress_bar
from metajax.rewards.advantages import group_advantages
from metajax.sampling.policy import Policy
from metajax.sampling.rollouts import Rollouts, completions, rollout
from metajax.train.checkpoint import Checkpointer
from metajax.train.losses import PolicyGradientLoss
from metajax.train.optim import OptimizerConfig, make_optimizer, make_schedule
from metajax.train.state import init_train_state
from metajax.train.step import check_finite, make_train_step


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO / Dr. GRPO settings, under the names TRL and Tunix use. The defaults are Dr. GRPO's recipe
    (arXiv 2503.20783, understand-r1-zero; PAPERS.md section 3) where it has one.

    Attributes:
      max_steps: rollout-and-update steps.
      prompts_per_step: questions per step (TRL's per_device_train_batch_size x devices /
        num_generations: TRL counts completions).
      questions: `task: grpo` trains on the first this many training questions (None: all), each
        pass over them in a new order. With prompts_per_step x max_steps / 10 of them, the first and
        last tenth of the run sit the same questions, so their mean rewards compare the policy rather
        than the draw. (RARL's exams are `roi.train_exams`.)
      num_generations: G, completions per question (Dr. GRPO: 8).
      num_iterations: mu, optimisation epochs over each step's rollouts (Dr. GRPO: 1; with more, the
        ratio moves off 1 and the clip acts).
      mini_batch_size: completions per optimizer update (None: the whole step's batch, one update
        per epoch); must divide prompts_per_step * num_generations.
      gradient_accumulation_steps: micro-batches per update (less memory, same gradient).
      loss_type: "dr_grpo" (advantage R - mean(R), token sum over a constant; Dr. GRPO) or "grpo"
        (advantage standardised by the group's std, each response's tokens averaged; GRPO).
      epsilon: the PPO clip range (Dr. GRPO: 0.2).
      beta: weight of the k3 KL to the frozen starting policy (Dr. GRPO: 0, no reference pass).
      max_completion_length: new tokens per completion, and Dr. GRPO's constant normaliser
        (understand-r1-zero's MAX_TOKENS: 3000 on MATH).
      temperature, top_p, top_k: sampling (Dr. GRPO: 1, 1, none). The stored log-probs are the
        tempered, unfiltered distribution's (`metajax.sampling.generate`).
      rollout_prompting: "policy" (the model chooses; R1-Zero), "cot" or "direct" (a RaM-format
        opening is forced into every completion and counts as generated, with no gradient).
      rewards: the terms of the reward (`RewardTerm`); R1-Zero: correctness alone.
      recompute_logprobs: recompute the behaviour log-probs with a teacher-forced forward of the
        current params before the first epoch, instead of the sampler's (use when sampling ran in
        another dtype or cache precision than training).
      save_steps: checkpoint every this many steps (and after the last).
      score_batch_size: sequences per scoring call of a VOC reward.
      learning_rate, lr_scheduler_type: the optimizer's peak rate and schedule for this loop (Dr.
        GRPO: 1e-6, "constant"); None takes `train.learning_rate` / `train.schedule`, the rest of the
        optimizer always comes from `train`. A run that trains RaM's SFT and GRPO side by side gives
        each its own rate this way.
    """

    max_steps: int = 100
    prompts_per_step: int = 16
    questions: int | None = None
    num_generations: int = 8
    num_iterations: int = 1
    mini_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    loss_type: Literal["dr_grpo", "grpo"] = "dr_grpo"
    epsilon: float = 0.2
    beta: float = 0.0
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    rollout_prompting: Literal["policy", "cot", "direct"] = "policy"
    rewards: tuple[RewardTerm, ...] = (RewardTerm(),)
    recompute_logprobs: bool = False
    save_steps: int = 20
    score_batch_size: int = 64
    learning_rate: float | None = None
    lr_scheduler_type: Literal["linear", "constant", "cosine"] | None = None

    def __post_init__(self):
        for name in ("max_steps", "prompts_per_step", "num_generations", "num_iterations",
                     "gradient_accumulation_steps", "max_completion_length", "save_steps", "score_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")
        if self.questions is not None and self.questions < self.prompts_per_step:
            raise ValueError(f"grpo.questions={self.questions} must be at least prompts_per_step="
                             f"{self.prompts_per_step} (or null: the whole training split)")
        batch = self.prompts_per_step * self.num_generations
        mini = self.mini_batch_size or batch
        if mini < 1 or batch % mini or mini % self.gradient_accumulation_steps:
            raise ValueError(f"grpo.mini_batch_size={self.mini_batch_size} must divide prompts_per_step x "
                             f"num_generations = {batch}, and be a multiple of gradient_accumulation_steps="
                             f"{self.gradient_accumulation_steps}")
        if not 0 < self.top_p <= 1 or self.temperature <= 0 or self.top_k < 0:
            raise ValueError(f"grpo sampling needs temperature > 0, top_p in (0, 1] and top_k >= 0; got "
                             f"temperature {self.temperature}, top_p {self.top_p}, top_k {self.top_k}")
        if self.epsilon < 0 or self.beta < 0:
            raise ValueError(f"grpo.epsilon and grpo.beta must be >= 0; got {self.epsilon}, {self.beta}")
        if not self.rewards:
            raise ValueError("grpo.rewards needs at least one term, e.g. [{kind: correctness}]")
        if len({term.scorer for term in self.rewards if term.kind == "voc"}) > 1:
            raise ValueError("grpo.rewards: every voc term must use the same scorer")

    def optimizer(self, train: OptimizerConfig) -> OptimizerConfig:
        """`train` with this loop's learning rate and schedule."""
        return dataclasses.replace(train, learning_rate=train.learning_rate if self.learning_rate is None
                                   else self.learning_rate, schedule=self.lr_scheduler_type or train.schedule)

    @property
    def updates_per_step(self) -> int:
        return self.num_iterations * (self.prompts_per_step * self.num_generations) // (
            self.mini_batch_size or self.prompts_per_step * self.num_generations)


@dataclasses.dataclass(frozen=True)
class ScoredRollouts:
    """What a task makes of one step's rollouts.

    Attributes:
      reward: float32[B], one reward per completion (groups of `num_generations` consecutive rows).
      parts: each reward term's float32[B] values, by name (logged as `reward/<name>`).
      correct: bool[B] (or float[B]: the share right), for the logged accuracy.
      completion_tokens: int[B], tokens each completion spent.
      metrics: further per-step figures of the task (logged as they are).
    """

    reward: np.ndarray
    parts: dict[str, np.ndarray]
    correct: np.ndarray
    completion_tokens: np.ndarray
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


class GroupTask(Protocol):
    """What GRPO samples and how it scores it: one prompt per item (a question, a whole exam), with its
    own token budget, and a reward per completion."""

    opening: list[int]  # forced at the start of every completion (counts as generated, no gradient)
    answer_line_stop: bool  # end a text-format completion at its answer line (False for exams)

    def __len__(self) -> int: ...

    def prompt(self, index: int) -> list[int]: ...

    def budget(self, index: int) -> int: ...

    def score(self, policy: Policy, indices: Sequence[int], rows: Rollouts) -> ScoredRollouts: ...


class QuestionTask:
    """GRPO over single questions: the RaM-format prompt after the few-shot blocks, the configured
    opening, and `config.rewards` (`metajax.algorithms.completion_rewards`)."""

    answer_line_stop = True

    def __init__(self, base: Policy, questions: Sequence[Example], config: "GRPOConfig",
                 fewshot: Sequence[Example] = ()):
        if not questions:
            raise ValueError("GRPO needs training questions; none were loaded")
        self._base, self._questions, self._fewshot, self._config = base, questions, fewshot, config
        self._tokens: dict[int, list[int]] = {}
        self.opening = base.opening(config.rollout_prompting)

    def __len__(self) -> int:
        return len(self._questions)

    def prompt(self, index: int) -> list[int]:
        if index not in self._tokens:
            self._tokens[index] = self._base.prompt_ids(self._questions[index], self._fewshot)
        return self._tokens[index]

    def budget(self, index: int) -> int:
        return self._config.max_completion_length

    def score(self, policy: Policy, indices: Sequence[int], rows: Rollouts) -> ScoredRollouts:
        config = self._config
        done = completions(policy, rows)
        scorers = {term.scorer for term in config.rewards if term.kind == "voc"}
        scorer = None if not scorers else self._base if scorers == {"base"} else policy
        columns = reward_columns(policy, [self._questions[i] for i in indices], done, voc_scorer=scorer,
                                 fewshot=self._fewshot, score_batch_size=config.score_batch_size)
        prompts = [policy.decode(self.prompt(indices[c.prompt_index])) for c in done]
        reward, parts = total_reward(config.rewards, prompts, [c.text for c in done], columns)
        return ScoredRollouts(reward, parts, np.asarray(columns["correct"]), np.array([c.num_tokens for c in done]))


def run_grpo(base: Policy, task: GroupTask | Sequence[Example], config: GRPOConfig, optim: OptimizerConfig,
             out_dir: Path, *, seed: int = 0, metrics=None, fewshot: Sequence[Example] = (), mesh=None,
             remat: str = "none", compute_dtype=None, progress: bool = True, desc: str = "grpo") -> Policy:
    """Trains `base` with GRPO / Dr. GRPO on `task` (a `GroupTask`, or training questions, which
    become a `QuestionTask` with `fewshot`); returns the final policy.

    `optim` is the run's `train` section (`GRPOConfig.optimizer` applies the loop's own rate).
    Resumes from the latest checkpoint in `out_dir/checkpoints` (written by the same settings).
    Metrics of every step go to `metrics` under stage "<desc>/step".
    """
    if not hasattr(task, "score"):
        task = QuestionTask(base, task, config, fewshot)
    if not len(task):
        raise ValueError(f"{desc}: the task has no prompts to train on")
    out_dir.mkdir(parents=True, exist_ok=True)
    optim = config.optimizer(optim)
    optimizer = make_optimizer(optim)
    schedule = make_schedule(optim, config.max_steps * config.updates_per_step)
    loss = PolicyGradientLoss(kind=config.loss_type, clip_eps=config.epsilon, max_tokens=config.max_completion_length,
                              kl_beta=config.beta)
    step_fn = make_train_step(base.cfg, optimizer, loss, compute_dtype=compute_dtype, remat=remat, mesh=mesh,
                              grad_accum=config.gradient_accumulation_steps, skip_nonfinite=optim.skip_nonfinite)
    state = init_train_state(base.params, optimizer, jax.random.key(seed))
    order = _Order(len(task), seed)
    with Checkpointer(out_dir / "checkpoints", max_to_keep=2) as checkpointer:
        if checkpointer.latest_step() is not None:
            state, saved = checkpointer.restore(like=state)
            print(f"[{desc}] resuming after step {saved['step']} (data position {saved['data_position']})")
        first = int(state.step) // config.updates_per_step
        bar = progress_bar(total=config.max_steps, initial=first, desc=desc, disable=not progress)
        for step in range(first, config.max_steps):
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)
            times = [time.perf_counter()]
            policy = base.with_params(state.params)
            indices = order.indices(step, config.prompts_per_step)
            rows = rollout(policy, [task.prompt(i) for i in indices], max_new_tokens=config.max_completion_length,
                           budgets=[task.budget(i) for i in indices], n_samples=config.num_generations,
                           temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                           opening=task.opening, answer_line_stop=task.answer_line_stop,
                           rng=jax.random.fold_in(key, 0), mesh=mesh)
            to_host(rows.lengths)  # the sampler's time ends when its arrays exist
            times.append(time.perf_counter())

            scored = task.score(policy, indices, rows)
            advantages = group_advantages(scored.reward.reshape(len(indices), config.num_generations),
                                          kind=config.loss_type)
            batch = policy_gradient_batch(base, state.params, rows, np.asarray(advantages).reshape(-1), config)
            times.append(time.perf_counter())

            state, updates = _update(state, batch, step_fn, schedule, config, key)
            for update in updates:
                check_finite(update, stage=desc, step=step + 1, skip_nonfinite=optim.skip_nonfinite)
            times.append(time.perf_counter())

            record = _step_metrics(scored, rows, updates, times,
                                   trained_tokens=config.num_iterations * int(to_host(rows.attention_mask).sum()))
            if metrics is not None:
                metrics.write(step + 1, record, stage=f"{desc}/step")
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward_mean']:.3f}", acc=f"{record['accuracy']:.2f}",
                            tokens=f"{record['completion_tokens_mean']:.1f}")
            if (step + 1) % config.save_steps == 0 or step + 1 == config.max_steps:
                checkpointer.save(step + 1, state, force=True,
                                  metadata={"step": step + 1, "data_position": (step + 1) * config.prompts_per_step})
        bar.close()
    return base.with_params(state.params)


def _update(state, batch: dict, step_fn, schedule, config: GRPOConfig, key) -> tuple[object, list[dict]]:
    """`num_iterations` epochs of clipped updates over shuffled mini-batches of one step's rollouts;
    returns the new state and each update's metrics (host floats)."""
    size = len(batch["advantages"])
    mini = config.mini_batch_size or size
    metrics = []
    for epoch in range(config.num_iterations):
        order = jax.random.permutation(jax.random.fold_in(key, 1 + epoch), size)
        for start in range(0, size, mini):
            mini_batch = {k: v[order[start:start + mini]] for k, v in batch.items()}
            state, m = step_fn(state, mini_batch, schedule(int(state.step)))
            metrics.append(m)
    return state, [{k: float(v) for k, v in to_host(m).items()} for m in metrics]


class _Order:
    """A seeded order of `size` items, reshuffled every pass: step s takes positions
    s * P .. (s + 1) * P - 1 of that endless order."""

    def __init__(self, size: int, seed: int):
        self._size, self._seed = size, seed
        self._orders: dict[int, np.ndarray] = {}

    def indices(self, step: int, count: int) -> list[int]:
        out = []
        for position in range(step * count, (step + 1) * count):
            epoch = position // self._size
            if epoch not in self._orders:
                self._orders[epoch] = np.random.default_rng([self._seed, epoch]).permutation(self._size)
            out.append(int(self._orders[epoch][position % self._size]))
        return out


def policy_gradient_batch(base: Policy, params, rows: Rollouts, advantages: np.ndarray, config: GRPOConfig) -> dict:
    """The `PolicyGradientLoss` batch of one step's rollouts: device arrays, sharded as they were
    sampled, with the per-token arrays cut to the completion columns (from `rows.completion_start`),
    so that the loss runs the vocabulary projection there only. `params` (the policy being trained)
    recompute the behaviour log-probs only when `config.recompute_logprobs`; `base` is the KL
    reference when `config.beta` > 0."""
    start = rows.completion_start
    completion_len = rows.tokens.shape[1] - start
    batch = {"tokens": rows.tokens, "attention_mask": rows.attention_mask, "sampled": rows.sampled[:, start:],
             "logprobs": rows.logprobs[:, start:], "temperature": rows.temperature,
             "advantages": jnp.asarray(advantages, jnp.float32)}

    def teacher_forced(weights):
        logp, _ = token_logprobs(weights, base.cfg, rows.tokens, attention_mask=rows.attention_mask,
                                 temperature=rows.temperature, completion_len=completion_len)
        return logp

    if config.recompute_logprobs:
        batch["logprobs"] = jnp.where(batch["sampled"], teacher_forced(params), 0.0)
    if config.beta > 0:
        batch["ref_logprobs"] = teacher_forced(base.params)
    return batch


def _step_metrics(scored: ScoredRollouts, rows: Rollouts, updates, times, *, trained_tokens: int) -> dict[str, float]:
    """One step's metrics: the reward and its terms, the rollouts, the updates and where the time went
    (`times`: when the step started, and when sampling, scoring and updating ended)."""
    started, sampled, scored_at, updated = times
    lengths = np.asarray(scored.completion_tokens)
    generated = int(to_host(rows.lengths).sum())
    record = {"reward_mean": float(scored.reward.mean()), "reward_std": float(scored.reward.std()),
              "accuracy": float(np.mean(scored.correct)),
              "completion_tokens_mean": float(lengths.mean()), "completion_tokens_max": float(lengths.max())}
    record.update({f"reward/{name}": float(values.mean()) for name, values in scored.parts.items()})
    record.update(scored.metrics)
    for name in ("loss", "clip_fraction", "kl", "ratio_mean", "entropy", "grad_norm", "lr"):
        record[name] = float(np.mean([u[name] for u in updates]))
    record["nonfinite_updates"] = float(sum(u["nonfinite"] for u in updates))
    seconds = {"sample": sampled - started, "score": scored_at - sampled, "update": updated - scored_at}
    tokens = {"sample": generated, "score": generated, "update": trained_tokens}
    for phase in seconds:
        record[f"{phase}_seconds"] = seconds[phase]
        record[f"{phase}_tokens_per_s"] = tokens[phase] / max(seconds[phase], 1e-9)
    return record
