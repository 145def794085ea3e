"""Greedy evaluation of a policy: accuracy and generated tokens, overall and per difficulty.

Grading is strict and lenient side by side. Strict: the completion keeps its format (a closed
thought, if any, then the answer in its place: after "[Assistant]" in the text format, the rest of
the assistant turn in chat) and the answer there is right. Lenient: the graders' documented
fallback (`metajax.data.graders.final_answer_span`: the first "Answer:" line, else the whole text)
also reads answers the model stated outside the format. Each completion that breaks the format gets
one failure kind: "unclosed_thought" (a thought opened and never closed), "no_answer_marker" (the
text format's "[Assistant]" never came), "cut_at_budget" (the answer was still running when the
token budget ran out).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from metajax.data.example import Example
from metajax.data.graders import extract_answer, grade_example, split_ram_completion
from metajax.data.formats import ANSWER_MARKER, THOUGHT_CLOSE, THOUGHT_OPEN, USER_MARKER
from metajax.files import write_jsonl_atomic, write_text_atomic, writing
from metajax.host import is_main_process
from metajax.sampling.policy import Policy
from metajax.sampling.rollouts import Completion, complete
from metajax.sampling.sampler import StopReason

FAILURE_KINDS = ("unclosed_thought", "no_answer_marker", "cut_at_budget")


@dataclasses.dataclass(frozen=True)
class EvalRecord:
    """One evaluated question.

    correct: strict (the format held and its answer is right); lenient_correct: by the fallback too.
    num_tokens: generated, the forced opening included, up to the end of the answer line.
    thought: whether the completion reasoned before answering.
    completion: the text graded (cut after the answer line); raw_completion: all that was generated.
    extracted: the answer the graders read (lenient), or None; gold: the gold answer.
    failure: the format failure (`FAILURE_KINDS`), or None.
    prompt: what the model saw, special tokens included (the chat template's, BOS).
    """

    id: str
    difficulty: int | None
    correct: bool
    num_tokens: int
    thought: bool
    completion: str
    lenient_correct: bool
    raw_completion: str
    extracted: str | None
    gold: str
    failure: str | None
    prompt: str


def evaluate(policy: Policy, examples: Sequence[Example], *, prompting: str = "policy", max_new_tokens: int = 512,
             batch_size: int = 64, fewshot: Sequence[Example] = (), mesh=None, desc: str | None = None
             ) -> list[EvalRecord]:
    """Greedy completions of `examples`, graded (RaM paper: greedy, zero-shot, max 512 tokens).

    prompting: "policy" (the model decides whether to think), "cot" (a thought is forced open) or
      "direct" (the answer marker is forced, and the shots show answers only: direct few-shot).
    desc: the progress bar's label (None: no bar).
    """
    if prompting == "direct":
        fewshot = [dataclasses.replace(ex, rationale=None) for ex in fewshot]
    prompts = [policy.prompt_ids(ex, fewshot) for ex in examples]
    completions = complete(policy, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size,
                           opening=policy.opening(prompting), mesh=mesh, desc=desc)
    return [_record(c, examples[c.prompt_index], policy.decode(prompts[c.prompt_index], special=True),
                    chat=policy.prompt.chat) for c in completions]


def format_failure(completion: Completion, *, chat: bool) -> str | None:
    """The first way `completion` breaks its format (`FAILURE_KINDS`), or None when it keeps it."""
    head = completion.text.partition(USER_MARKER)[0]
    before_answer = head if chat else head.partition(ANSWER_MARKER)[0]
    if THOUGHT_OPEN in before_answer and THOUGHT_CLOSE not in before_answer:
        return "unclosed_thought"
    if not chat and ANSWER_MARKER not in head:
        return "no_answer_marker"
    answer_ended = (completion.stop_reason in (StopReason.STOP_TOKEN, StopReason.STOP_STRING)
                    or (not chat and head.endswith("\n")))
    return None if answer_ended else "cut_at_budget"


def _record(c: Completion, ex: Example, prompt: str, *, chat: bool) -> EvalRecord:
    failure = format_failure(c, chat=chat)
    lenient = grade_example(c.text, ex)
    thought, _ = split_ram_completion(c.text)
    return EvalRecord(id=ex.id, difficulty=ex.difficulty, correct=lenient and failure is None, num_tokens=c.num_tokens,
                      thought=bool(thought), completion=c.text, lenient_correct=lenient, raw_completion=c.raw_text,
                      extracted=extract_answer(c.text, ex.answer_type, choices=ex.choices), gold=ex.answer,
                      failure=failure, prompt=prompt)


def summarize(records: Sequence[EvalRecord]) -> dict:
    """{"accuracy" (strict), "lenient_accuracy", "format_failure_rate", "failures": {kind: rate},
    "mean_tokens", "thought_rate", "n", "by_difficulty": {level: {...}}}."""
    def stats(rs):
        n = len(rs)
        return {"n": n, "accuracy": sum(r.correct for r in rs) / n,
                "lenient_accuracy": sum(r.lenient_correct for r in rs) / n,
                "format_failure_rate": sum(r.failure is not None for r in rs) / n,
                "failures": {kind: sum(r.failure == kind for r in rs) / n for kind in FAILURE_KINDS},
                "mean_tokens": sum(r.num_tokens for r in rs) / n, "thought_rate": sum(r.thought for r in rs) / n}

    by_level = defaultdict(list)
    for r in records:
        by_level[r.difficulty].append(r)
    summary = stats(records)
    summary["by_difficulty"] = {level: stats(rs) for level, rs in sorted(by_level.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))}
    return summary


def results_table(summaries: dict[str, dict]) -> str:
    """A Markdown table: one row per method, overall then per difficulty (accuracy / mean tokens)."""
    levels = sorted({lvl for s in summaries.values() for lvl in s["by_difficulty"] if lvl is not None})
    header = (["method", "accuracy", "lenient", "format failures", "mean tokens", "thought rate"]
              + [f"d={lvl} acc / tok" for lvl in levels])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, s in summaries.items():
        cells = [method, f"{100 * s['accuracy']:.1f}%", f"{100 * s['lenient_accuracy']:.1f}%",
                 f"{100 * s['format_failure_rate']:.1f}%", f"{s['mean_tokens']:.1f}", f"{100 * s['thought_rate']:.0f}%"]
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
    # Methods often coincide (cot and star on the toy world): each gets its own marker, line style and
    # size, so a line drawn over another still shows.
    styles = [("o", "-", 9), ("s", "--", 7), ("^", ":", 6), ("D", "-.", 5), ("v", "-", 4), ("x", "--", 8)]
    for (method, s), (marker, line, size) in zip(summaries.items(), itertools.cycle(styles)):
        levels = [lvl for lvl in s["by_difficulty"] if lvl is not None]
        ax.plot(levels, [s["by_difficulty"][lvl]["mean_tokens"] for lvl in levels], marker=marker, linestyle=line,
                markersize=size, markerfacecolor="none", label=method)
    ax.set_xticks(sorted({lvl for s in summaries.values() for lvl in s["by_difficulty"] if lvl is not None}))
    ax.set_xlabel("difficulty")
    ax.set_ylabel("mean generated tokens")
    ax.set_title("Generated tokens by difficulty")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Writes a matplotlib figure as PNG atomically (a temporary file, then a rename) and closes it;
    only process 0 of a multi-process run writes."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        if is_main_process():
            fig.tight_layout()
            with writing(path, "the plot"):
                fig.savefig(tmp)
                tmp.replace(path)
    finally:
        if is_main_process():
            tmp.unlink(missing_ok=True)  # a failed save's partial file
        plt.close(fig)
    return path


def write_records(path: Path, records: Sequence[EvalRecord]) -> None:
    """Every evaluated completion as JSONL (atomically)."""
    write_jsonl_atomic(path, (dataclasses.asdict(r) for r in records))


def read_records(path: Path) -> list[EvalRecord]:
    """The records `write_records` wrote."""
    return [EvalRecord(**json.loads(line)) for line in Path(path).read_text().splitlines() if line]


class FinishedEvaluations:
    """Which methods' `eval_<method>.jsonl` a run directory already holds from a run of the same
    settings (`.eval_finished.json`: method -> fingerprint), so that a rerun of a killed run
    evaluates only what is left. Read once, on creation, then kept in memory: every process of a
    multi-process run takes the same decisions, and process 0 alone writes."""

    def __init__(self, run_dir: Path, settings: str):
        self.run_dir, self.settings = Path(run_dir), settings
        self.path = self.run_dir / ".eval_finished.json"
        self._finished = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _fingerprint(self, method: str) -> str:
        return hashlib.sha256(f"{method}\n{self.settings}".encode()).hexdigest()

    def records(self, method: str) -> list[EvalRecord] | None:
        """The method's records from an earlier run of these settings, or None."""
        path = self.run_dir / f"eval_{method}.jsonl"
        if self._finished.get(method) != self._fingerprint(method) or not path.is_file():
            return None
        return read_records(path)

    def finished(self, method: str, records: Sequence[EvalRecord]) -> None:
        """Writes the method's records, then marks them finished."""
        write_records(self.run_dir / f"eval_{method}.jsonl", records)
        self._finished[method] = self._fingerprint(method)
        write_text_atomic(self.path, json.dumps(self._finished, indent=1) + "\n")
