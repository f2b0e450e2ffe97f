"""The sweep: every model of the zoo fitted on one stored split of cached embeddings, then compared.

Classical models are selected by stratified k-fold CV on train + validation (they have no use
for a separate validation set); the Dense head is selected on the validation split (early
stopping needs it). The test split is touched once per model, for the final table.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV, ParameterGrid, StratifiedKFold
from tqdm import tqdm

from classical.data import LabeledEmbeddings, load_labeled
from classical.errors import DataError
from classical.modelfile import EMBEDDING_FIELDS, save_model
from classical.report import add_rows, format_table, latency_ms, load_report, new_report, score, verdict, write_report
from classical.splits import DEFAULT_FRACTIONS, Split, load_or_make_split
from classical.zoo import MODEL_NAMES, ZOO, ModelSpec, grid_for, load_grids

logger = logging.getLogger(__name__)
SEARCHES = ("grid", "halving")
ENGINES = ("local", "ray")


def sweep(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    *,
    models: Sequence[str] = MODEL_NAMES,
    backbone: str | None = None,
    grids: str | os.PathLike | dict[str, dict[str, list[Any]]] | None = None,
    search: str = "grid",
    cv: int = 5,
    n_jobs: int = -1,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    progress: bool | None = None,
    engine: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Fit and compare `models` on the cache's embeddings; write the report into `out`; return it.

    `engine="ray"` runs the searches' joblib jobs on the Ray cluster at `address` (default: a
    local Ray): same seeds, same folds, same report as a local sweep.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}. Received: engine={engine!r}")
    unknown = [name for name in models if name not in ZOO]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}. Received: search={search!r}")
    overrides = load_grids(grids) if isinstance(grids, (str, os.PathLike)) else grids
    run = Path(out)
    data = load_labeled(cache, backbone)
    split = load_or_make_split(run, data, fractions=fractions, seed=seed)
    parts = split.indices(data.paths)
    folds = cv_folds(data.y[np.concatenate([parts["train"], parts["val"]])], cv, data.class_names)
    report = load_report(run) if (run / "report.json").is_file() else new_report(
        backbone=data.backbone_key, cache=str(cache), class_names=data.class_names, split=split.summary())
    if report["split"]["id"] != split.id or report["class_names"] != data.class_names:
        raise DataError(f"report in '{run}' belongs to another split or class list; use another --out directory.")
    bar = tqdm(list(models), unit="model", desc="sweep", disable=None if progress is None else not progress)
    with joblib_backend(engine, address):
        for name in bar:
            bar.set_postfix_str(name)
            row = fit_and_score(ZOO[name], grid_for(name, overrides), data, parts, split,
                                run=run, folds=folds, search=search, n_jobs=n_jobs, seed=seed)
            add_rows(report, [row])
            logger.info("%s: test accuracy %.3f, fit %.1f s", name, row["test_accuracy"], row["fit_seconds"])
    bar.close()
    write_report(report, run)
    return report


def joblib_backend(engine: str, address: str | None) -> contextlib.AbstractContextManager:
    """Where the searches' joblib jobs run: this machine's processes, or the tasks of a Ray cluster."""
    if engine == "local":
        return contextlib.nullcontext()
    from embedder import connect

    connect(address)
    from ray.util.joblib import register_ray

    register_ray()
    return joblib.parallel_config(backend="ray")


def cv_folds(y: np.ndarray, cv: int, class_names: list[str]) -> int:
    """Folds for stratified CV: `cv`, or fewer (with a warning) when a class is smaller than that."""
    counts = np.bincount(y, minlength=len(class_names))
    smallest = int(counts.min())
    if smallest < 2:
        raise DataError(
            f"class '{class_names[int(counts.argmin())]}' has {smallest} image(s) in train + validation; "
            "cross-validation needs at least 2 per class. Add images to it."
        )
    if smallest < cv:
        logger.warning("class '%s' has only %d images in train + validation: using %d-fold CV instead of %d",
                       class_names[int(counts.argmin())], smallest, smallest, cv)
        return smallest
    return cv


def fit_and_score(
    spec: ModelSpec, grid: dict[str, list[Any]], data: LabeledEmbeddings, parts: dict[str, np.ndarray], split: Split,
    *, run: Path, folds: int, search: str, n_jobs: int, seed: int,
) -> dict[str, Any]:
    """Select, fit, score on test and save one model; returns its report row."""
    started = time.perf_counter()
    if spec.kind == "neural":
        model, selection = _fit_on_validation(spec, grid, data, parts, seed=seed)
    else:
        trainval = np.concatenate([parts["train"], parts["val"]])
        model, selection = _fit_by_cv(spec, grid, data.X[trainval], data.y[trainval],
                                      folds=folds, search=search, n_jobs=n_jobs, seed=seed)
    fit_seconds = time.perf_counter() - started
    X_test, y_test = data.X[parts["test"]], data.y[parts["test"]]
    metrics = score(y_test, model.predict_proba(X_test), data.class_names)
    path = run / f"{spec.name}.joblib"
    metadata = {
        "name": spec.name, "kind": spec.kind, "backbone_key": data.backbone_key,
        "backbone": {field: data.provenance[field] for field in EMBEDDING_FIELDS if field in data.provenance},
        "class_names": data.class_names, "dim": int(data.X.shape[1]), "split_id": split.id,
        "params": selection["params"], "metrics": {k: v for k, v in metrics.items() if k != "confusion_matrix"},
    }
    model_bytes = save_model(path, model, metadata)
    return {
        "name": spec.name, "kind": spec.kind, "description": spec.description, **metrics,
        "cv_mean": selection["cv_mean"], "cv_std": selection["cv_std"], "selection": selection["selection"],
        "fit_seconds": fit_seconds, "predict_ms_per_image": latency_ms(model.predict_proba, X_test),
        "model_bytes": model_bytes, "params": selection["params"], "model_path": str(path),
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _fit_by_cv(spec: ModelSpec, grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray,
               *, folds: int, search: str, n_jobs: int, seed: int) -> tuple[Any, dict[str, Any]]:
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    options = {"cv": splitter, "scoring": "accuracy", "n_jobs": n_jobs, "refit": True, "error_score": "raise"}
    estimator = spec.build(seed)
    searcher = (HalvingGridSearchCV(estimator, grid, factor=3, random_state=seed, **options) if search == "halving"
                else GridSearchCV(estimator, grid, **options))
    searcher.fit(X, y)
    model = searcher.best_estimator_
    if spec.calibrated:  # sigmoid calibration of the chosen configuration gives probabilities
        model = clone(model)
        name, classifier = model.steps[-1]
        model.steps[-1] = (name, CalibratedClassifierCV(classifier, method="sigmoid", cv=splitter, ensemble=False))
        model.fit(X, y)
    candidates = len(ParameterGrid(grid))
    return model, {
        "cv_mean": float(searcher.cv_results_["mean_test_score"][searcher.best_index_]),
        "cv_std": float(searcher.cv_results_["std_test_score"][searcher.best_index_]),
        "params": {key: _jsonable(value) for key, value in searcher.best_params_.items()},
        "selection": f"{folds}-fold stratified CV on train+val, {search} search over {candidates} candidates",
    }


def _fit_on_validation(spec: ModelSpec, grid: dict[str, list[Any]], data: LabeledEmbeddings,
                       parts: dict[str, np.ndarray], *, seed: int) -> tuple[Any, dict[str, Any]]:
    train, val = parts["train"], parts["val"]
    best, best_params = None, None
    for params in ParameterGrid(grid):
        model = clone(spec.build(seed)).set_params(**params)
        model.fit(data.X[train], data.y[train], validation_data=(data.X[val], data.y[val]))
        if best is None or (model.best_val_accuracy_, -min(model.history_["val_loss"])) > (
                best.best_val_accuracy_, -min(best.history_["val_loss"])):
            best, best_params = model, params
    return best, {
        "cv_mean": float(best.best_val_accuracy_), "cv_std": None,
        "params": {key: _jsonable(value) for key, value in best_params.items()} | {"epochs": best.best_epoch_},
        "selection": f"validation accuracy over {len(ParameterGrid(grid))} candidates, early stopping on validation loss",
    }


def rerender(out: str | os.PathLike) -> dict[str, Any]:
    """Re-draw the plots and rewrite report.csv/.md of a run from its report.json."""
    run = Path(out)
    report = load_report(run)
    write_report(report, run)
    return report


def summary(report: dict[str, Any]) -> str:
    """The console table and the verdict."""
    return f"{format_table(report)}\n\n{verdict(report)}"

