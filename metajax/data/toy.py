"""The toy world: multi-operand addition where thinking pays only on hard questions.

A question sums `d` two-digit operands (`"12+47+30=?"`, difficulty `d`). A tiny Llama trained from
scratch answers easy questions (one operand, or one two-number addition) directly, but cannot
add eight numbers in one forward pass; its chain of thought (`"12+47=59 59+30=89"`) turns a hard
question into `d - 1` two-number additions, each as easy as a difficulty-2 question. That makes
the RaM story (reason only when it raises p(answer) enough to pay its cost) and the ROI story
(harder questions need more tokens) runnable on a CPU in minutes.

Texts use RaM's base-model format (PAPERS.md section 1) and a character-level tokenizer: one token
per character, so the length of a thought in tokens is its length in characters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import string
from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from metajax.data.example import Example
from metajax.data.formats import ANSWER_BLOCK, THOUGHT_BLOCK, USER_BLOCK

# RaM's base-model format (PAPERS.md section 1); BOS comes from the tokenizer, not the text.
DIRECT_FORMAT = USER_BLOCK.format("{question}") + ANSWER_BLOCK.format("{answer}")
THOUGHT_FORMAT = USER_BLOCK.format("{question}") + THOUGHT_BLOCK.format("{thought}") + ANSWER_BLOCK.format("{answer}")

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))
# All printable ASCII covers the toy questions, both formats, and ROI's
# `<predicted_level>Level-3</predicted_level>` and `\boxed{NA}` without a rebuild.
CHARACTERS: tuple[str, ...] = tuple(sorted(set(string.printable)))

_STEP_SEPARATOR = " = "


@dataclasses.dataclass(frozen=True)
class ToyWorldConfig:
    """Static description of the toy world.

    Attributes:
      min_operands: easiest difficulty (operands per question). 1 = "37=?", a pure copy.
      max_operands: hardest difficulty. 8 two-digit operands sum to up to 792: a direct answer
        must add all eight in one pass, while the thought needs only seven two-number additions.
      operand_min: smallest operand (inclusive); 10 with `operand_max` 99 gives two-digit operands.
      operand_max: largest operand (inclusive).
      difficulty_weights: relative frequency of each difficulty from `min_operands` to
        `max_operands`; None = uniform.
      p_thought: fraction of multi-operand pretraining texts written with their thought, so the
        pretrained model can both answer directly and reason (the rest are direct answers): one
        share for all levels, or one per difficulty. Per-level shares model a world where people
        answer easy questions off the cuff and work hard ones out, so direct answers are
        practised where they can be right.
      seed: seed of `make_splits`.
      n_train: training questions (RaM's expert-iteration pool draws from these).
      n_eval: held-out questions, disjoint from the training split and the pretraining corpus
        (from `held_out_min_operands` operands up).
      held_out_min_operands: eval questions with fewer operands may also appear in pretraining and
        the training split. 1 holds out every level. Small levels have few distinct questions
        (single-digit pairs: 100): a large eval split would take nearly all of them, leaving
        nothing to learn the level from, when that level is a table to know by heart anyway.
    """

    min_operands: int = 1
    max_operands: int = 8
    operand_min: int = 10
    operand_max: int = 99
    difficulty_weights: tuple[float, ...] | None = None
    p_thought: float | tuple[float, ...] = 0.5
    seed: int = 0
    n_train: int = 20_000
    n_eval: int = 512
    held_out_min_operands: int = 1

    def __post_init__(self):
        if not 1 <= self.min_operands <= self.max_operands:
            raise ValueError(
                f"ToyWorldConfig: need 1 <= min_operands <= max_operands, got min_operands="
                f"{self.min_operands}, max_operands={self.max_operands}")
        if not 0 <= self.operand_min <= self.operand_max:
            raise ValueError(
                f"ToyWorldConfig: need 0 <= operand_min <= operand_max, got operand_min="
                f"{self.operand_min}, operand_max={self.operand_max}")
        if self.difficulty_weights is not None:
            weights = self.difficulty_weights
            if len(weights) != len(self.difficulties):
                raise ValueError(
                    f"ToyWorldConfig: difficulty_weights has {len(weights)} entries but there are "
                    f"{len(self.difficulties)} difficulties {self.difficulties}: "
                    "give one weight each")
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"ToyWorldConfig: difficulty_weights {weights} must be non-negative with a "
                    "positive sum")
        shares = self.p_thought if isinstance(self.p_thought, tuple) else (self.p_thought,)
        if isinstance(self.p_thought, tuple) and len(shares) != len(self.difficulties):
            raise ValueError(
                f"ToyWorldConfig: p_thought has {len(shares)} entries but there are "
                f"{len(self.difficulties)} difficulties {self.difficulties}: give one share each, "
                "or a single number for all")
        if not all(0.0 <= p <= 1.0 for p in shares):
            raise ValueError(f"ToyWorldConfig: p_thought={self.p_thought} must lie in [0, 1]")
        if self.held_out_min_operands < 1:
            raise ValueError(
                f"ToyWorldConfig: held_out_min_operands={self.held_out_min_operands} must be >= 1 "
                "(1 holds out eval questions of every difficulty)")
        if self.n_train < 0 or self.n_eval < 0:
            raise ValueError(
                f"ToyWorldConfig: n_train={self.n_train} and n_eval={self.n_eval} must be >= 0")

    @property
    def difficulties(self) -> tuple[int, ...]:
        """The difficulty levels, easiest first (operand counts)."""
        return tuple(range(self.min_operands, self.max_operands + 1))

    def thought_share(self, difficulty: int) -> float:
        """`p_thought` of one difficulty level."""
        if isinstance(self.p_thought, tuple):
            return self.p_thought[self.difficulties.index(difficulty)]
        return self.p_thought

    @property
    def weights(self) -> tuple[float, ...]:
        """Normalised probability of each difficulty in `difficulties`."""
        raw = self.difficulty_weights or (1.0,) * len(self.difficulties)
        total = float(sum(raw))
        return tuple(w / total for w in raw)


def make_examples(cfg: ToyWorldConfig, n: int, *, seed: int,
                  difficulties: Sequence[int] | None = None) -> list[Example]:
    """Draws `n` toy questions, deterministically for a given `seed`.

    Each difficulty is drawn from `cfg.weights` (renormalised over `difficulties` when given), then
    its operands uniformly from [operand_min, operand_max]. Questions may repeat within a call (the
    easiest levels hold few distinct questions); use `make_splits` for disjoint train/eval.

    Args:
      difficulties: restrict draws to these operand counts (each one of `cfg.difficulties`).
    """
    return _draw_examples(cfg, n, np.random.default_rng(seed), difficulties,
                          id_prefix=f"toy-seed{seed}")


def make_splits(cfg: ToyWorldConfig) -> tuple[list[Example], list[Example]]:
    """Returns (train, eval) of sizes (cfg.n_train, cfg.n_eval): no question text in both, from
    `cfg.held_out_min_operands` operands up."""
    eval_examples = _eval_split(cfg)
    train_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(2)[1])
    train = _draw_examples(cfg, cfg.n_train, train_rng, None, id_prefix="toy-train",
                           exclude=_held_out(cfg, eval_examples))
    return train, eval_examples


def render_direct(question: str, answer: str) -> str:
    """The direct-answer text: `"[User] {q}\\n[Assistant] {a}\\n"`."""
    return DIRECT_FORMAT.format(question=question, answer=answer)


def render_with_thought(question: str, thought: str, answer: str) -> str:
    """The reasoned text: `"[User] {q}\\n<thought> {thought} </thought>\\n[Assistant] {a}\\n"`."""
    if not thought:
        # RaM scores an empty thought as the direct answer, so it has no thought block.
        raise ValueError("render_with_thought: the thought is empty; use render_direct instead")
    return THOUGHT_FORMAT.format(question=question, thought=thought, answer=answer)


def pretraining_examples(cfg: ToyWorldConfig, n: int, seed: int, *,
                         difficulty_weights: Sequence[float] | None = None) -> list[Example]:
    """`n` questions for pretraining texts, never from the held-out part of `make_splits(cfg)`'s
    eval split.

    Args:
      difficulty_weights: how often each level appears (default: the world's own
        `difficulty_weights`).
    """
    return _pretraining_draw(cfg, n, np.random.default_rng(seed), difficulty_weights)


def pretraining_corpus(cfg: ToyWorldConfig, n: int, seed: int, *, p_thought: float | None = None,
                       difficulty_weights: Sequence[float] | None = None) -> list[str]:
    """`n` pretraining texts mixing direct answers and answers after a thought.

    Questions never come from the held-out part of the eval split of `make_splits(cfg)`. A
    question with a non-empty rationale (two operands or more) is written with its thought with
    probability `p_thought` (default: `cfg.p_thought` of the question's level); single-operand
    questions have nothing to think about and are always direct.

    Args:
      difficulty_weights: how often each level appears in the corpus (default: the world's own
        `difficulty_weights`); the eval and training splits keep the world's.
    """
    if p_thought is not None and not 0.0 <= p_thought <= 1.0:
        raise ValueError(f"pretraining_corpus: p_thought={p_thought} must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    examples = _pretraining_draw(cfg, n, rng, difficulty_weights)
    shares = np.array([cfg.thought_share(ex.difficulty) if p_thought is None else p_thought
                       for ex in examples])
    think = rng.random(n) < shares
    return [render_with_thought(ex.question, ex.rationale, ex.answer) if t and ex.rationale
            else render_direct(ex.question, ex.answer)
            for ex, t in zip(examples, think)]


def build_tokenizer() -> tokenizers.Tokenizer:
    """Character-level tokenizer: one token per character of printable ASCII.

    Ids: `<pad>` 0, `<s>` 1, `</s>` 2, `<unk>` 3, then `CHARACTERS`. Encoding with special tokens
    prepends BOS only (EOS is the training code's choice). Literal special-token strings in text
    (e.g. "<s>") encode to their special ids.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    # The empty pattern isolates every character, whitespace included.
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    # Fuse joins tokens as they are; the default decoder would put a space between characters.
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, BOS_ID)])
    return tok


