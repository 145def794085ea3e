"""Pretrains the toy world's tiny Llama from scratch and ships it as a Hugging Face checkpoint.

The model sees a mix of direct texts (`[User] q\\n[Assistant] a\\n`) and texts with a thought that
rewrites the sum (`[User] 6+3+4=?\\n<thought> 6+3+4 = 9+4 = 13 </thought>\\n[Assistant] 13\\n`), each
as BOS + text + EOS, with the loss on every token after BOS. A model this small learns to add two
numbers in one pass but not six, so direct answers are right on easy questions and wrong on hard
ones, while answers after a thought (one two-number addition per step) hold up on every level: the
world where RaM's value of computation pays only on hard questions (the bundled model's README.md
has its accuracy table).

    python -m metajax.algorithms.toy_pretrain --out metajax/assets/toy_model
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax

from metajax.data import toy
from metajax.data.example import Example
from metajax.data.graders import grade_example, split_ram_completion
from metajax.data.formats import USER_BLOCK
from metajax.envs.toy_exam import ToyExamCorpus, exam_corpus
from metajax.files import write_text_atomic
from metajax.models import ModelConfig, init_params, load_hf, save_hf
from metajax.sampling import Policy, complete
from metajax.train import MetricsWriter, OptimizerConfig, train_sft

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy_model"

# Two to six single-digit operands: one addition (level 2) is learnable in a single forward pass,
# six operands are not; two-digit operands taught a CPU-budget model no arithmetic at all. Level 1
# (a bare copy) is left out: it has no thought, so "answer after a thought" is undefined there.
# Easy levels are common (3:3:2:1:1), so a policy that thinks only when it must saves many tokens.
# 1000 eval questions keep the standard error of an accuracy near 1 point; level 2 (the 100-entry
# addition table, which those draws nearly exhaust) is not held out of training. Thoughts are rare
# in the corpus on easy levels and common on hard ones: with one share of 0.5 everywhere, direct
# answers were still 57% right on 6-operand sums; with shares above 0.5 everywhere, direct answers
# to 3-operand sums fell to 88% (assets/toy_model/README.md).
SHIPPED_WORLD = toy.ToyWorldConfig(min_operands=2, max_operands=6, operand_min=0, operand_max=9,
                                   difficulty_weights=(3.0, 3.0, 2.0, 1.0, 1.0),
                                   p_thought=(0.4, 0.2, 0.6, 0.8, 0.9), n_eval=1000,
                                   held_out_min_operands=3)


@dataclasses.dataclass(frozen=True)
class ToyPretrainConfig:
    """How the toy model is built and trained.

    Attributes:
      world: the toy world whose pretraining corpus the model sees (and whose eval split it never
        sees); its `p_thought` is the share of texts written with their thought.
      hidden_size, intermediate_size, num_layers, num_heads: the Llama's shape (no GQA).
      corpus_size: pretraining texts drawn by `toy.pretraining_corpus`.
      corpus_seed: seed of that draw.
      corpus_difficulty_weights: how often each level of `world` appears in the corpus (None: the
        world's own weights). A thinking base writes few direct answers per level, so the levels
        it should also answer directly get more texts.
      exam_corpus: pretrain on budgeted exams in the toy's compact format (`metajax.envs.toy_exam`)
        mixed with plain RaM texts, instead of RaM texts alone: the exam-ready base of ROI.
      init_from: a Hugging Face checkpoint directory of the same shape to start from (None: random
        initialisation); the exam-ready base starts from the thinking base, which already adds.
      seq_len: texts (BOS + text + EOS) are concatenated and cut into rows of this many tokens, so no
        compute is spent on padding; a text may run across two rows, as in ordinary pretraining.
      batch_size: rows per update. epochs: passes over the packed corpus.
      learning_rate: peak AdamW rate, reached after `warmup_fraction` of the steps, then cosine
        decay to 0. weight_decay, max_grad_norm: AdamW's decay and the gradient clip.
      seed: initialisation and batch-order seed.
      out_dir: where the checkpoint (config.json, model.safetensors, tokenizer files) goes.
      eval_per_level: held-out questions per difficulty in the accuracy table printed at the end
        (0: no table).
      max_new_tokens: generation cap of that table (a 5-operand thought is about 60 tokens).
    """

    world: toy.ToyWorldConfig = SHIPPED_WORLD
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    corpus_size: int = 64_000
    corpus_seed: int = 1
    corpus_difficulty_weights: tuple[float, ...] | None = None
    exam_corpus: ToyExamCorpus | None = None
    init_from: str | None = None
    seq_len: int = 128
    batch_size: int = 32
    epochs: int = 2
    learning_rate: float = 3e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    out_dir: str = str(DEFAULT_OUT_DIR)
    eval_per_level: int = 200
    max_new_tokens: int = 128

    def __post_init__(self):
        positive = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "corpus_size", "seq_len",
                    "batch_size", "epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"ToyPretrainConfig.{name}={getattr(self, name)} must be >= 1")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"ToyPretrainConfig: hidden_size={self.hidden_size} must split into num_heads={self.num_heads} "
                "heads of even width (rotary embeddings rotate pairs)")
        if self.corpus_difficulty_weights is not None:
            try:
                dataclasses.replace(self.world, difficulty_weights=self.corpus_difficulty_weights)
            except ValueError as e:
                raise ValueError(f"ToyPretrainConfig.corpus_difficulty_weights: {e}") from None
        if self.eval_per_level < 0 or self.max_new_tokens < 1:
            raise ValueError(
                f"ToyPretrainConfig: eval_per_level={self.eval_per_level} must be >= 0 and "
                f"max_new_tokens={self.max_new_tokens} >= 1")

    def model_config(self) -> ModelConfig:
        """The Llama this config trains: character vocabulary, BOS/EOS/pad of the toy tokenizer."""
        return ModelConfig.of(
            "llama", vocab_size=len(toy.SPECIAL_TOKENS) + len(toy.CHARACTERS), hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_layers=self.num_layers, num_heads=self.num_heads,
            num_kv_heads=self.num_heads, max_position_embeddings=512, bos_token_id=toy.BOS_ID,
            eos_token_ids=(toy.EOS_ID,), pad_token_id=toy.PAD_ID)


@dataclasses.dataclass(frozen=True)
class AccuracyRow:
    """Greedy accuracies on one difficulty level's held-out questions.

    Attributes:
      difficulty: operand count. n: questions.
      direct: accuracy with the prompt `"[User] q\\n[Assistant]"`.
      thought: accuracy with the prompt `"[User] q\\n<thought>"`.
      thought_tokens: mean tokens generated after that prompt (the forced `<thought>` included).
      own_thought_rate: share of questions where, prompted with `"[User] q\\n"`, the model opens a
        thought by itself. own: its accuracy then.
    """

    difficulty: int
    n: int
    direct: float
    thought: float
    thought_tokens: float
    own_thought_rate: float
    own: float


def run_toy_pretrain(config: ToyPretrainConfig, *, run_dir: str | Path | None = None,
                     progress: bool = True) -> Path:
    """Trains the toy model, saves it with its tokenizer in `config.out_dir`, and returns that path.

    Args:
      run_dir: where per-step metrics (`MetricsWriter`) and `toy_pretrain.json` (config, wall time,
        loss curve, accuracy table) go; None: nowhere.
      progress: show a progress bar and print the accuracy table.
    """
    started = time.perf_counter()
    cfg = config.model_config()
    sequences = pack_corpus(corpus_texts(config), config.seq_len)
    params = init_params(cfg, jax.random.key(config.seed)) if config.init_from is None else _start_from(config, cfg)
    optim = OptimizerConfig(learning_rate=config.learning_rate, schedule="cosine",
                            warmup_fraction=config.warmup_fraction, weight_decay=config.weight_decay,
                            max_grad_norm=config.max_grad_norm)
    metrics = None if run_dir is None else MetricsWriter(run_dir)
    params, history = train_sft(params, cfg, sequences, optim=optim, batch_size=config.batch_size,
                                epochs=config.epochs, seed=config.seed, metrics=metrics, progress=progress,
                                desc="toy_pretrain")
    out = save_hf(params, cfg, config.out_dir)
    toy.save_tokenizer(out)
    train_seconds = time.perf_counter() - started
    rows = []
    if config.eval_per_level:
        policy = Policy.of(params, cfg, toy.build_tokenizer())
        rows = accuracy_table(policy, eval_questions(config.world, config.eval_per_level),
                              max_new_tokens=config.max_new_tokens)
        if progress:
            print(f"toy_pretrain: {cfg.num_params:,} params, trained in {train_seconds:.0f} s, saved to {out}")
            print(format_table(rows))
    if run_dir is not None:
        summary = {"config": dataclasses.asdict(config), "num_params": cfg.num_params,
                   "train_seconds": train_seconds, "steps": len(history),
                   "loss": [h["loss"] for h in history], "table": [dataclasses.asdict(r) for r in rows]}
        write_text_atomic(Path(run_dir, "toy_pretrain.json"), json.dumps(summary, indent=1) + "\n")
    return out


def corpus_texts(config: ToyPretrainConfig) -> list[str]:
    """The pretraining texts `config` describes (RaM texts, or exams mixed with them)."""
    if config.exam_corpus is None:
        return toy.pretraining_corpus(config.world, config.corpus_size, config.corpus_seed,
                                      difficulty_weights=config.corpus_difficulty_weights)
    return exam_corpus(config.world, config.corpus_size, config.corpus_seed, config.exam_corpus,
                       difficulty_weights=config.corpus_difficulty_weights)


def _start_from(config: ToyPretrainConfig, cfg: ModelConfig):
    params, loaded = load_hf(config.init_from)
    if loaded.num_params != cfg.num_params or loaded.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"ToyPretrainConfig.init_from {config.init_from} holds a {loaded.num_params:,}-parameter model "
            f"with vocabulary {loaded.vocab_size}, but this config trains {cfg.num_params:,} parameters with "
            f"vocabulary {cfg.vocab_size}; match hidden_size/intermediate_size/num_layers/num_heads to it")
    return params


def pack_corpus(texts: Sequence[str], seq_len: int) -> list[tuple[list[int], list[bool]]]:
    """Concatenates BOS + text + EOS for every text and cuts the stream into rows of `seq_len`.

    The texts carry no EOS of their own: appending it teaches the model to stop after its answer
    line. Every token but BOS is a target (BOS starts a text; nothing predicts it).

    Returns:
      (tokens int[seq_len], loss_mask bool[seq_len]) rows; the last row may be shorter.
    """
    if seq_len < 2:
        raise ValueError(f"pack_corpus: seq_len={seq_len} must be >= 2 (a row needs a target)")
    tokenizer = toy.build_tokenizer()
    stream = list(itertools.chain.from_iterable(
        enc.ids + [toy.EOS_ID] for enc in tokenizer.encode_batch(list(texts))))
    return [(row, [t != toy.BOS_ID for t in row])
            for row in (stream[i:i + seq_len] for i in range(0, len(stream), seq_len))]


def eval_questions(world: toy.ToyWorldConfig, per_level: int) -> list[Example]:
    """Up to `per_level` questions of each difficulty from the world's held-out eval split."""
    _, held_out = toy.make_splits(world)
    chosen = []
    for d in world.difficulties:
        chosen += [ex for ex in held_out if ex.difficulty == d][:per_level]
    return chosen


def accuracy_table(policy: Policy, examples: Sequence[Example], *, max_new_tokens: int = 128,
                   batch_size: int = 128) -> list[AccuracyRow]:
    """Greedy direct, thought and self-chosen accuracy per difficulty level, easiest first.

    Each question is answered three times: after `"[User] q\\n[Assistant]"`, after
    `"[User] q\\n<thought>"`, and after `"[User] q\\n"` where the model picks its format.
    """
    if not examples:
        raise ValueError("accuracy_table: no examples to evaluate")
    prompts = [list(policy.tokenizer.prefix_ids) + policy.encode(USER_BLOCK.format(ex.question))
               for ex in examples]

    def run(prompting: str):
        return complete(policy, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        opening=policy.opening(prompting))

    direct, thought, own = (run(prompting) for prompting in ("direct", "cot", "policy"))
    rows = []
    for d in sorted({ex.difficulty for ex in examples}):
        idx = [i for i, ex in enumerate(examples) if ex.difficulty == d]
        right = {name: [grade_example(_answer_line(out[i].text), examples[i]) for i in idx]
                 for name, out in (("direct", direct), ("thought", thought), ("own", own))}
        thinks = [split_ram_completion(own[i].text)[0] is not None for i in idx]
        rows.append(AccuracyRow(
            difficulty=d, n=len(idx), direct=_mean(right["direct"]), thought=_mean(right["thought"]),
            thought_tokens=_mean([thought[i].num_tokens for i in idx]), own_thought_rate=_mean(thinks),
            own=_mean(right["own"])))
    return rows


def format_table(rows: Sequence[AccuracyRow]) -> str:
    """The accuracy table as aligned text, one line per difficulty."""
    lines = ["operands    n  direct  thought  thought_tokens  own_thinks  own_acc"]
    lines += [f"{r.difficulty:8d} {r.n:4d}  {r.direct:6.2f}  {r.thought:7.2f}  {r.thought_tokens:14.1f}  "
              f"{r.own_thought_rate:10.2f}  {r.own:7.2f}" for r in rows]
    return "\n".join(lines)


def _answer_line(text: str) -> str:
    """The answer of a RaM-format completion ("" when it has none), so `grade` reads only that line
    and never a number from the thought."""
    return split_ram_completion(text)[1] or ""


def _mean(values: Sequence[float]) -> float:
    return float(sum(values)) / len(values) if values else float("nan")


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT_DIR), help="checkpoint directory to write")
    parser.add_argument("--run-dir", default=None, help="metrics directory (default: none)")
    parser.add_argument("--seed", type=int, default=ToyPretrainConfig.seed)
    args = parser.parse_args(argv)
    return run_toy_pretrain(ToyPretrainConfig(out_dir=args.out, seed=args.seed), run_dir=args.run_dir)


if __name__ == "__main__":
    main()
