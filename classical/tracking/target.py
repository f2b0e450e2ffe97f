"""Where runs are logged: the tracking URI and experiment, checked before any fit."""

from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from classical.errors import ClassicalError

SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")
DEFAULT_EXPERIMENT = "bottleneck-lab"
EXTRA = 'pip install "bottleneck-lab[mlflow]"'
HEALTH_TIMEOUT = 5.0  # seconds to wait for the server's /health before giving up on logging


class TrackingError(ClassicalError):
    """Tracking was asked for but cannot work: a wrong URI, or MLflow not installed."""


@dataclass(frozen=True)
class Target:
    """An MLflow tracking URI, the experiment runs go to, and what to log besides the report."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT
    register: str | None = None  # registered-model name the report's best model is registered under
    models: bool = True  # log each model row as an MLflow ONNX model


def tracking_target(
    uri: str | None = None, *, experiment: str | None = None, register: str | None = None, models: bool = True
) -> Target:
    """The target of `--mlflow [URI]`: URI (else $MLFLOW_TRACKING_URI), experiment (else $MLFLOW_EXPERIMENT_NAME).

    Raises TrackingError when there is no URI, its scheme is not one MLflow tracks to, or the
    MLflow extra (MLflow, and skl2onnx for the models) is not installed: before any fit.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise TrackingError(
            "--mlflow needs a tracking URI: pass one (--mlflow http://127.0.0.1:5000) or set MLFLOW_TRACKING_URI."
        )
    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    if scheme not in SCHEMES:
        raise TrackingError(
            f"tracking URI {uri!r} has scheme {scheme or 'none'!r}; MLflow tracks to {', '.join(SCHEMES)} "
            "(e.g. http://127.0.0.1:5000 for a server, or file:///ABSOLUTE/FOLDER)."
        )
    missing = [
        name for name in ("mlflow", *(("skl2onnx",) if models else ())) if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise TrackingError(f"tracking to {uri} needs {' and '.join(missing)}, which is not installed: {EXTRA}")
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    return Target(uri=uri, experiment=experiment, register=register, models=models)


def unreachable(target: Target, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """Why the tracking server cannot be reached (None: it answers, or the URI is not a server)."""
    if urlsplit(target.uri).scheme.lower() not in ("http", "https"):
        return None
    health = f"{target.uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            return None if response.status == 200 else f"{health} answered HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{health} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"no answer from {health}: {getattr(exc, 'reason', exc)}"
