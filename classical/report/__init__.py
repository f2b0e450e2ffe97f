"""Scores with their intervals, the report (report.json and what is rendered from it) and its plots.

`errors_nearest_train` gives the record of the best row's most confident test errors with their nearest
training photos; `write_report` keeps it in report.json (`classical.report.neighbours`).
"""

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
from classical.report.neighbours import errors_nearest_train
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
    "errors_nearest_train",
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
