"""Greedy evaluation of a policy: accuracy and generated tokens, overall and per difficulty."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from metajax.data.example import Example
from metajax.data.graders import grade_example, split_ram_completion
from metajax.data.prompts import PromptConfig, encode_prompt
from metajax.files import write_jsonl_atomic
from metajax.sampling.policy import Policy
from metajax.sampling.rollouts import complete


@dataclasses.dataclass(frozen=True)
class EvalRecord:
    """One evaluated question: `num_tokens` generated (forced prefix included), `thought` whether the
    completion reasoned before answering."""

    id: str
    difficulty: int | None
    correct: bool
    num_tokens: int
    thought: bool
    completion: str


def evaluate(policy: Policy, examples: Sequence[Example], *, prompting: str = "policy", max_new_tokens: int = 512,
             batch_size: int = 64, fewshot: Sequence[Example] = (), mesh=None, desc: str | None = None
             ) -> list[EvalRecord]:
    """Greedy completions of `examples`, graded (RaM paper: greedy, zero-shot, max 512 tokens).

    prompting: "policy" (the model decides whether to think), "cot" (a thought is forced open) or
      "direct" (the answer marker is forced).
    desc: the progress bar's label (None: no bar).
    """
    opening = policy.opening(prompting)
    prompts = [encode_prompt(policy.tokenizer, PromptConfig(style="ram"), ex, fewshot) for ex in examples]
    completions = complete(policy, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size,
                           opening=opening, mesh=mesh, desc=desc)
    records = []
    for c in completions:
        ex = examples[c.prompt_index]
        thought, _ = split_ram_completion(c.text)
        records.append(EvalRecord(id=ex.id, difficulty=ex.difficulty, correct=grade_example(c.text, ex),
                                  num_tokens=c.num_tokens, thought=bool(thought), completion=c.text))
    return records


def summarize(records: Sequence[EvalRecord]) -> dict:
    """{"accuracy", "mean_tokens", "thought_rate", "n", "by_difficulty": {level: {...}}}."""
    def stats(rs):
        n = len(rs)
        return {"n": n, "accuracy": sum(r.correct for r in rs) / n, "mean_tokens": sum(r.num_tokens for r in rs) / n,
                "thought_rate": sum(r.thought for r in rs) / n}

    by_level = defaultdict(list)
    for r in records:
        by_level[r.difficulty].append(r)
    summary = stats(records)
    summary["by_difficulty"] = {level: stats(rs) for level, rs in sorted(by_level.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))}
    return summary


def results_table(summaries: dict[str, dict]) -> str:
    """A Markdown table: one row per method, overall then per difficulty (accuracy / mean tokens)."""
    levels = sorted({lvl for s in summaries.values() for lvl in s["by_difficulty"] if lvl is not None})
    header = ["method", "accuracy", "mean tokens", "thought rate"] + [f"d={lvl} acc / tok" for lvl in levels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, s in summaries.items():
        cells = [method, f"{100 * s['accuracy']:.1f}%", f"{s['mean_tokens']:.1f}", f"{100 * s['thought_rate']:.0f}%"]
        for lvl in levels:
            d = s["by_difficulty"].get(lvl)
            cells.append("-" if d is None else f"{100 * d['accuracy']:.0f}% / {d['mean_tokens']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_tokens_by_difficulty(summaries: dict[str, dict], path: Path) -> Path:
    """A PNG of mean generated tokens against difficulty, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, s in summaries.items():
        levels = [lvl for lvl in s["by_difficulty"] if lvl is not None]
        ax.plot(levels, [s["by_difficulty"][lvl]["mean_tokens"] for lvl in levels], marker="o", label=method)
    ax.set_xticks(sorted({lvl for s in summaries.values() for lvl in s["by_difficulty"] if lvl is not None}))
    ax.set_xlabel("difficulty")
    ax.set_ylabel("mean generated tokens")
    ax.set_title("Generated tokens by difficulty")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_records(path: Path, records: Sequence[EvalRecord]) -> None:
    """Every evaluated completion as JSONL (atomically)."""
    write_jsonl_atomic(path, (dataclasses.asdict(r) for r in records))
