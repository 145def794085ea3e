"""Meta-cognitive fine-tuning (ROI-Reasoning's first stage, PAPERS.md section 2).

1. Rejection sampling: K solutions per training question from the base policy, each sat as an exam
   of one question, graded and token-counted (`metajax.envs.answers.read_exam`).
2. Labels: a question's level comes from its correct solutions' token counts (`label_rule`); with
   no correct solution the target is the skip (`Level-<skip>` and the skip answer).
3. Stage 1 fine-tunes on single questions: the labelled tag, then the sampled solution tokens.
   Stage 2 fine-tunes on whole exams under their shared budget, built from the labelled solutions:
   a question is solved where its labelled cost fits the plan (`stage2_plan`), and skipped where it
   would overrun the budget left.
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

LABEL_RULES = ("shortest", "median", "most_frequent")


@dataclasses.dataclass(frozen=True)
class MFTConfig:
    """Meta-cognitive fine-tuning settings (the paper gives none of these numbers).

    Attributes:
      questions: training questions sampled for labels (the first ones of the training split).
      samples_per_question: K, solutions sampled per question.
      temperature: sampling temperature of the K solutions.
      label_rule: which correct solution sets the label and the target: "shortest" (the fewest
        tokens: the cheapest way to be right, the rational choice, and metajax's default), "median"
        (the median count, lower middle), or "most_frequent" (the most common level, ties to the
        lower one, then its shortest solution).
      stage1_budget: the budget stated in single-question prompts, and their generation cap (None:
        the largest budget of the run).
      stage2_exams: training exams of stage 2, spread over `stage2_budgets` and the run's orderings.
      stage2_budgets: the budgets stage-2 exams state and are planned under (None: the run's
        budgets). A wider spread than the test budgets gives more exams whose best plan changes
        with the stated budget (on the toy it did not teach the policy to read it: README).
      stage2_plan: which labelled questions a stage-2 exam solves: "best" (the most questions that
        fit the budget, by the oracle's dynamic programme on the labelled costs) or "in_order" (solve
        each question whose labelled cost fits what is left, in order).
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
    label_rule: Literal["shortest", "median", "most_frequent"] = "shortest"
    stage1_budget: int | None = None
    stage2_exams: int = 1024
    stage2_budgets: tuple[int, ...] | None = None
    stage2_plan: Literal["best", "in_order"] = "best"
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
      correct: how many of the K samples were right (within their level bounds).
    """

    level: int
    solution: tuple[int, ...]
    correct: int


def label(samples: Sequence[ExamOutcome], rules: ExamRules, rule: str, stop_ids: Sequence[int]) -> Label:
    """The label of one question from its sampled one-question exams."""
    usable = [o for o in samples if o.correct[0] and not o.skipped[0] and o.predicted_level[0] >= 0
              and o.actual_level[0] < rules.skip_level]
    if not usable:
        return Label(rules.skip_level, (), 0)
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
    solution = list(chosen.ids[chosen.solution_start[0]:chosen.segment_end[0]])
    while solution and solution[-1] in stop_ids:
        solution.pop()
    return Label(int(chosen.actual_level[0]), tuple(solution), len(usable))


def answer_ids(policy: Policy, rules: ExamRules, target: Label, position: int = 1, question: str = "") -> list[int]:
    """The tokens of one labelled answer to `question` (its text) at `position` (1-based): the tag
    (or the whole skip answer), then the solution."""
    fmt = rules.format
    if target.level == rules.skip_level:
        return policy.encode(fmt.answer(target.level, None, rules.skip_level, position, question))
    return policy.encode(fmt.tag(target.level, position, question)) + list(target.solution)


def exam_target(policy: Policy, rules: ExamRules, exam: Exam, labels: Sequence[Label], budget: int,
                plan: str) -> list[int]:
    """A stage-2 exam's target tokens: the labelled answers in order, with the questions the plan
    leaves out skipped, and the end of the sheet."""
    skip = Label(rules.skip_level, (), 0)
    separator = policy.encode(rules.format.separator) if rules.format.separator else []
    texts = [question_block(q) for q in exam.questions]
    answers = [answer_ids(policy, rules, lab, j, text) for j, (lab, text) in enumerate(zip(labels, texts), 1)]
    skips = [answer_ids(policy, rules, skip, j, text) for j, text in enumerate(texts, 1)]
    cost = [[len(a) + len(separator) * (j > 0), len(s) + len(separator) * (j > 0)]
            for j, (a, s) in enumerate(zip(answers, skips))]
    solvable = [lab.level != rules.skip_level for lab in labels]
    if plan == "best":
        width = max(max(c) for c in cost) + 1
        pmf = np.zeros((len(labels), 2, width))
        for j, (solve_cost, skip_cost) in enumerate(cost):
            pmf[j, 0, solve_cost] = pmf[j, 1, skip_cost] = 1.0
        _, table = oracle_value(np.array([[float(s), 0.0] for s in solvable]), pmf, budget)
    elif plan != "in_order":
        raise ValueError(f"unknown stage-2 plan {plan!r}; choose best or in_order")
    tokens, left = [], budget
    for j in range(len(labels)):
        # A question whose solution would overrun what is left is skipped, never attempted: a cut
        # attempt and a skip both score 0, so the DP's table may pick either, and the target must
        # teach the skip.
        solve = solvable[j] and cost[j][0] <= left and (plan == "in_order" or table[j, left] == 0)
        tokens += (separator if j else []) + (answers[j] if solve else skips[j])
        left = max(0, left - cost[j][0 if solve else 1])
    return tokens + [policy.stop_ids[-1]]


def run_mft(base: Policy, rules: ExamRules, questions: Sequence[Example], stage2_exams: Sequence[tuple[Exam, int]],
            config: MFTConfig, optim: OptimizerConfig, out_dir: Path, *, budgets: Sequence[int], seed: int = 0,
            metrics=None, mesh=None, remat: str = "none", compute_dtype=None,
            progress: bool = True) -> tuple[Policy, dict]:
    """Labels `questions` by rejection sampling from `base`, then fine-tunes on single questions and
    on `stage2_exams` ((exam, budget) pairs); returns the policy and a summary of the labels.
    `remat` and `compute_dtype` are the shared train step's (`metajax.train.make_train_step`).

    Writes `mft_labels.jsonl` (one line per question: level, correct samples, the solution text).
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
    labels = [label(samples[i * k:(i + 1) * k], rules, config.label_rule, base.stop_ids) for i in range(len(questions))]
    levels = Counter(lab.level for lab in labels)
    print("[mft] labels: " + ", ".join(f"Level-{level} {levels[level]}" for level in range(rules.num_levels)), flush=True)
    _write_labels(out_dir / "mft_labels.jsonl", base, questions, labels)

    optim = optim if config.learning_rate is None else dataclasses.replace(optim, learning_rate=config.learning_rate)
    prompts = exam_prompts(base, rules, singles, [budget] * len(singles))
    stage1 = [_row(p, answer_ids(base, rules, lab, 1, question_block(q)) + [base.stop_ids[-1]])
              for p, lab, q in zip(prompts, labels, questions)]
    sft = dict(optim=optim, batch_size=config.batch_size, epochs=config.epochs, mesh=mesh, metrics=metrics,
               progress=progress, remat=remat, compute_dtype=compute_dtype,
               grad_accum=config.gradient_accumulation_steps)
    params = _train_stage(base.params, base.cfg, stage1, out_dir, 1, seed=seed, save_every=config.save_steps, **sft)
    label_of = {q.id: lab for q, lab in zip(questions, labels)}
    exams = [(exam, b) for exam, b in stage2_exams if all(q.id in label_of for q in exam.questions)]
    if stage2_exams and not exams:
        raise ValueError("MFT stage 2: no training exam is made of labelled questions; draw stage-2 exams "
                         "from the questions MFT labels (mft.questions first training questions)")
    if exams:
        prompts = exam_prompts(base, rules, [e for e, _ in exams], [b for _, b in exams])
        stage2 = [_row(p, exam_target(base, rules, exam, [label_of[q.id] for q in exam.questions], b, config.stage2_plan))
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
                         "solution": policy.decode(lab.solution)}) for q, lab in zip(questions, labels)]
    write_text_atomic(path, "\n".join(lines) + "\n")
