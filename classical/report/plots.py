"""The report's pictures: accuracy against fit time, the best model's confusion matrix, F1 per class, learning curve.

Imports matplotlib: `classical.report` loads this module only when plots are drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from classical.report.document import best_row

KIND_COLORS = {"classical": "tab:blue", "neural": "tab:orange"}


def render_plots(report: dict[str, Any], run: Path) -> list[Path]:
    """Draw the charts into run/plots/ (the learning curve when the report has one) and return their paths."""
    folder = run / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        accuracy_vs_fit_time(report, folder / "accuracy_vs_fit_time.png"),
        confusion(report, folder / "confusion_matrix.png"),
        per_class_f1(report, folder / "per_class_f1.png"),
    ]
    if (report.get("learning_curve") or {}).get("models"):
        paths.append(learning_curve(report, folder / "learning_curve.png"))
    return paths


def training_seconds(row: dict[str, Any]) -> float:
    """A row's training cost like with like: fit time plus its share of the embedding time when it is known."""
    with_embedding = row.get("fit_seconds_with_embedding")
    return float(with_embedding if with_embedding is not None else row["fit_seconds"])


def accuracy_vs_fit_time(report: dict[str, Any], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in report["models"]:
        x, y = training_seconds(row), row["test_accuracy"]
        ci = row.get("test_accuracy_ci")
        yerr = None if not ci else [[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]]
        axes.errorbar(
            x,
            y,
            yerr=yerr,
            fmt="o",
            markersize=7,
            capsize=4,
            color=KIND_COLORS.get(row["kind"], "gray"),
            label=row["kind"],
        )
        axes.annotate(row["name"], (x, y), textcoords="offset points", xytext=(6, 4))
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes.legend(unique.values(), unique.keys(), loc="lower right")
    axes.set_xscale("log")
    with_embedding = any(row.get("fit_seconds_with_embedding") is not None for row in report["models"])
    axes.set_xlabel(
        "training seconds, selection included (log scale)"
        + ("\nrows on embeddings: + their share of the time to embed train+val" if with_embedding else "")
    )
    axes.set_ylabel("test accuracy (bars: 95% Wilson interval)")
    axes.set_title(f"Accuracy vs training cost (n_test = {report['split']['n_test']})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def confusion(report: dict[str, Any], path: Path) -> Path:
    best = best_row(report)
    if best is None:
        raise ValueError("the report has no model rows to draw a confusion matrix of")
    matrix = np.array(best["confusion_matrix"])
    names = report["class_names"]
    figure, axes = plt.subplots(figsize=(1.1 * len(names) + 3, 1.0 * len(names) + 2.5))
    image = axes.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"Confusion matrix of {best['name']} (test accuracy {best['test_accuracy']:.3f})")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def per_class_f1(report: dict[str, Any], path: Path) -> Path:
    names = report["class_names"]
    rows = sorted(report["models"], key=lambda row: -row["test_accuracy"])
    width = 0.8 / len(rows)
    figure, axes = plt.subplots(figsize=(max(8, 1.3 * len(names) + 2), 4.5))
    for k, row in enumerate(rows):
        axes.bar(
            np.arange(len(names)) + (k - (len(rows) - 1) / 2) * width,
            [row["per_class_f1"][n] for n in names],
            width,
            label=row["name"],
        )
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_ylabel("F1 on the test split")
    axes.set_ylim(0, 1.05)
    axes.set_title("F1 per class")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def learning_curve(report: dict[str, Any], path: Path) -> Path:
    """Mean test accuracy against labelled images per class (log x), one line per model, its band ± 1 std."""
    curve = report["learning_curve"]
    classes = len(report["class_names"])
    x = np.array([images / classes for images in curve["images"]], dtype=float)
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, means in curve["models"].items():
        kept = [i for i, mean in enumerate(means) if mean is not None]
        if not kept:
            continue
        mean = np.array([means[i] for i in kept])
        std = np.array([curve["std"][name][i] or 0.0 for i in kept])
        semi = curve["kinds"].get(name) == "semi-supervised"
        (line,) = axes.plot(x[kept], mean, "--" if semi else "-", marker="o", markersize=4, label=name)
        axes.fill_between(x[kept], mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    axes.set_xscale("log")
    labels = [f"all\n({v:.0f})" if n == "all" else str(n) for n, v in zip(curve["per_class"], x)]
    axes.set_xticks(x, labels)
    axes.minorticks_off()
    axes.set_xlabel("labelled training images per class (log scale)")
    axes.set_ylabel(f"test accuracy (mean of {curve['seeds']} seeds, band ± 1 std)")
    axes.set_title(f"Learning curve (n_test = {report['split']['n_test']}; dashed: semi-supervised)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
