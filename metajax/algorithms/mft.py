"""Meta-cognitive fine-tuning (ROI-Reasoning's first stage, PAPERS.md section 2).

1. Rejection sampling: K solutions per training question from the base policy, each sat as an exam
   of one question, graded and token-counted (`metajax.envs.answers.read_exam`).
2. Labels: a question's level comes from its correct solutions' token counts (`label_rule`); with
   no correct solution the target is the skip (`Level-<skip>` and the skip answer).
3. Stage 1 fine-tunes on single questions: the labelled tag, then the sampled solution tokens.
   Stage 2 fine-tunes on whole exams under their shared budget, built from the sampled solutions:
   each question is answered at the level the plan picks for that budget (`stage2_plan`), or
   skipped where no answer pays or fits the budget left.
Both stages go through the shared train step (`metajax.train.train_sft`). The solution tokens are
the ones the sampler drew; only the tag in front of them is written from the label.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from metajax.data.example import Example
from metajax.data.prompts import question_block
from metajax.envs.answers import ExamOutcome
from metajax.envs.exam import Exam, oracle_value
from metajax.envs.sitting import ExamRules, exam_prompts, sit
from metajax.files import write_text_atomic
from metajax.progress import phase
from metajax.sampling.policy import Policy
from metajax.train import Checkpointer, OptimizerConfig, train_sft

LABEL_RULES = ("shortest", "median", "most_frequent", "surest")
STAGE2_PLANS = ("best", "expected", "in_order")


@dataclasses.dataclass(frozen=True)
class MFTConfig:
    """Meta-cognitive fine-tuning settings (the paper gives none of these numbers).

    Attributes:
      questions: training questions sampled for labels (the first ones of the training split).
      samples_per_question: K, solutions sampled per question.
      temperature: sampling temperature of the K solutions.
      label_rule: which correct solution sets the label and the target: "shortest" (the fewest
        tokens: the cheapest way to be right, and metajax's default), "median"
        (the median count, lower middle), "most_frequent" (the most common level, ties to the
        lower one, then its shortest solution), or "surest" (the level whose samples were right most
        often, smoothed as `Label.success`, ties to the lower one, then its shortest solution: a
        cheap level right once by luck does not beat a dearer one right every time; on the toy it
        scored higher than "shortest", README).
      stage1_budget: the budget stated in single-question prompts, and their generation cap (None:
        the largest budget of the run).
      stage2_exams: training exams of stage 2, spread over `stage2_budgets` and the run's orderings.
      stage2_budgets: the budgets stage-2 exams state and are planned under (None: the run's
        budgets). A wider spread than the test budgets gives more exams whose best plan changes
        with the stated budget: on the toy, six budgets taught the policy to read the budget's
        size, where the run's two taught it to tell those two apart (README).
      stage2_plan: how a stage-2 exam answers its labelled questions: "best" (the most questions
        that fit the budget, by the oracle's dynamic programme on the labelled costs), "expected"
        (each question at any level some sample was right at, with that level's shortest right
        solution: the highest expected score by the same programme, each level scoring its
        `Label.success`; so a question may be solved at a cheap, less sure level under a small budget
        and at a sure, dearer one under a large budget), or "in_order" (solve each question whose
        labelled cost fits what is left, in order).
      epochs: passes over each stage's rows. batch_size: rows per update.
      gradient_accumulation_steps: micro-batches per update (less activation memory, the same
        gradient); must divide batch_size.
      learning_rate: the stages' peak rate (None: `train.learning_rate`).
      sample_batch_size: exams per sampling call.
      save_steps: each stage checkpoints every this many steps (and after its last) under
        `out_dir/checkpoints/stage<n>`, so a rerun of a killed run resumes the stage there; the
        rejection sampling before the stages is redone, from the same seed, to the same labels.
    """

    questions: int = 1024
    samples_per_question: int = 4
    temperature: float = 1.0
    label_rule: Literal["shortest", "median", "most_frequent", "surest"] = "shortest"
    stage1_budget: int | None = None
    stage2_exams: int = 1024
    stage2_budgets: tuple[int, ...] | None = None
    stage2_plan: Literal["best", "expected", "in_order"] = "best"
    epochs: int = 1
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    sample_batch_size: int = 64
    save_steps: int = 50

    def __post_init__(self):
        for name in ("questions", "samples_per_question", "epochs", "batch_size", "gradient_accumulation_steps",
                     "sample_batch_size", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"mft.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(f"mft.gradient_accumulation_steps={self.gradient_accumulation_steps} must divide "
                             f"batch_size={self.batch_size}")
        if self.label_rule not in LABEL_RULES:
            raise ValueError(f"mft.label_rule {self.label_rule!r} is not one of {LABEL_RULES}")
        if self.stage2_plan not in STAGE2_PLANS:
            raise ValueError(f"mft.stage2_plan {self.stage2_plan!r} is not one of {STAGE2_PLANS}")
        if self.stage2_exams < 0 or (self.stage1_budget is not None and self.stage1_budget < 1):
            raise ValueError("mft.stage2_exams must be >= 0 and mft.stage1_budget >= 1 (or null)")
        if self.stage2_budgets is not None and (not self.stage2_budgets or min(self.stage2_budgets) < 1):
            raise ValueError(f"mft.stage2_budgets must be a non-empty list of budgets >= 1 (or null), got "
                             f"{self.stage2_budgets}")
        if self.temperature <= 0:
            raise ValueError(f"mft.temperature must be > 0 (rejection sampling needs variety), got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class Label:
    """One training question's target.

    Attributes:
      level: the labelled level; the skip level when no sampled solution was right.
      solution: the chosen solution's sampled token ids after its tag, stop token excluded; () for
        the skip.
      correct: how many of the K samples were right (within their level bounds); for one level's
        option (`level_options`), how many of that level.
      success: how often the samples that spent this level were right, smoothed as
        (right + 1) / (spent + 2) so that one lucky sample is not a certainty; 0 for the skip.
    """

    level: int
    solution: tuple[int, ...]
    correct: int
    success: float = 0.0


def _answered(sample: ExamOutcome) -> bool:
    """Whether a one-question sample spent a level: it announced one and did not skip. An untagged
    sample has no solution span (0 tokens, which reads as Level-0), so it spent none."""
    return not sample.skipped[0] and sample.predicted_level[0] >= 0


def _usable(samples: Sequence[ExamOutcome], rules: ExamRules) -> list[ExamOutcome]:
    """The right answered samples within the last level's bound."""
    return [o for o in samples if _answered(o) and o.correct[0] and o.actual_level[0] < rules.skip_level]


def _solution(sample: ExamOutcome, stop_ids: Sequence[int]) -> tuple[int, ...]:
    solution = list(sample.ids[sample.solution_start[0]:sample.segment_end[0]])
    while solution and solution[-1] in stop_ids:
        solution.pop()
    return tuple(solution)


def _success(samples: Sequence[ExamOutcome], level: int) -> float:
    spent = [o for o in samples if _answered(o) and o.actual_level[0] == level]
    return (sum(bool(o.correct[0]) for o in spent) + 1) / (len(spent) + 2)


def level_options(samples: Sequence[ExamOutcome], rules: ExamRules, stop_ids: Sequence[int]) -> list[Label]:
    """One question's ways to be right, one per level some sample was right at (lowest first): that
    level's shortest right solution and its smoothed success."""
    usable = sorted(_usable(samples, rules), key=lambda o: int(o.solution_tokens[0]))
    levels = sorted({int(o.actual_level[0]) for o in usable})
    return [Label(level, _solution(next(o for o in usable if o.actual_level[0] == level), stop_ids),
                  sum(int(o.actual_level[0]) == level for o in usable), _success(samples, level))
            for level in levels]


def label(samples: Sequence[ExamOutcome], rules: ExamRules, rule: str, stop_ids: Sequence[int]) -> Label:
    """The label of one question from its sampled one-question exams."""
    usable = _usable(samples, rules)
    if not usable:
        return Label(rules.skip_level, (), 0)
    if rule == "surest":
        options = level_options(samples, rules, stop_ids)
        best = max(options, key=lambda option: (option.success, -option.level))
        return dataclasses.replace(best, correct=len(usable))
    by_cost = sorted(usable, key=lambda o: int(o.solution_tokens[0]))  # stable: ties keep sample order
    if rule == "shortest":
        chosen = by_cost[0]
    elif rule == "median":
        chosen = by_cost[(len(by_cost) - 1) // 2]
    elif rule == "most_frequent":
        counts = Counter(int(o.actual_level[0]) for o in usable)
        level = min(counts, key=lambda k: (-counts[k], k))
        chosen = next(o for o in by_cost if o.actual_level[0] == level)
    else:
        raise ValueError(f"unknown label rule {rule!r}; choose one of {LABEL_RULES}")
    level = int(chosen.actual_level[0])
    return Label(level, _solution(chosen, stop_ids), len(usable), _success(samples, level))


def answer_ids(policy: Policy, rules: ExamRules, target: Label, budget: int, position: int = 1,
               question: str = "") -> list[int]:
    """The tokens of one labelled answer to `question` (its text) at `position` (1-based) in an exam
    of `budget` tokens: the tag (or the whole skip answer), then the solution."""
    fmt = rules.format
    if target.level == rules.skip_level:
        return policy.encode(fmt.answer(target.level, None, rules.skip_level, position, question, budget))
    return policy.encode(fmt.tag(target.level, position, question, budget)) + list(target.solution)


def exam_target(policy: Policy, rules: ExamRules, exam: Exam, options: Sequence[Sequence[Label]], budget: int,
                plan: str) -> list[int]:
    """A stage-2 exam's target tokens: for each question one of its `options` (labelled answers,
    none where it is skipped) or the skip, as `plan` chooses (`MFTConfig.stage2_plan`), and the end
    of the sheet."""
    if plan not in STAGE2_PLANS:
        raise ValueError(f"unknown stage-2 plan {plan!r}; choose one of {STAGE2_PLANS}")
    separator = policy.encode(rules.format.separator) if rules.format.separator else []
    texts = [question_block(q) for q in exam.questions]
    skip = Label(rules.skip_level, (), 0)
    # Per question: its options' answers, then the skip's, each with its cost in tokens.
    answers = [[answer_ids(policy, rules, lab, budget, j, text) for lab in (*opts, skip)]
               for j, (opts, text) in enumerate(zip(options, texts), 1)]
    costs = [[len(a) + len(separator) * (j > 0) for a in answer] for j, answer in enumerate(answers)]
    if plan != "in_order":
        # The oracle's DP on known costs; an action a question lacks costs more than the budget.
        width = max(budget + 2, max(max(c) for c in costs) + 1)
        actions = max(len(c) for c in costs)
        success, pmf = np.zeros((len(options), actions)), np.zeros((len(options), actions, width))
        pmf[:, :, -1] = 1.0
        for j, (opts, cost) in enumerate(zip(options, costs)):
            pmf[j, :len(cost)] = 0.0
            pmf[j, np.arange(len(cost)), cost] = 1.0
            success[j, :len(opts)] = [1.0 if plan == "best" else lab.success for lab in opts]
        _, table = oracle_value(success, pmf, budget)
    tokens, left = [], budget
    for j, (opts, cost) in enumerate(zip(options, costs)):
        choice = 0 if plan == "in_order" else int(table[j, left])
        # An answer that would overrun what is left is skipped, never attempted: a cut attempt and a
        # skip both score 0, so the DP's table may pick either, and the target must teach the skip.
        if choice >= len(opts) or cost[choice] > left:
            choice = len(opts)
        tokens += (separator if j else []) + answers[j][choice]
        left = max(0, left - cost[choice])
    return tokens + [policy.stop_ids[-1]]


def run_mft(base: Policy, rules: ExamRules, questions: Sequence[Example], stage2_exams: Sequence[tuple[Exam, int]],
            config: MFTConfig, optim: OptimizerConfig, out_dir: Path, *, budgets: Sequence[int], seed: int = 0,
            metrics=None, mesh=None, remat: str = "none", compute_dtype=None,
            progress: bool = True) -> tuple[Policy, dict]:
    """Labels `questions` by rejection sampling from `base`, then fine-tunes on single questions and
    on `stage2_exams` ((exam, budget) pairs); returns the policy and a summary of the labels.
    `remat` and `compute_dtype` are the shared train step's (`metajax.train.make_train_step`).

    Writes `mft_labels.jsonl` (one line per question: level, correct samples, the level's smoothed
    success, the solution text).
    """
    if not questions:
        raise ValueError("MFT needs training questions; none were loaded")
    questions = list(questions)[:config.questions]
    budget = config.stage1_budget or max(budgets)
    singles = [Exam(f"mft-{i}", (q,), (0,)) for i, q in enumerate(questions)]
    k = config.samples_per_question
    with phase("mft", f"sampling {k} solutions for each of {len(questions)} questions"):
        samples = sit(base, rules, singles, [budget] * len(singles), n_samples=k, temperature=config.temperature,
                      rng=jax.random.key(seed), batch_size=config.sample_batch_size, mesh=mesh)
    per_question = [samples[i * k:(i + 1) * k] for i in range(len(questions))]
    labels = [label(group, rules, config.label_rule, base.stop_ids) for group in per_question]
    levels = Counter(lab.level for lab in labels)
    print("[mft] labels: " + ", ".join(f"Level-{level} {levels[level]}" for level in range(rules.num_levels)), flush=True)
    _write_labels(out_dir / "mft_labels.jsonl", base, questions, labels)

    optim = optim if config.learning_rate is None else dataclasses.replace(optim, learning_rate=config.learning_rate)
    prompts = exam_prompts(base, rules, singles, [budget] * len(singles))
    stage1 = [_row(p, answer_ids(base, rules, lab, budget, 1, question_block(q)) + [base.stop_ids[-1]])
              for p, lab, q in zip(prompts, labels, questions)]
    sft = dict(optim=optim, batch_size=config.batch_size, epochs=config.epochs, mesh=mesh, metrics=metrics,
               progress=progress, remat=remat, compute_dtype=compute_dtype,
               grad_accum=config.gradient_accumulation_steps)
    params = _train_stage(base.params, base.cfg, stage1, out_dir, 1, seed=seed, save_every=config.save_steps, **sft)
    if config.stage2_plan == "expected":
        choices = [level_options(group, rules, base.stop_ids) for group in per_question]
    else:
        choices = [[lab] if lab.level != rules.skip_level else [] for lab in labels]
    options_of = {q.id: opts for q, opts in zip(questions, choices)}
    exams = [(exam, b) for exam, b in stage2_exams if all(q.id in options_of for q in exam.questions)]
    if stage2_exams and not exams:
        raise ValueError("MFT stage 2: no training exam is made of labelled questions; draw stage-2 exams "
                         "from the questions MFT labels (mft.questions first training questions)")
    if exams:
        prompts = exam_prompts(base, rules, [e for e, _ in exams], [b for _, b in exams])
        stage2 = [_row(p, exam_target(base, rules, exam, [options_of[q.id] for q in exam.questions], b,
                                          config.stage2_plan))
                  for p, (exam, b) in zip(prompts, exams)]
        params = _train_stage(params, base.cfg, stage2, out_dir, 2, seed=seed + 1, save_every=config.save_steps,
                              **sft)
    summary = {"questions": len(questions), "samples_correct": float(np.mean([lab.correct / k for lab in labels])),
               "label_levels": {str(level): levels[level] for level in range(rules.num_levels)},
               "stage2_exams": len(exams)}
    return base.with_params(params), summary


def _train_stage(params, cfg, rows, out_dir: Path, stage: int, **sft):
    with Checkpointer(out_dir / "checkpoints" / f"stage{stage}", max_to_keep=1) as checkpointer:
        if checkpointer.latest_step() is not None:
            print(f"[mft] stage {stage}: resuming after step {checkpointer.latest_step()}", flush=True)
        params, _ = train_sft(params, cfg, rows, checkpointer=checkpointer, desc=f"mft/stage{stage}", **sft)
    return params


def _row(prompt: list[int], target: list[int]) -> tuple[list[int], list[bool]]:
    return list(prompt) + target, [False] * len(prompt) + [True] * len(target)


def _write_labels(path: Path, policy: Policy, questions: Sequence[Example], labels: Sequence[Label]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": q.id, "question": q.question, "level": lab.level, "correct_samples": lab.correct,
                         "success": lab.success, "solution": policy.decode(lab.solution)})
             for q, lab in zip(questions, labels)]
    write_text_atomic(path, "\n".join(lines) + "\n")