def save_tokenizer(directory: str | os.PathLike) -> pathlib.Path:
    """Writes the tokenizer so `transformers.AutoTokenizer.from_pretrained(directory)` loads it.

    Files: `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`. Returns the
    directory.
    """
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(path / "tokenizer.json"))
    special = {"pad_token": PAD_TOKEN, "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
               "unk_token": UNK_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        # transformers would otherwise delete the space in " ." or " '" when decoding.
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return path


def _pretraining_draw(cfg: ToyWorldConfig, n: int, rng: np.random.Generator,
                      difficulty_weights: Sequence[float] | None) -> list[Example]:
    held_out = _held_out(cfg, _eval_split(cfg))
    if difficulty_weights is not None:
        cfg = dataclasses.replace(cfg, difficulty_weights=tuple(difficulty_weights))
    return _draw_examples(cfg, n, rng, None, id_prefix="toy-corpus", exclude=held_out)


def _held_out(cfg: ToyWorldConfig, eval_examples: Sequence[Example]) -> frozenset[str]:
    """The eval questions that training and pretraining draws must avoid."""
    return frozenset(ex.question for ex in eval_examples if ex.difficulty >= cfg.held_out_min_operands)


def _eval_split(cfg: ToyWorldConfig) -> list[Example]:
    eval_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(2)[0])
    return _draw_examples(cfg, cfg.n_eval, eval_rng, None, id_prefix="toy-eval")


