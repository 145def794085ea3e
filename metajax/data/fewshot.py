"""Few-shot examples: the dataset's own rows with a rationale, else the shots metajax ships.

Few-shot CoT and RaM's rollouts show worked examples, so a shot needs a rationale. GSM8K, MATH and
the toy world have their own; ARC, CommonsenseQA, StrategyQA and ProofWriter have none, and get the
short shots in `metajax/assets/fewshot/` (written for this project). Too few shots for the count a
run asks for is an error, never a silent shortfall.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from metajax.data.example import Example

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "fewshot"
# Which shipped file serves each dataset (the ARC sets share one).
SHIPPED_FILES = {"arc_easy": "arc", "arc_challenge": "arc", "commonsense_qa": "commonsense_qa",
                 "strategyqa": "strategyqa", "proofwriter": "proofwriter"}
_ANSWER_TYPES = {"arc": "choice", "commonsense_qa": "choice", "strategyqa": "yes_no",
                 "proofwriter": "true_false_unknown"}


def shipped_shots(dataset: str) -> list[Example]:
    """The shots shipped for `dataset` (an empty list for a dataset that has its own rationales)."""
    name = SHIPPED_FILES.get(dataset)
    if name is None:
        return []
    rows = [json.loads(line) for line in (SHIPPED_DIR / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return [Example(id=r["id"], question=r["question"], answer=r["answer"], answer_type=_ANSWER_TYPES[name],
                    dataset=dataset, choices=tuple(r.get("choices", ())), rationale=r["rationale"]) for r in rows]


def select_fewshot(dataset: str, train: Sequence[Example], count: int, *, where: str = "") -> list[Example]:
    """The first `count` training rows with a rationale, or the shipped shots when the training rows
    have none; raises ValueError when fewer than `count` exist."""
    if count == 0:
        return []
    own = [ex for ex in train if ex.rationale]
    shots = own if own else shipped_shots(dataset)
    if len(shots) < count:
        source = (f"{len(own)} training rows with a rationale{where}" if own or dataset not in SHIPPED_FILES
                  else f"{len(shots)} shipped shots ({SHIPPED_DIR / SHIPPED_FILES[dataset]}.jsonl)")
        raise ValueError(f"data.fewshot is {count} but {dataset} has {source}; few-shot CoT and RaM rollouts "
                         f"show worked shots. Lower data.fewshot to at most {len(shots)}, or give data.train_path "
                         f"rows with rationales")
    return list(shots[:count])
