"""The report's lines on how each model was searched: strategy, rows searched, search and refit seconds, budget cuts."""

from __future__ import annotations

from typing import Any


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def strategy_lines(report: dict[str, Any]) -> list[str]:
    """Markdown lines: the strategies table, the time budget's plan and the thread limits ([] for older reports)."""
    rows = [row for row in report["models"] if row.get("strategy")]
    if not rows:
        return []
    lines = [
        "",
        "## Search strategies",
        "",
        "| model | strategy | search | rows searched / fitted | search s | refit s | approximation | budget cut |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['name']} | {row['strategy']} | {row['search']} | {row['search_rows']} / {row['rows']} | "
        f"{_seconds(row.get('search_seconds'))} | {_seconds(row.get('refit_seconds'))} | "
        f"{row.get('approximation') or '-'} | {row.get('cut') or '-'} |"
        for row in rows
    ]
    planning = report.get("planning") or {}
    if planning.get("time_budget") is not None:
        lines += [
            "",
            f"Time budget {planning['time_budget']:g} s for the model fits: trial fits took "
            f"{planning['trial_seconds']:.1f} s, the plan was estimated at {planning['estimated_total']:.0f} s. "
            + ("Cut: " + "; ".join(planning["cuts"]) + "." if planning["cuts"] else "Nothing was cut."),
        ]
    threads = report.get("threads")
    if threads:
        lines += [
            "",
            (
                f"Threads: {threads['workers']} joblib workers x {threads['threads_per_worker']} BLAS/OpenMP "
                f"thread(s) each on {threads['cores']} cores; measured in the workers: "
                f"{threads.get('worker_threads')} ({threads.get('method', '')})."
            ),
        ]
    return lines