def _draw_examples(cfg: ToyWorldConfig, n: int, rng: np.random.Generator,
                   difficulties: Sequence[int] | None, *, id_prefix: str,
                   exclude: frozenset[str] = frozenset()) -> list[Example]:
    """Draws `n` examples; operands are redrawn while the question is in `exclude`."""
    if n < 0:
        raise ValueError(f"toy world: asked for n={n} examples; n must be >= 0")
    levels, probs = _level_distribution(cfg, difficulties)
    _check_room(cfg, levels, probs, exclude)
    drawn = rng.choice(np.asarray(levels), size=n, p=np.asarray(probs))
    # One vectorised draw for all rows (row i uses its first d columns); redraws are rare.
    table = _draw_operands(cfg, (n, max(levels)), rng)
    examples = []
    for i, (d, row) in enumerate(zip(drawn.tolist(), table.tolist())):
        operands = row[:d]
        while _question(operands) in exclude:
            operands = _draw_operands(cfg, (d,), rng).tolist()
        examples.append(_example(f"{id_prefix}-{i}", operands))
    return examples


def _level_distribution(cfg: ToyWorldConfig, difficulties: Sequence[int] | None
                        ) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if difficulties is None:
        return cfg.difficulties, cfg.weights
    chosen = tuple(sorted(set(int(d) for d in difficulties)))
    unknown = [d for d in chosen if d not in cfg.difficulties]
    if not chosen or unknown:
        raise ValueError(
            f"toy world: difficulties {list(difficulties)} must be a non-empty subset of the "
            f"configured {cfg.difficulties}; change min_operands/max_operands or the request")
    weight_of = dict(zip(cfg.difficulties, cfg.weights))
    total = sum(weight_of[d] for d in chosen)
    if total <= 0:
        raise ValueError(
            f"toy world: difficulties {chosen} all have weight 0 in difficulty_weights "
            f"{cfg.difficulty_weights}")
    return chosen, tuple(weight_of[d] / total for d in chosen)


