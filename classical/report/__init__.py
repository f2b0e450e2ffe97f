"""Scores, the report (report.json and what is rendered from it) and its plots."""

from classical.report.files import add_rows, best_row, format_table, load_report, new_report, verdict, write_report
from classical.report.metrics import latency_ms, score

__all__ = ["add_rows", "best_row", "format_table", "latency_ms", "load_report", "new_report", "score", "verdict",
           "write_report"]
