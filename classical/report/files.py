"""The comparison report: report.json (the contract for scripts), and report.csv and report.md rendered from it.

report.json::

    {"backbone": KEY, "cache": PATH, "class_names": [...],
     "split": {"id", "n_train", "n_val", "n_test", "seed", "fractions"},
     "created", "updated",
     "models": [{"name", "kind" ("classical" | "neural"), "description",
                 "test_accuracy", "macro_f1", "balanced_accuracy", "log_loss",
                 "cv_mean", "cv_std", "selection", "fit_seconds", "predict_ms_per_image",
                 "model_bytes", "params", "model_path", "confusion_matrix", "per_class_f1", ...}]}

`cv_std` is null for neural rows (selected on the validation split, not by CV);
`predict_ms_per_image` is the head alone on embeddings for rows fitted on embeddings, the
whole network from pixels for fine-tuned rows. Rows are identified by name: adding a row
with an existing name replaces it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from embedder import utc_now

CSV_FIELDS = ("name", "kind", "test_accuracy", "macro_f1", "balanced_accuracy", "log_loss", "cv_mean", "cv_std",
              "fit_seconds", "predict_ms_per_image", "model_bytes", "params", "model_path")


def new_report(*, backbone: str, cache: str, class_names: list[str], split: dict[str, Any]) -> dict[str, Any]:
    now = utc_now()
    return {"backbone": backbone, "cache": cache, "class_names": class_names, "split": split,
            "created": now, "updated": now, "models": []}


def add_rows(report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Add model rows, replacing rows of the same name."""
    names = {row["name"] for row in rows}
    report["models"] = [row for row in report["models"] if row["name"] not in names] + rows
    report["updated"] = utc_now()


def load_report(run: Path) -> dict[str, Any]:
    path = run / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report in '{run}'; create one with `classical sweep CACHE --out {run}`.")
    return json.loads(path.read_text())


def best_row(report: dict[str, Any], kind: str | None = None) -> dict[str, Any] | None:
    rows = [row for row in report["models"] if kind is None or row["kind"] == kind]
    return max(rows, key=lambda row: (row["test_accuracy"], row["macro_f1"]), default=None)


def verdict(report: dict[str, Any]) -> str:
    """One paragraph: who wins, by how much, at what cost."""
    best = best_row(report)
    if best is None:
        return "no models yet"
    lines = [f"Best on the test split: {best['name']} ({best['kind']}), accuracy {best['test_accuracy']:.3f}, "
             f"macro-F1 {best['macro_f1']:.3f}, fitted in {best['fit_seconds']:.1f} s."]
    classical, neural = best_row(report, "classical"), best_row(report, "neural")
    if classical and neural:
        gap = 100 * (classical["test_accuracy"] - neural["test_accuracy"])
        lines.append(
            f"Best classical {classical['name']} {classical['test_accuracy']:.3f} vs best neural {neural['name']} "
            f"{neural['test_accuracy']:.3f}: {gap:+.1f} points for classical, fit time "
            f"{classical['fit_seconds']:.1f} s vs {neural['fit_seconds']:.1f} s."
        )
    n_test = report["split"]["n_test"]
    lines.append(f"One test image is {100 / n_test:.2f} points of accuracy (n_test = {n_test}).")
    return " ".join(lines)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    header = ["model", "kind", "test acc", "macro-F1", "bal. acc", "log-loss", "CV mean ± std", "fit s", "ms/img", "KB"]
    rows = [header]
    for row in sorted(report["models"], key=lambda r: -r["test_accuracy"]):
        cv = "-" if row["cv_mean"] is None else (
            f"{row['cv_mean']:.3f}" + ("" if row["cv_std"] is None else f" ± {row['cv_std']:.3f}"))
        rows.append([row["name"], row["kind"], _cell(row["test_accuracy"]), _cell(row["macro_f1"]),
                     _cell(row["balanced_accuracy"]), _cell(row["log_loss"]), cv, _cell(row["fit_seconds"], 1),
                     _cell(row["predict_ms_per_image"], 4), _cell(row["model_bytes"] / 1024, 0)])
    return rows


def format_table(report: dict[str, Any]) -> str:
    """The console table, best model first."""
    rows = table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_report(report: dict[str, Any], run: Path) -> None:
    """Draw the plots, then write report.json, report.csv and report.md into the run directory."""
    from classical.report.plots import render_plots  # matplotlib: imported only when a report is written

    plots = render_plots(report, run)
    (run / "report.json").write_text(json.dumps(report, indent=2))
    with open(run / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in report["models"]:
            writer.writerow({**row, "params": json.dumps(row["params"])})
    rows = table_rows(report)
    split = report["split"]
    markdown = [
        f"# Transfer-learning comparison: {run.name}", "",
        f"Backbone `{report['backbone']}`, cache `{report['cache']}`, classes: {', '.join(report['class_names'])}.",
        f"Split `{split['id']}`: {split['n_train']} train / {split['n_val']} validation / {split['n_test']} test images, "
        "the same for every model.", "", verdict(report), "",
        "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(row) + " |" for row in rows[1:]), "",
        "Best hyper-parameters:", "",
        *(f"- **{row['name']}** ({row['selection']}): `{json.dumps(row['params'])}`" for row in report["models"]), "",
        *(f"![{path.stem}](plots/{path.name})" for path in plots),
    ]
    (run / "report.md").write_text("\n".join(markdown) + "\n")