def _check_room(cfg: ToyWorldConfig, levels: Sequence[int], probs: Sequence[float],
                exclude: frozenset[str]) -> None:
    """Fails fast where every question of a drawable level is excluded (redrawing would not end)."""
    span = cfg.operand_max - cfg.operand_min + 1
    for d, p in zip(levels, probs):
        excluded = sum(1 for q in exclude if q.count("+") == d - 1)
        if p > 0 and excluded >= span ** d:
            raise ValueError(
                f"toy world: all {span ** d} questions with {d} operand(s) are in the eval split; "
                "lower n_eval, widen the operand range, or give that difficulty weight 0")


def _draw_operands(cfg: ToyWorldConfig, shape: tuple[int, ...], rng: np.random.Generator
                   ) -> np.ndarray:
    """Uniform operands, int64[*shape]."""
    return rng.integers(cfg.operand_min, cfg.operand_max + 1, size=shape)


def _question(operands: Sequence[int]) -> str:
    return "+".join(map(str, operands)) + "=?"


def _example(example_id: str, operands: Sequence[int]) -> Example:
    """One question with its rewriting rationale: the sum is restated, then each step replaces the
    first two numbers by their sum and copies the rest ("6+3+4 = 9+4 = 13").

    Every step is one two-number addition plus a copy of text the model has just written, so a
    tiny transformer can follow it at any length, while answering directly needs the whole sum in
    one pass. A single operand needs no step, so its rationale is empty.
    """
    steps, rest = [], list(operands)
    while len(rest) > 1:
        steps.append("+".join(map(str, rest)))
        rest = [rest[0] + rest[1]] + rest[2:]
    if steps:
        steps.append(str(rest[0]))
    return Example(id=example_id, question=_question(operands), answer=str(rest[0]),
                   answer_type="numeric", dataset="toy", difficulty=len(operands),
                   rationale=_STEP_SEPARATOR.join(steps))
