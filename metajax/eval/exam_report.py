"""ROI-Reasoning's results as people read them: a table per setting and three plots."""

from __future__ import annotations

import math
import re
from pathlib import Path

from metajax.eval.evaluate import save_figure
from metajax.eval.exam_metrics import FIGURES

_COLUMNS = {"score": "score", "accuracy": "accuracy", "budget_accuracy": "budget acc.", "regret": "regret",
            "oracle_gap": "oracle gap", "level_accuracy": "level acc.", "skip_rate": "skip rate",
            "mean_tokens": "tokens"}


def results_markdown(results: dict[str, dict[str, dict]]) -> str:
    """One table per "<ordering>/B=<budget>" setting: each method's figures with 95% intervals."""
    lines = []
    for setting, methods in results.items():
        lines += [f"### {setting}", "", "| method | " + " | ".join(_COLUMNS[f] for f in FIGURES) + " |",
                  "|---" * (len(FIGURES) + 1) + "|"]
        for method, s in methods.items():
            cells = [_cell(s[f], s["ci"][f], tokens=f == "mean_tokens") for f in FIGURES]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value: float, interval, *, tokens: bool) -> str:
    if value is None or math.isnan(value):
        return "-"
    fmt = "{:.1f}" if tokens else "{:.3f}"
    low, high = interval
    if math.isnan(low):
        return fmt.format(value)
    return f"{fmt.format(value)} [{fmt.format(low)}, {fmt.format(high)}]"


def plot_results(results: dict[str, dict[str, dict]], out_dir: Path) -> list[Path]:
    """score_by_budget.png, tokens_by_position.png and level_confusion.png in `out_dir`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [(m.group(1), int(m.group(2)), key) for key in results
                for m in [re.fullmatch(r"(\w+)/B=(\d+)", key)] if m]
    orderings = sorted({o for o, _, _ in settings}, key=[o for o, _, _ in settings].index)
    paths = []

    fig, axes = plt.subplots(1, len(orderings), figsize=(5 * len(orderings), 4), dpi=120, squeeze=False)
    for ax, ordering in zip(axes[0], orderings):
        chosen = sorted((b, key) for o, b, key in settings if o == ordering)
        methods = list(results[chosen[0][1]])
        for method in methods:
            ax.plot([b for b, _ in chosen], [results[key][method]["score"] for _, key in chosen], marker="o",
                    label=method)
        ax.set(title=f"{ordering} ordering", xlabel="budget (tokens)", ylabel="score", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    paths.append(save_figure(fig, out_dir / "score_by_budget.png"))

    fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 4), dpi=120, squeeze=False)
    for ax, (_, _, key) in zip(axes[0], settings):
        methods = [m for m, s in results[key].items() if "tokens_by_position" in s]
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            tokens = results[key][method]["tokens_by_position"]
            ax.bar([p + i * width for p in range(len(tokens))], tokens, width=width, label=method)
        ax.set(title=key, xlabel="question position", ylabel="tokens spent")
        ax.set_xticks([p + 0.4 - width / 2 for p in range(len(tokens))], [f"P{p + 1}" for p in range(len(tokens))])
    axes[0][-1].legend(fontsize=7)
    paths.append(save_figure(fig, out_dir / "tokens_by_position.png"))

    key = settings[0][2]
    trained = [m for m in ("mft", "mft_rarl") if m in results[key]] or [
        m for m, s in results[key].items() if "level_confusion" in s][:1]
    if trained:
        fig, axes = plt.subplots(1, len(trained), figsize=(4.5 * len(trained), 4), dpi=120, squeeze=False)
        for ax, method in zip(axes[0], trained):
            matrix = results[key][method]["level_confusion"]
            ax.imshow(matrix, cmap="Blues")
            for r, row in enumerate(matrix):
                for c, count in enumerate(row):
                    ax.text(c, r, str(count), ha="center", va="center", fontsize=8)
            ax.set(title=f"{method}, {key}", xlabel="actual level", ylabel="predicted level")
            ax.set_yticks(range(len(matrix)), [str(k) for k in range(len(matrix) - 1)] + ["none"])
        paths.append(save_figure(fig, out_dir / "level_confusion.png"))
    return paths

