"""The report's tables as rows of strings: the models with their intervals, and the repeats."""

from __future__ import annotations

from typing import Any

from classical.report.curve import curve_rows, curve_verdict
from classical.report.document import format_interval


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    header = [
        "model",
        "kind",
        "test acc [95% CI]",
        "macro-F1 [95% CI]",
        "bal. acc",
        "log-loss",
        "CV mean ± std",
        "fit s",
        "fit s + emb.",
        "ms/img pixels",
        "ms/img head",
        "KB",
    ]
    rows = [header]
    for row in sorted(report["models"], key=lambda r: -r["test_accuracy"]):
        cv = (
            "-"
            if row.get("cv_mean") is None
            else (f"{row['cv_mean']:.3f}" + ("" if row.get("cv_std") is None else f" ± {row['cv_std']:.3f}"))
        )
        model_bytes = row.get("model_bytes")
        rows.append(
            [
                row["name"],
                row["kind"],
                _cell(row["test_accuracy"]) + format_interval(row.get("test_accuracy_ci")),
                _cell(row["macro_f1"]) + format_interval(row.get("macro_f1_ci")),
                _cell(row.get("balanced_accuracy")),
                _cell(row.get("log_loss")),
                cv,
                _cell(row.get("fit_seconds"), 1),
                _cell(row.get("fit_seconds_with_embedding"), 1),
                _cell(row.get("predict_ms_per_image"), 3),
                _cell(row.get("head_ms_per_image"), 4),
                "-" if model_bytes is None else _cell(model_bytes / 1024, 0),
            ]
        )
    return rows


def repeats_rows(report: dict[str, Any]) -> list[list[str]]:
    """The repeats table (header first), best mean first; [] without repeats."""
    repeats = report.get("repeats")
    if not repeats or not repeats.get("models"):
        return []
    rows = [["model", f"mean acc ({repeats['k']} splits)", "std", "min", "max", "ranked first"]]
    for name, stats in sorted(repeats["models"].items(), key=lambda item: -item[1]["mean"]):
        rows.append(
            [
                name,
                _cell(stats["mean"]),
                _cell(stats["std"]),
                _cell(min(stats["accuracies"])),
                _cell(max(stats["accuracies"])),
                f"{stats['first']} / {repeats['k']}",
            ]
        )
    return rows


def _aligned(rows: list[list[str]], left: int) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_table(report: dict[str, Any]) -> str:
    """The console table, best model first (with the repeats table below it when there are repeats)."""
    text = _aligned(table_rows(report), 2)
    repeats = repeats_rows(report)
    if repeats:
        text += (
            f"\n\nRepeats: {report['repeats']['k']} re-splits, seeds {report['repeats']['seeds']}, "
            f"{report['repeats']['seconds']:.0f} s\n" + _aligned(repeats, 1)
        )
    curve = curve_rows(report)
    if curve:
        text += f"\n\n{curve_verdict(report)}\n" + _aligned(curve, 2)
    return text


def markdown_table(rows: list[list[str]]) -> list[str]:
    """Rows of cells (header first) as the lines of a Markdown table."""
    return [
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(row) + " |" for row in rows[1:]),
    ]
