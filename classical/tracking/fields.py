"""What an MLflow run holds, read from report.json (never recomputed): params, metrics, curve steps.

Pure functions of the report's dictionaries, so what is logged can be checked without a server.
"""

from __future__ import annotations

import json
import re
from typing import Any

from classical.report import best_row

PARAM_CHARS = 6000  # MLflow's longest parameter value
ROW_METRICS = (
    "test_accuracy",
    "macro_f1",
    "balanced_accuracy",
    "log_loss",
    "n_test",
    "cv_mean",
    "cv_std",
    "fit_seconds",
    "fit_seconds_with_embedding",
    "predict_ms_per_image",
    "head_ms_per_image",
    "model_bytes",
    "search_seconds",
    "refit_seconds",
)
ROW_PARAMS = ("name", "kind", "description", "selection", "strategy", "search", "rows", "search_rows", "input_size")


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:PARAM_CHARS]


def metric_key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def run_params(report: dict[str, Any], provenance: dict[str, Any] | None = None) -> dict[str, str]:
    """The parent run's params: backbone key and provenance, split id, fractions, seed and sizes, the models."""
    split = report["split"]
    params = {
        "backbone": report["backbone"],
        "cache": report["cache"],
        "class_names": report["class_names"],
        "models": [row["name"] for row in report["models"]],
        **{f"split.{key}": split.get(key) for key in ("id", "seed", "fractions", "n_train", "n_val", "n_test")},
    }
    for key, value in (provenance or {}).items():
        params[metric_key(f"backbone.{key}")] = value
    embedding = report.get("embedding") or {}
    if embedding.get("runtime"):
        params["embedding.runtime"] = embedding["runtime"]
    if report.get("repeats"):
        params["repeats.seeds"] = report["repeats"]["seeds"]
    curve = report.get("learning_curve")
    if curve:
        params["learning_curve.per_class"] = curve["per_class"]
        params["learning_curve.seeds"] = curve["seeds"]
    return {key: _text(value) for key, value in params.items() if value is not None}


def row_params(row: dict[str, Any], report: dict[str, Any]) -> dict[str, str]:
    """A model row's params: the model, its chosen hyper-parameters (hp.*), its search and grid, the split."""
    params: dict[str, Any] = {key: row.get(key) for key in ROW_PARAMS}
    params["model"] = params.pop("name")
    grid = row.get("grid")  # reports written before it had the grid: the selection text
    params["grid"] = json.dumps(grid, sort_keys=True) if grid is not None else row.get("selection")
    params["approximation"] = row.get("approximation")
    for key, value in (row.get("params") or {}).items():
        params[metric_key(f"hp.{key}")] = value
    params |= {"backbone": report["backbone"], "split.id": report["split"]["id"], "split.seed": report["split"]["seed"]}
    return {key: _text(value) for key, value in params.items() if value is not None}


def _interval(metrics: dict[str, float], name: str, interval: Any) -> None:
    if interval and len(interval) == 2 and None not in interval:
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = float(interval[0]), float(interval[1])


def row_metrics(row: dict[str, Any], report: dict[str, Any]) -> dict[str, float]:
    """A model row's metrics: scores with their intervals, CV, costs, per-class F1 and its repeats' mean/std."""
    numbers = {key: _number(row.get(key)) for key in ROW_METRICS}
    metrics = {key: value for key, value in numbers.items() if value is not None}
    _interval(metrics, "test_accuracy", row.get("test_accuracy_ci"))
    _interval(metrics, "macro_f1", row.get("macro_f1_ci"))
    for name, f1 in (row.get("per_class_f1") or {}).items():
        if _number(f1) is not None:
            metrics[metric_key(f"f1.{name}")] = float(f1)
    repeats = ((report.get("repeats") or {}).get("models") or {}).get(row["name"])
    if repeats:
        for key in ("mean", "std", "first"):
            if _number(repeats.get(key)) is not None:
                metrics[f"repeats_{key}"] = float(repeats[key])
    return metrics


def curve_steps(report: dict[str, Any], name: str) -> list[tuple[int, float, float | None]]:
    """A model's learning curve as (labels per class, mean test accuracy, std) steps; `all` at its mean per class."""
    curve = report.get("learning_curve")
    if not curve or name not in curve.get("models", {}):
        return []
    classes = len(report["class_names"])
    steps = []
    for i, (point, mean) in enumerate(zip(curve["per_class"], curve["models"][name])):
        x = point if isinstance(point, int) else round(curve["images"][i] / classes)
        std = (curve.get("std") or {}).get(name, [None] * len(curve["per_class"]))[i]
        if mean is not None:
            steps.append((int(x), float(mean), None if std is None else float(std)))
    return steps


def parent_metrics(report: dict[str, Any] | None, audit: dict[str, Any] | None = None) -> dict[str, float]:
    """The parent run's metrics: the paired comparison, the best row, the backbone's cost, the audit's counts."""
    metrics: dict[str, float | None] = {}
    if report is not None:
        compared = report.get("comparison") or {}
        metrics["comparison_difference"] = _number(compared.get("difference"))
        metrics["comparison_p_value"] = _number(compared.get("p_value"))
        metrics["comparison_significant"] = _number(compared.get("significant"))
        if compared.get("discordant"):
            metrics["comparison_only_classical_right"], metrics["comparison_only_neural_right"] = map(
                float, compared["discordant"]
            )
        rows = report["models"]
        if rows:
            metrics["best_test_accuracy"] = _number((best_row(report) or {}).get("test_accuracy"))
        embedding = report.get("embedding") or {}
        metrics["embedding_ms_per_image"] = _number(embedding.get("ms_per_image"))
        metrics["embedding_train_seconds"] = _number(embedding.get("train_seconds"))
        metrics["repeats_seconds"] = _number((report.get("repeats") or {}).get("seconds"))
        metrics["learning_curve_seconds"] = _number((report.get("learning_curve") or {}).get("seconds"))
        found = {key: value for key, value in metrics.items() if value is not None}
        _interval(found, "comparison_difference", compared.get("ci"))
        metrics = dict(found)
    if audit is not None:
        for key, value in (audit.get("summary") or {}).items():
            if _number(value) is not None:
                metrics[f"audit.{key}"] = float(value)
        metrics["audit.rows"] = _number(audit.get("rows"))
        metrics["audit.seconds"] = _number(audit.get("seconds"))
    return {key: value for key, value in metrics.items() if value is not None}
