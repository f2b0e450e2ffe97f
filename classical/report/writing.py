"""Writing a run's report: report.json, and report.csv, report.md and report.html rendered from it, with the plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from classical.report.curve import curve_markdown, curve_rows
from classical.report.document import refresh, verdict
from classical.report.neighbours import nearest_markdown, refresh_nearest
from classical.report.strategy import strategy_lines
from classical.report.tables import markdown_table, repeats_rows, table_rows

CSV_FIELDS = (
    "name",
    "kind",
    "test_accuracy",
    "test_accuracy_lo",
    "test_accuracy_hi",
    "macro_f1",
    "macro_f1_lo",
    "macro_f1_hi",
    "balanced_accuracy",
    "log_loss",
    "cv_mean",
    "cv_std",
    "fit_seconds",
    "fit_seconds_with_embedding",
    "predict_ms_per_image",
    "head_ms_per_image",
    "model_bytes",
    "params",
    "model_path",
)


def write_report(report: dict[str, Any], run: Path) -> None:
    """Draw the plots, then write report.json, report.csv, report.md and report.html into the run directory.

    What is derived from the rows is brought up to date first: the costs, the comparison and the best
    row's errors with their nearest training photos (`classical.report.neighbours`, read from the run's cache).
    """
    from classical.report.plots import (
        render_plots,  # matplotlib: imported only when a report is written
    )

    refresh(report)
    refresh_nearest(report, run)
    plots = render_plots(report, run)
    (run / "report.json").write_text(json.dumps(report, indent=2))
    with open(run / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in report["models"]:
            intervals = {
                f"{metric}_{end}": (row.get(f"{metric}_ci") or [None, None])[i]
                for metric in ("test_accuracy", "macro_f1")
                for i, end in enumerate(("lo", "hi"))
            }
            writer.writerow({**row, **intervals, "params": json.dumps(row.get("params"))})
    split = report["split"]
    markdown = [
        f"# Transfer-learning comparison: {run.name}",
        "",
        f"Backbone `{report['backbone']}`, cache `{report['cache']}`, classes: {', '.join(report['class_names'])}.",
        f"Split `{split['id']}`: {split['n_train']} train / {split['n_val']} validation / {split['n_test']} test images, "
        "the same for every model.",
        "",
        verdict(report),
        "",
        *markdown_table(table_rows(report)),
        "",
        "Intervals: test accuracy, 95% Wilson score interval over the test images; macro-F1, 95% percentile bootstrap "
        "over the test images (2000 resamples, seed 0).",
    ]
    compared = report.get("comparison")
    if compared:
        markdown += [
            "",
            f"Paired comparison of {compared['classical']} and {compared['neural']}: {compared['test']}; "
            f"interval of the difference: {compared['ci_method']}.",
        ]
    embedding = report.get("embedding")
    if embedding:
        if embedding.get("ms_per_image") is None:
            markdown += ["", f"Costs from pixels: backbone {embedding['method']}."]
        else:
            markdown += [
                "",
                f"Costs from pixels: the backbone takes {embedding['ms_per_image']:.2f} ms per image "
                f"({embedding['runtime']}; {embedding['pixels']}); embedding the {embedding.get('rows', '?')} "
                f"cached images takes about {embedding['seconds']:.1f} s. `ms/img pixels` = backbone + head; "
                f"`ms/img head` = the head alone on embeddings. {embedding['amortisation']}.",
            ]
    repeats = repeats_rows(report)
    if repeats:
        markdown += [
            "",
            f"## Repeats: {report['repeats']['k']} re-splits",
            "",
            f"{report['repeats']['method']}. Took {report['repeats']['seconds']:.0f} s.",
            "",
            *markdown_table(repeats),
        ]
    curve = curve_rows(report)
    markdown += curve_markdown(report, markdown_table(curve) if curve else [])
    markdown += strategy_lines(report)
    markdown += nearest_markdown(report)
    markdown += [
        "",
        "Best hyper-parameters:",
        "",
        *(
            f"- **{row['name']}** ({row.get('selection', '')}): `{json.dumps(row.get('params'))}`"
            for row in report["models"]
        ),
        "",
        *(f"![{path.stem}](plots/{path.name})" for path in plots),
    ]
    (run / "report.md").write_text("\n".join(markdown) + "\n")
    from classical.report.page import render_page  # Pillow for thumbnails: only when a report is written

    render_page(report, run, plots)
