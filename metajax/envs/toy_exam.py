"""The toy world's budgeted exam: tiers, levels and budgets scaled to the toy's token counts, and
the corpus of the exam-ready toy base.

The toy answers in the compact exam format (`metajax.data.formats.TOY_EXAM`): the prompt is one
user block `"[User] Exam, 150 tokens: P3+4=? Q1+2+3=? R5+6+7+1+2=?\n"` (each question after its
one-letter label), and each answer restates its question and the budget, announces its level, then
writes a RaM completion (`"P3+4=? 150 <L0> [Assistant] 7\n"`,
`"Q1+2+3=? 150 <L1> <thought> 1+2+3 = 3+3 = 6 </thought>\n[Assistant] 6\n"`, or the skip
`"R5+6+7+1+2=? 150 <L3> [Assistant] NA\n"`). The restatements belong to the tag: they cost
budget but not solution tokens. With one token per character, a direct answer's solution costs
about 15 tokens, a thought 45 (2 operands) to 93 (6 operands), so the levels are Level-0 up to 20
tokens (direct), Level-1 up to 60 (2-3 operands), Level-2 up to 100 (4-6 operands).

Tiers: easy = 2 operands (direct answers right), medium = 3-4, hard = 5-6 (direct answers mostly
wrong, thoughts up to 93 tokens, nearly a whole small budget), so at the toy budgets some questions
cost more than the rest of the exam can afford and skipping them is rational.

The exam-ready base is pretrained on exams whose answers ignore the budget and whose level tags are
drawn at random: left to itself it thinks by habit, runs out of budget and announces levels that
say nothing, so whatever MFT and RARL gain, they learned.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

from metajax.data import toy
from metajax.data.example import Example
from metajax.data.formats import ANSWER_BLOCK, THOUGHT_BLOCK, TOY_EXAM, USER_BLOCK
from metajax.data.prompts import PromptConfig, question_block, render_prompt

TOY_LEVEL_BOUNDS: tuple[int, ...] = (20, 60, 100)
TOY_TIERS: tuple[tuple[int, ...], ...] = ((2,), (3, 4), (5, 6))


@dataclasses.dataclass(frozen=True)
class ToyExamCorpus:
    """The exam-ready base's pretraining texts.

    Attributes:
      max_questions: exams hold 1..max_questions questions, uniformly.
      single_share: share of plain RaM texts (one question, no exam), which keep the single-question
        skills (and `toy_pretrain`'s accuracy table) intact.
      drill_share: share of copying drills: `"[User] Copy: P3+4=? Q1+2=? ...\n"`, then the labelled
        questions restated in a random order, one per line. An exam of three holds two lookups by
        label that the first question's position does not give away; a drill holds up to
        `max_drill_questions`, so the base learns to find a question by its label.
      max_drill_questions: drills list 2..max_drill_questions questions, uniformly.
      skip_share: share of exam answers that skip, so the skip form is known but not favoured.
      budget_range: (low, high), the stated budgets, uniform in steps of 10; the answers ignore them.
    """

    max_questions: int = 3
    single_share: float = 0.25
    drill_share: float = 0.0
    max_drill_questions: int = 8
    skip_share: float = 0.05
    budget_range: tuple[int, int] = (60, 300)

    def __post_init__(self):
        low, high = self.budget_range
        shares = (self.single_share, self.drill_share, self.skip_share)
        if self.max_questions < 1 or not all(0 <= x <= 1 for x in shares) or self.single_share + self.drill_share > 1:
            raise ValueError(f"ToyExamCorpus: need max_questions >= 1, shares in [0, 1] and single_share + "
                             f"drill_share <= 1, got {self}")
        if not 2 <= self.max_drill_questions <= len(TOY_EXAM.labels):
            raise ValueError(f"ToyExamCorpus.max_drill_questions {self.max_drill_questions} must lie in "
                             f"2..{len(TOY_EXAM.labels)} (one label each)")
        if not 0 < low <= high:
            raise ValueError(f"ToyExamCorpus.budget_range {self.budget_range} must satisfy 0 < low <= high")


def toy_tiers(examples: Sequence[Example], tiers: Sequence[Sequence[int]] = TOY_TIERS) -> list[list[Example]]:
    """`examples` grouped by tier (operand counts per tier, easiest first)."""
    grouped = [[ex for ex in examples if ex.difficulty in tier] for tier in tiers]
    empty = [tuple(t) for t, g in zip(tiers, grouped) if not g]
    if empty:
        raise ValueError(f"toy_tiers: no questions with operand counts {empty}; widen the world's "
                         "min_operands/max_operands or change the tiers")
    return grouped


def exam_prompt_config(budget: int, level_bounds: Sequence[int] = TOY_LEVEL_BOUNDS) -> PromptConfig:
    """The prompt config of a toy exam under `budget` tokens."""
    return PromptConfig(style=TOY_EXAM.prompt_style, exam_budget=budget, level_bounds=tuple(level_bounds))


def solution_text(example: Example, think: bool) -> str:
    """The toy's solution of one question: its RaM completion with or without the thought."""
    thought = THOUGHT_BLOCK.format(example.rationale) if think and example.rationale else ""
    return thought + ANSWER_BLOCK.format(example.answer)


def exam_corpus(world: toy.ToyWorldConfig, n: int, seed: int, spec: ToyExamCorpus = ToyExamCorpus(),
                difficulty_weights: Sequence[float] | None = None,
                level_bounds: Sequence[int] = TOY_LEVEL_BOUNDS) -> list[str]:
    """`n` texts: plain RaM texts (`spec.single_share`), copying drills (`spec.drill_share`) and
    exams answered by habit.

    An exam answer thinks with the world's `p_thought` of its level, else answers directly, or
    skips (`spec.skip_share`); its level tag is drawn uniformly from the solving levels, whatever
    the answer costs. Questions avoid the world's held-out eval split, as `toy.pretraining_corpus`.
    """
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[spec.single_share, spec.drill_share, 1 - spec.single_share - spec.drill_share])
    texts = iter(toy.pretraining_corpus(world, int((kind == 0).sum()), seed + 1, difficulty_weights=difficulty_weights))
    sizes = np.where(kind == 1, rng.integers(2, spec.max_drill_questions + 1, size=n),
                     rng.integers(1, spec.max_questions + 1, size=n))
    pool = iter(toy.pretraining_examples(world, int(sizes[kind > 0].sum()), seed + 2,
                                         difficulty_weights=difficulty_weights))
    skip_level = len(level_bounds)
    out = []
    for kind_of_text, size in zip(kind.tolist(), sizes.tolist()):
        if kind_of_text == 0:
            out.append(next(texts))
            continue
        questions = [next(pool) for _ in range(size)]
        question_texts = [question_block(q) for q in questions]
        if kind_of_text == 1:
            labelled = [TOY_EXAM.label(j) + text for j, text in enumerate(question_texts, 1)]
            out.append(USER_BLOCK.format("Copy: " + " ".join(labelled))
                       + "".join(labelled[j] + "\n" for j in rng.permutation(size)))
            continue
        budget = int(rng.integers(spec.budget_range[0] // 10, spec.budget_range[1] // 10 + 1)) * 10
        answers = []
        for ex in questions:
            if rng.random() < spec.skip_share:
                answers.append((skip_level, None))
            else:
                think = rng.random() < world.thought_share(ex.difficulty)
                answers.append((int(rng.integers(0, skip_level)), solution_text(ex, think)))
        prompt = render_prompt(exam_prompt_config(budget, level_bounds), questions)
        out.append(prompt + TOY_EXAM.response(answers, skip_level, question_texts, budget))
    return out


def toy_exam_splits(world: toy.ToyWorldConfig, tiers: Sequence[Sequence[int]] = TOY_TIERS, *,
                    balanced: bool = True) -> tuple[list[list[Example]], list[list[Example]]]:
    """(train tiers, test tiers) of distinct questions, no question text in both.

    The world's eval split is held out of training only from `held_out_min_operands` up; below that
    (the 100-entry table of two-digit sums, say) the eval split holds nearly every question, so the
    distinct questions of those levels are split in half, seeded, one half per side.

    With `balanced`, each training tier keeps as many questions of each operand count as its rarest
    count has (a seeded subset), as the test tiers do: the training split is what is left of the
    world once the eval split is out, so 4-operand sums outnumber 3-operand ones 4 to 1 there, and
    training on that mix would teach the level choice mostly on the questions the test asks least.
    """
    train, held_out = toy.make_splits(world)
    small = sorted({ex.question for ex in train + held_out if ex.difficulty < world.held_out_min_operands})
    test_half = set(np.random.default_rng([world.seed, 7]).permutation(small)[:len(small) // 2].tolist())
    test = [ex for ex in _distinct(held_out)
            if ex.difficulty >= world.held_out_min_operands or ex.question in test_half]
    seen = {ex.question for ex in test}
    train_tiers = toy_tiers([ex for ex in _distinct(train) if ex.question not in seen], tiers)
    if balanced:
        rng = np.random.default_rng([world.seed, 8])
        train_tiers = [_balanced(tier, rng) for tier in train_tiers]
    return train_tiers, toy_tiers(test, tiers)


def _balanced(tier: Sequence[Example], rng: np.random.Generator) -> list[Example]:
    """A seeded subset of `tier` with equally many questions of each operand count, in tier order."""
    counts = Counter(ex.difficulty for ex in tier)
    size = min(counts.values())
    keep = set()
    for difficulty in sorted(counts):
        members = [i for i, ex in enumerate(tier) if ex.difficulty == difficulty]
        keep.update(rng.permutation(members)[:size].tolist())
    return [ex for i, ex in enumerate(tier) if i in keep]


def _distinct(examples: Sequence[Example]) -> list[Example]:
    return list({ex.question: ex for ex in examples}.values())
