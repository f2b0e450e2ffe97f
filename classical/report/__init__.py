"""Scores with their intervals, the report (report.json and what is rendered from it) and its plots."""

from classical.report.document import (
    add_rows,
    align_predictions,
    best_row,
    comparison,
    load_report,
    new_report,
    refresh,
    verdict,
)
from classical.report.metrics import latency_ms, score
from classical.report.tables import format_table
from classical.report.uncertainty import (
    bootstrap_macro_f1,
    mcnemar_exact,
    newcombe_paired_interval,
    paired_comparison,
    wilson_interval,
)
from classical.report.writing import write_report

__all__ = [
    "add_rows",
    "align_predictions",
    "best_row",
    "bootstrap_macro_f1",
    "comparison",
    "format_table",
    "latency_ms",
    "load_report",
    "mcnemar_exact",
    "new_report",
    "newcombe_paired_interval",
    "paired_comparison",
    "refresh",
    "score",
    "verdict",
    "wilson_interval",
    "write_report",
]
