"""A run folder logged to MLflow from its report.json: one parent run, one nested run per model row.

Everything comes from the files the run folder already holds (report.json, audit.json, split.json,
the pages and plots rendered from them); nothing is recomputed, except the cache's content
fingerprint, read from the cache the report names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classical.report import best_row, load_report
from classical.tracking.fields import curve_steps, metric_key, parent_metrics, row_metrics, row_params, run_params
from classical.tracking.models import log_onnx_model
from classical.tracking.target import Target, TrackingError, unreachable
from embedder import EmbedderError, library_versions, open_cache

logger = logging.getLogger(__name__)
FILES = ("report.html", "report.json", "report.md", "report.csv", "audit.json", "split.json")
FOLDERS = ("plots", "thumbnails", "repeats")
TAG = "bottleneck_lab"


@dataclass
class Logged:
    """What was logged where: the parent run, a nested run and a model per row, the registered version."""

    uri: str
    experiment: str
    experiment_id: str
    parent: str  # run id of the command's run
    children: dict[str, str] = field(default_factory=dict)  # model row name -> nested run id
    models: dict[str, str] = field(default_factory=dict)  # model row name -> logged model URI
    registered: str | None = None  # "NAME/VERSION" of the registered best model
    not_logged: list[str] = field(default_factory=list)  # what could not be logged, and why
    artifact_bytes: int = 0
    model_bytes: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """One line for the console."""
        registered = f", registered {self.registered}" if self.registered else ""
        return (
            f"mlflow: logged run {self.parent} to experiment '{self.experiment}' at {self.uri}: "
            f"{len(self.children)} model runs, {len(self.models)} models{registered}, "
            f"{(self.artifact_bytes + self.model_bytes) / 1e6:.1f} MB in {self.seconds:.1f} s"
        )


def cache_facts(cache: str, backbone: str) -> tuple[dict[str, Any], str]:
    """The backbone's provenance and a fingerprint of its rows' content (sha256 of key, paths, bytes, labels)."""
    if not Path(cache).is_file():
        return {}, f"not computed: no cache at {cache}"
    try:
        with open_cache(cache) as opened:
            rows = opened.backbone(backbone)
            digest = hashlib.sha256(backbone.encode())
            for line in sorted(f"{p}\t{s}\t{y}" for p, s, y in zip(rows.paths, rows.sha256, rows.labels)):
                digest.update(line.encode() + b"\n")
            return dict(rows.provenance), digest.hexdigest()
    except EmbedderError as exc:
        return {}, f"not computed: {exc}"


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _log_artifacts(run: Path) -> int:
    import mlflow

    logged = 0
    for name in FILES:
        if (run / name).is_file():
            mlflow.log_artifact(str(run / name))
            logged += (run / name).stat().st_size
    for name in FOLDERS:
        if (run / name).is_dir():
            mlflow.log_artifacts(str(run / name), artifact_path=name)
            logged += sum(path.stat().st_size for path in (run / name).rglob("*") if path.is_file())
    return logged


def _log_steps(run_id: str, steps: dict[str, list[tuple[int, float]]]) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, points in steps.items() for step, value in points]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        MlflowClient().log_batch(run_id, metrics=metrics[start : start + 1000])


def _curves(report: dict[str, Any], name: str, prefix: str) -> dict[str, list[tuple[int, float]]]:
    steps = curve_steps(report, name)
    curves = {f"{prefix}accuracy": [(x, mean) for x, mean, _ in steps]}
    curves[f"{prefix}std"] = [(x, std) for x, _, std in steps if std is not None]
    return {key: points for key, points in curves.items() if points}


def log_run(run: str | os.PathLike, target: Target, *, command: str = "log") -> Logged:
    """Log the run folder `run` (report.json, audit.json, ...) to `target`; returns what was logged.

    One parent run named "COMMAND FOLDER" (params of the backbone, split and models; the paired
    comparison and the audit's counts as metrics; the verdict, project version, cache and its
    fingerprint as tags; the report files as artifacts) and one nested run per model row (its
    params, metrics, learning curve as steps, and the model as an MLflow ONNX model when
    `target.models`). `target.register` registers the report's best model under that name.
    """
    import mlflow

    run = Path(run)
    report = load_report(run) if (run / "report.json").is_file() else None
    audit = _read_json(run / "audit.json")
    if report is None and audit is None:
        raise TrackingError(f"'{run}' holds neither report.json nor audit.json: nothing to log; is it a run folder?")
    started = time.perf_counter()
    source = report if report is not None else audit
    assert source is not None  # (one of the two: see above)
    provenance, fingerprint = cache_facts(source["cache"], source["backbone"])
    mlflow.set_tracking_uri(target.uri)
    experiment = mlflow.set_experiment(target.experiment)
    tags = {
        f"{TAG}.command": command,
        f"{TAG}.run_folder": str(run.resolve()),
        f"{TAG}.version": library_versions(("bottleneck-lab",))["bottleneck-lab"],
        f"{TAG}.cache": source["cache"],
        f"{TAG}.cache_fingerprint": fingerprint,
        f"{TAG}.backbone": source["backbone"],
    }
    if report is not None:
        from classical.report import verdict

        tags |= {f"{TAG}.verdict": verdict(report), "mlflow.note.content": verdict(report)}
        tags[f"{TAG}.report_updated"] = report.get("updated", "")
    with mlflow.start_run(run_name=f"{command} {run.name}", tags=tags) as parent:
        logged = Logged(
            uri=target.uri,
            experiment=target.experiment,
            experiment_id=experiment.experiment_id,
            parent=parent.info.run_id,
        )
        if report is not None:
            mlflow.log_params(run_params(report, provenance))
        elif provenance:
            mlflow.log_params({metric_key(f"backbone.{k}"): str(v)[:6000] for k, v in provenance.items()})
        mlflow.log_metrics(parent_metrics(report, audit))
        logged.artifact_bytes = _log_artifacts(run)
        if report is not None:
            curve_names = list((report.get("learning_curve") or {}).get("models", {}))
            parent_curves: dict[str, list[tuple[int, float]]] = {}
            for name in curve_names:
                parent_curves |= _curves(report, name, metric_key(f"learning_curve.{name}."))
            _log_steps(parent.info.run_id, parent_curves)
            best = best_row(report)
            with tempfile.TemporaryDirectory(prefix="mlflow-export-") as workdir:
                for row in report["models"]:
                    _log_row(row, report, run, target, Path(workdir), logged, best=row is best)
            if target.register:
                if best is not None and best["name"] in logged.models:
                    version = mlflow.register_model(logged.models[best["name"]], target.register)
                    logged.registered = f"{version.name}/{version.version}"
                    mlflow.set_tag(f"{TAG}.registered", logged.registered)
                else:
                    logged.not_logged.append(f"registration of {target.register}: the best model was not logged")
    logged.seconds = time.perf_counter() - started
    return logged


def _log_row(
    row: dict[str, Any], report: dict[str, Any], run: Path, target: Target, workdir: Path, logged: Logged, *, best: bool
) -> None:
    import mlflow

    tags = {f"{TAG}.model": row["name"], f"{TAG}.kind": row["kind"], f"{TAG}.best": str(best).lower()}
    with mlflow.start_run(run_name=row["name"], nested=True, tags=tags) as child:
        logged.children[row["name"]] = child.info.run_id
        mlflow.log_params(row_params(row, report))
        mlflow.log_metrics(row_metrics(row, report))
        steps = _curves(report, row["name"], "learning_curve_")
        accuracies = (((report.get("repeats") or {}).get("models") or {}).get(row["name"]) or {}).get("accuracies")
        if accuracies:
            steps["repeats_accuracy"] = list(zip(report["repeats"]["seeds"], accuracies))
        _log_steps(child.info.run_id, steps)
        if not target.models:
            return
        try:
            info, size = log_onnx_model(row, run, workdir)
        except (EmbedderError, ValueError, ImportError, OSError) as exc:
            logged.not_logged.append(f"model {row['name']}: {exc}")
            logger.warning("mlflow: model %s not logged: %s", row["name"], exc)
            return
        logged.models[row["name"]] = info.model_uri
        logged.model_bytes += size
        mlflow.set_tag(f"{TAG}.model_uri", info.model_uri)


def log_or_warn(run: str | os.PathLike, target: Target, *, command: str) -> Logged | None:
    """`log_run`, but a server that cannot be reached (or fails part-way) is one warning line, not an error."""
    from mlflow.exceptions import MlflowException

    later = f"log it later with `classical log {run} --mlflow {target.uri}`"
    problem = unreachable(target)
    if problem is None:
        try:
            return log_run(run, target, command=command)
        except (MlflowException, OSError) as exc:
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    logger.warning(
        "mlflow: run folder %s was not logged to %s (%s); the run folder is complete: %s",
        run,
        target.uri,
        problem,
        later,
    )
    return None
