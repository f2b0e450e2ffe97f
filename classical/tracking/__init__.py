"""Experiment tracking: a run folder logged to MLflow from its report.json, its models as servable ONNX models.

Off unless asked for; importing this package imports nothing from MLflow (the extra
`bottleneck-lab[mlflow]` is needed only when a run is logged). `tracking_target` checks the URI
and the extra before any fit; `log_run` logs a run folder (one parent run, one nested run per
model row); `log_or_warn` does the same but turns an unreachable server into one warning line.
"""

from classical.tracking.fields import curve_steps, parent_metrics, row_metrics, row_params, run_params
from classical.tracking.mlflow_run import Logged, log_or_warn, log_run
from classical.tracking.target import DEFAULT_EXPERIMENT, SCHEMES, Target, TrackingError, tracking_target, unreachable

__all__ = [
    "DEFAULT_EXPERIMENT",
    "SCHEMES",
    "Logged",
    "Target",
    "TrackingError",
    "curve_steps",
    "log_or_warn",
    "log_run",
    "parent_metrics",
    "row_metrics",
    "row_params",
    "run_params",
    "tracking_target",
    "unreachable",
]
