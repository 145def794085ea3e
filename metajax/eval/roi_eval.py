"""ROI-Reasoning's evaluation (PAPERS.md section 2): every method on the same test exams at each
ordering and budget, and again reordered easy-first for regret.

The methods:

- `cot_all`: the base forced to think on every question in order until the budget runs out; its
  level is, per tier, the level its thoughts reach on average on training questions of that tier;
- `direct_all`: the base forced to answer every question directly, announcing Level-0;
- `base`: the base's own free answer to the exam prompt; `plan_and_solve`, `least_to_most`: the
  same with the method's sentence added to the instructions (real models);
- `mft`, `mft_rarl`: the trained policies, free;
- `mft_knapsack`: MFT predicts each question's level alone; the levels' centroid costs are packed
  in ascending order while they fit the budget, the rest skipped; MFT answers the solved ones;
- `oracle`: the exact OS-MCKP value (`metajax.envs.exam.oracle_value`) of each exam, with success and
  cost per action (each level tag forced, or the skip) estimated from the last trained policy's
  own answers to each question asked alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from metajax.data.example import Example
from metajax.data.formats import EXAM_FORMATS
from metajax.data.prompts import LEAST_TO_MOST_TRIGGER, PLAN_AND_SOLVE_TRIGGER
from metajax.envs.answers import ExamOutcome
from metajax.envs.exam import ORDERINGS, Exam, greedy_knapsack, make_exams, oracle_value
from metajax.envs.sitting import Action, ExamRules, predict_levels, sit, sit_planned
from metajax.envs.toy_exam import TOY_LEVEL_BOUNDS
from metajax.eval.exam_metrics import exam_summary
from metajax.files import write_jsonl_atomic
from metajax.progress import phase
from metajax.rewards.exam import level_of_tokens
from metajax.sampling.policy import Policy

ROI_METHODS: tuple[str, ...] = ("base", "plan_and_solve", "least_to_most", "cot_all", "direct_all", "mft",
                                "mft_knapsack", "mft_rarl", "oracle")
# The prompting baselines' sentences, added to the exam instructions of the base model.
TRIGGERS = {"plan_and_solve": PLAN_AND_SOLVE_TRIGGER, "least_to_most": LEAST_TO_MOST_TRIGGER}


@dataclasses.dataclass(frozen=True)
class TierSpec:
    """One difficulty tier of real-data exams: a dataset file, optionally cut to some difficulties.

    Attributes:
      dataset: a `metajax.data.datasets.DATASETS` name ("gsm8k", "math", "aime", ...).
      path: the local file or directory (`python -m metajax.data.prepare --out data/` writes them).
      split: the split or file stem ("test", "train", "2025").
      difficulties: keep only these difficulty values (MATH's levels 1-5); () keeps all.
    """

    dataset: str
    path: str
    split: str = "test"
    difficulties: tuple[int, ...] = ()


def load_tiers(specs: Sequence[TierSpec], *, seed: int = 0) -> list[list[Example]]:
    """The questions of each tier, easiest first as given."""
    from metajax.data.datasets import DatasetSpec, load_dataset

    tiers = []
    for spec in specs:
        examples = load_dataset(DatasetSpec(name=spec.dataset, path=spec.path, split=spec.split, seed=seed))
        if spec.difficulties:
            examples = [ex for ex in examples if ex.difficulty in spec.difficulties]
        if not examples:
            raise ValueError(f"roi tier {spec.dataset} at {spec.path} ({spec.split}) has no questions"
                             + (f" of difficulty {list(spec.difficulties)}" if spec.difficulties else ""))
        tiers.append(examples)
    return tiers


@dataclasses.dataclass(frozen=True)
class ROIConfig:
    """The exams and the evaluation of `task: roi`.

    Attributes:
      format: the exam text format: "toy" (compact, for the toy world) or "roi" (the paper's).
      level_bounds: Level-k covers up to `level_bounds[k]` solution tokens (paper: 256, 512, 1024;
        the toy: 20, 60, 100).
      budgets: the hard budgets evaluated (paper: 512, 1024); training exams cycle through them.
      orderings: the test orderings (`medium`, `hard`); `easy_first` runs are added for regret.
      questions_per_exam: N (paper: 3, one per tier).
      test_exams: test sheets per setting (at least 200 for the intervals to mean much).
      train_exams: RARL's training sheets (MFT's stage 2 has its own count).
      centroid_costs: the knapsack baseline's cost per level (None: the midpoints of the level
        ranges, which are the paper's 128/384/768 for its bounds).
      eval_cap: tokens an evaluated exam may generate, for the uncut accuracy (None: N times the
        last level bound, at least the budget); budgeted figures read only the first B tokens.
      oracle_samples, oracle_temperature: answers per (question, action) for the oracle's
        estimates, and their temperature (1 sample at 0: exact for the greedy policies evaluated).
      cot_level_questions: training questions per tier that set `cot_all`'s levels.
      eval_batch_size: exams per generation call.
      train: run MFT and RARL; False evaluates the configured checkpoint itself as `mft` and
        `mft_rarl` (an eval-only run).
      methods: the rows of the results, from `ROI_METHODS`.
      train_tiers, test_tiers: real-data tiers (`TierSpec`), easiest first; empty: the toy world's
        tiers (`metajax.envs.toy_exam`).
      balanced_toy_tiers: the toy's training tiers hold each operand count equally often, as its test
        tiers do (`toy_exam_splits(balanced=...)`); False keeps the world's raw mix (4-operand sums
        outnumber 3-operand ones about 4 to 1 in the medium tier).
    """

    format: str = "toy"
    level_bounds: tuple[int, ...] = TOY_LEVEL_BOUNDS
    budgets: tuple[int, ...] = (170, 240)
    orderings: tuple[str, ...] = ("medium", "hard")
    questions_per_exam: int = 3
    test_exams: int = 200
    train_exams: int = 512
    centroid_costs: tuple[float, ...] | None = None
    eval_cap: int | None = None
    oracle_samples: int = 1
    oracle_temperature: float = 0.0
    cot_level_questions: int = 32
    eval_batch_size: int = 256
    train: bool = True
    methods: tuple[str, ...] = ("cot_all", "direct_all", "mft", "mft_knapsack", "mft_rarl", "oracle")
    train_tiers: tuple[TierSpec, ...] = ()
    test_tiers: tuple[TierSpec, ...] = ()
    balanced_toy_tiers: bool = True

    def __post_init__(self):
        if self.format not in EXAM_FORMATS:
            raise ValueError(f"roi.format {self.format!r} is not one of {sorted(EXAM_FORMATS)}")
        bounds = self.level_bounds
        if not bounds or any(b <= 0 for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"roi.level_bounds {bounds} must be positive and strictly increasing")
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"roi.budgets {self.budgets} must be one or more budgets of at least 1 token; "
                             "a budget below zero cannot be sat")
        bad = [o for o in self.orderings if o not in ORDERINGS or o == "easy_first"]
        if bad or not self.orderings:
            raise ValueError(f"roi.orderings {self.orderings}: choose from medium, hard (easy_first is added "
                             "for regret)")
        unknown = [m for m in self.methods if m not in ROI_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"roi.methods: unknown {unknown}; choose from {', '.join(ROI_METHODS)}")
        if self.centroid_costs is not None and len(self.centroid_costs) != len(bounds):
            raise ValueError(f"roi.centroid_costs needs one cost per solving level ({len(bounds)})")
        for name in ("questions_per_exam", "test_exams", "train_exams", "oracle_samples", "cot_level_questions",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"roi.{name} must be >= 1, got {getattr(self, name)}")
        labels = EXAM_FORMATS[self.format].labels
        if labels and self.questions_per_exam > len(labels):
            raise ValueError(f"roi.questions_per_exam {self.questions_per_exam}: the {self.format} exam format labels "
                             f"at most {len(labels)} questions ({labels})")
        if self.eval_cap is not None and self.eval_cap < max(self.budgets):
            raise ValueError(f"roi.eval_cap {self.eval_cap} must be at least the largest budget {max(self.budgets)}")

    @property
    def rules(self) -> ExamRules:
        return ExamRules(EXAM_FORMATS[self.format], tuple(self.level_bounds))

    @property
    def centroids(self) -> tuple[float, ...]:
        if self.centroid_costs is not None:
            return tuple(self.centroid_costs)
        edges = (0,) + tuple(self.level_bounds)
        return tuple((lo + hi) / 2 for lo, hi in zip(edges, edges[1:]))

    def cap(self, budget: int) -> int:
        return self.eval_cap or max(budget, self.questions_per_exam * self.level_bounds[-1])


def training_sheets(tiers: Sequence[Sequence[Example]], count: int, config: ROIConfig, *, seed: int,
                    prefix: str, budgets: Sequence[int] | None = None) -> list[tuple[Exam, int]]:
    """`count` training (exam, budget) pairs: half in each test ordering, `budgets` (default: the
    run's) in turn."""
    budgets = tuple(budgets or config.budgets)
    per = -(-count // len(config.orderings))
    exams = [exam for k, ordering in enumerate(config.orderings)
             for exam in make_exams(tiers, per, questions_per_exam=config.questions_per_exam, ordering=ordering,
                                    seed=seed + k, prefix=f"{prefix}-{ordering}")]
    order = np.random.default_rng(seed).permutation(len(exams))[:count]
    return [(exams[i], budgets[n % len(budgets)]) for n, i in enumerate(order.tolist())]


def test_sheets(tiers: Sequence[Sequence[Example]], config: ROIConfig, *, seed: int) -> dict[str, list[Exam]]:
    """The test exams of every ordering (and easy_first): the same questions, rearranged."""
    return {ordering: make_exams(tiers, config.test_exams, questions_per_exam=config.questions_per_exam,
                                 ordering=ordering, seed=seed, prefix="test")
            for ordering in tuple(config.orderings) + ("easy_first",)}


def evaluate_roi(config: ROIConfig, policies: dict[str, Policy], train_tiers: Sequence[Sequence[Example]],
                 sheets: dict[str, list[Exam]], *, mesh=None, progress: Callable[[str], None] = print,
                 records_dir: Path | None = None) -> dict:
    """Every configured method at every (ordering, budget); returns {"<ordering>/B=<budget>": {method:
    summary}}. `policies` holds "base" and, as trained, "mft" and "mft_rarl". With `records_dir`, each
    sitting's exams are written there as `<ordering>_B<budget>_<method>.jsonl` (`exam_records`)."""
    rules = config.rules
    runner = _Runner(config, rules, policies, train_tiers, mesh, records_dir)
    results = {}
    for budget in config.budgets:
        for ordering in config.orderings:
            key, row = f"{ordering}/B={budget}", {}
            for method in config.methods:
                if method == "oracle":
                    values = runner.oracle(sheets[ordering], budget)
                    row[method] = _oracle_summary(values)
                    continue
                outcomes = runner.outcomes(method, ordering, sheets[ordering], budget)
                easy = runner.outcomes(method, "easy_first", sheets["easy_first"], budget)
                oracle = float(np.mean(runner.oracle(sheets[ordering], budget))) if "oracle" in config.methods else None
                row[method] = exam_summary(outcomes, easy_first=easy, oracle=oracle, num_levels=rules.num_levels)
                progress(f"[roi] {key} {method}: score {row[method]['score']:.3f}, "
                         f"budget accuracy {row[method]['budget_accuracy']:.3f}, regret {row[method]['regret']:.3f}")
            results[key] = row
    return results


class _Runner:
    """Sits each method's exams once per (method, ordering, budget), and estimates the oracle's cost
    model once per question."""

    def __init__(self, config: ROIConfig, rules: ExamRules, policies: dict[str, Policy],
                 train_tiers: Sequence[Sequence[Example]], mesh, records_dir: Path | None):
        self.config, self.rules, self.policies, self.train_tiers, self.mesh = config, rules, policies, train_tiers, mesh
        self.records_dir = records_dir
        self._outcomes: dict[tuple, list[ExamOutcome]] = {}
        self._oracle: dict[tuple, list[float]] = {}
        self._estimates: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._tier_levels: list[int] | None = None

    def outcomes(self, method: str, ordering: str, exams: list[Exam], budget: int) -> list[ExamOutcome]:
        key = (method, ordering, budget)
        if key not in self._outcomes:
            self._outcomes[key] = self._sit(method, exams, budget)
            if self.records_dir is not None:
                decode = self.policies["base"].decode  # every policy of a run shares the base's tokenizer
                write_jsonl_atomic(self.records_dir / f"{ordering}_B{budget}_{method}.jsonl",
                                   exam_records(exams, self._outcomes[key], decode))
        return self._outcomes[key]

    def _sit(self, method: str, exams: list[Exam], budget: int) -> list[ExamOutcome]:
        config, rules = self.config, self.rules
        budgets, caps = [budget] * len(exams), [config.cap(budget)] * len(exams)
        kwargs = dict(cap=caps, batch_size=config.eval_batch_size, mesh=self.mesh)
        if method in ("base", "mft", "mft_rarl"):
            return sit(self._policy(method), rules, exams, budgets, **kwargs)
        if method in TRIGGERS:
            if rules.format.name != "roi":
                raise ValueError(f"ROI method {method} adds its sentence to the roi exam prompt; the toy format has none")
            return sit(self._policy("base"), rules, exams, budgets, trigger=TRIGGERS[method], **kwargs)
        if method == "cot_all":
            levels = self.tier_levels()
            plans = [[Action(levels[t], "think") for t in exam.tiers] for exam in exams]
        elif method == "direct_all":
            plans = [[Action(0, "direct") for _ in exam.questions] for exam in exams]
        elif method == "mft_knapsack":
            plans = self._knapsack_plans(exams, budget)
            return sit_planned(self._policy("mft"), rules, exams, budgets, plans, **kwargs)
        else:
            raise ValueError(f"unknown ROI method {method!r}")
        return sit_planned(self._policy("base"), rules, exams, budgets, plans, **kwargs)

    def _policy(self, name: str) -> Policy:
        if name not in self.policies:
            raise ValueError(f"ROI method needs the {name} policy, which this run did not train; add it to "
                             "roi.methods' training, or set roi.train")
        return self.policies[name]

    def tier_levels(self) -> list[int]:
        """`cot_all`'s level per tier: the level of the base's mean thought length on training
        questions of that tier."""
        if self._tier_levels is None:
            n = self.config.cot_level_questions
            questions = [q for tier in self.train_tiers for q in tier[:n]]
            exams = [Exam(f"cot-{i}", (q,), (0,)) for i, q in enumerate(questions)]
            budget = self.config.level_bounds[-1] * 2
            with phase("roi", f"cot_all levels: the base thinking on {len(exams)} training questions"):
                outcomes = sit_planned(self._policy("base"), self.rules, exams, [budget] * len(exams),
                                       [[Action(0, "think")] for _ in exams], batch_size=self.config.eval_batch_size,
                                       mesh=self.mesh)
            tokens = np.array([o.solution_tokens[0] for o in outcomes], np.float64)
            sizes = np.cumsum([0] + [len(tier[:n]) for tier in self.train_tiers])
            means = [tokens[a:b].mean() for a, b in zip(sizes, sizes[1:])]
            levels = np.asarray(level_of_tokens(np.round(means).astype(np.int32), self.config.level_bounds))
            self._tier_levels = [min(int(k), self.rules.skip_level - 1) for k in levels]
        return self._tier_levels

    def _knapsack_plans(self, exams: list[Exam], budget: int) -> list[list[Action]]:
        questions = list({q.id: q for exam in exams for q in exam.questions}.values())
        levels = dict(zip((q.id for q in questions),
                          predict_levels(self._policy("mft"), self.rules, questions, budget,
                                         batch_size=self.config.eval_batch_size, mesh=self.mesh)))
        centroids = self.config.centroids
        plans = []
        for exam in exams:
            predicted = [levels[q.id] for q in exam.questions]
            costs = [centroids[k] if 0 <= k < len(centroids) else None for k in predicted]
            solve = greedy_knapsack(costs, budget)
            plans.append([Action(k, "free") if s else Action(self.rules.skip_level) for k, s in zip(predicted, solve)])
        return plans

    def oracle(self, exams: list[Exam], budget: int) -> list[float]:
        """Each exam's optimal expected per-question score under the estimated cost model."""
        key = (exams[0].id, tuple(q.id for q in exams[0].questions), len(exams), budget)
        if key not in self._oracle:
            self._estimate([q for exam in exams for q in exam.questions])
            separator = len(self._policy("base").encode(self.rules.format.separator)) if self.rules.format.separator else 0
            values = []
            for exam in exams:
                success = np.stack([self._estimates[q.id][0] for q in exam.questions])
                costs = [self._estimates[q.id][1] + separator * (j > 0) for j, q in enumerate(exam.questions)]
                width = int(max(c.max() for c in costs)) + 1
                pmf = np.zeros(success.shape + (width,))
                for j, c in enumerate(costs):
                    for a in range(c.shape[0]):
                        np.add.at(pmf[j, a], c[a], 1.0 / c.shape[1])
                values.append(oracle_value(success, pmf, budget)[0] / len(exam.questions))
            self._oracle[key] = values
        return self._oracle[key]

    def _estimate(self, questions: Sequence[Example]) -> None:
        """(success float[A], costs int[A, K]) per question: each action forced on the question asked
        alone, K answers each, by the last trained policy."""
        todo = list({q.id: q for q in questions if q.id not in self._estimates}.values())
        if not todo:
            return
        policy = self.policies.get("mft_rarl") or self.policies.get("mft") or self.policies["base"]
        config, rules = self.config, self.rules
        actions = [Action(k, "free") for k in range(rules.skip_level)] + [Action(rules.skip_level)]
        exams = [Exam(f"oracle-{i}", (q,), (0,)) for i, q in enumerate(todo) for _ in actions]
        plans = [[a] for _ in todo for a in actions]
        budget = config.cap(max(config.budgets))
        with phase("roi", f"oracle estimates: {len(actions)} actions x {config.oracle_samples} answers for each of "
                          f"{len(todo)} questions"):
            draws = [sit_planned(policy, rules, exams, [budget] * len(exams), plans, batch_size=config.eval_batch_size,
                                 mesh=self.mesh, temperature=config.oracle_temperature, rng=jax.random.key(k))
                     for k in range(config.oracle_samples)]
        stop = set(policy.stop_ids)
        for i, q in enumerate(todo):
            rows = [[draw[i * len(actions) + a] for draw in draws] for a in range(len(actions))]
            success = np.array([np.mean([o.score[0] for o in row]) for row in rows])
            costs = np.array([[int(o.segment_end[0]) - (bool(o.ids) and o.ids[-1] in stop) for o in row]
                              for row in rows])
            self._estimates[q.id] = (success, costs)


def exam_records(exams: Sequence[Exam], outcomes: Sequence[ExamOutcome], decode: Callable[[list[int]], str]
                 ) -> list[dict]:
    """One JSON-ready record per sat exam, for people reading a run: the questions and golds, the
    completion as generated (before any cut at the budget), and per question the announced and the
    actual level, the solution tokens, whether it was skipped, right, right within the budget, and
    its score r_i."""
    return [{"exam": exam.id, "questions": [q.question for q in exam.questions], "gold": [q.answer for q in exam.questions],
             "tiers": list(exam.tiers), "completion": decode(list(o.ids)), "tokens": int(o.tokens),
             "truncated": bool(o.truncated), "predicted_level": o.predicted_level.tolist(),
             "actual_level": o.actual_level.tolist(), "solution_tokens": o.solution_tokens.tolist(),
             "skipped": o.skipped.tolist(), "correct": o.correct.tolist(), "budget_correct": o.budget_correct.tolist(),
             "score": o.score.tolist()} for exam, o in zip(exams, outcomes)]


def _oracle_summary(values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict:
    values = np.asarray(values, np.float64)
    draws = values[np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))].mean(-1)
    nan = float("nan")
    summary = {"score": float(values.mean()), "accuracy": nan, "budget_accuracy": nan, "regret": nan,
               "oracle_gap": 0.0, "level_accuracy": nan, "skip_rate": nan, "mean_tokens": nan,
               "n_exams": len(values)}
    summary["ci"] = {name: [nan, nan] for name in summary if name != "n_exams"}
    summary["ci"]["score"] = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    summary["ci"]["oracle_gap"] = [0.0, 0.0]
    return summary
