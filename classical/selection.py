"""How each model of the zoo is selected and fitted on one split: the same for the sweep and its repeats.

Classical models: a grid (or successive-halving) search by stratified k-fold CV on train +
validation, refitted on all of it; calibrated models get sigmoid calibration of the chosen
configuration. The Dense head: every candidate of its grid trained on train with early stopping
on validation loss, the candidate with the best validation accuracy kept (ties: lower
validation loss).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    ParameterGrid,
    StratifiedKFold,
)

from classical.data import LabeledEmbeddings
from classical.errors import DataError
from classical.zoo import ModelSpec

logger = logging.getLogger(__name__)


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


def select_and_fit(spec: ModelSpec, grid: dict[str, list[Any]], data: LabeledEmbeddings, parts: dict[str, np.ndarray],
                   *, folds: int, search: str, n_jobs: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """The selected model fitted on the split's train (+ validation) rows, and how it was selected."""
    if spec.kind == "neural":
        return fit_on_validation(spec, grid, data, parts, seed=seed)
    trainval = np.concatenate([parts["train"], parts["val"]])
    return fit_by_cv(spec, grid, data.X[trainval], data.y[trainval], folds=folds, search=search, n_jobs=n_jobs, seed=seed)


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def fit_by_cv(spec: ModelSpec, grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray,
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
        "params": {key: jsonable(value) for key, value in searcher.best_params_.items()},
        "selection": f"{folds}-fold stratified CV on train+val, {search} search over {candidates} candidates",
    }


def describe_grid(grid: dict[str, list[Any]]) -> str:
    """`learning_rate ∈ {0.001, 0.003} × dropout ∈ {0, 0.2}`."""
    return " × ".join(f"{key} ∈ {{{', '.join(f'{jsonable(v):g}' if isinstance(v, float) else str(jsonable(v)) for v in values)}}}"
                      for key, values in grid.items())


def fit_on_validation(spec: ModelSpec, grid: dict[str, list[Any]], data: LabeledEmbeddings,
                      parts: dict[str, np.ndarray], *, seed: int) -> tuple[Any, dict[str, Any]]:
    train, val = parts["train"], parts["val"]
    best, best_params = None, None
    for params in ParameterGrid(grid):
        model = clone(spec.build(seed)).set_params(**params)
        model.fit(data.X[train], data.y[train], validation_data=(data.X[val], data.y[val]))
        if best is None or (model.best_val_accuracy_, -min(model.history_["val_loss"])) > (
                best.best_val_accuracy_, -min(best.history_["val_loss"])):
            best, best_params = model, params
    fixed = spec.build(seed).get_params()
    training = (f"each trained on train with Adam (batch {fixed.get('batch_size')}), at most {fixed.get('max_epochs')} "
                f"epochs, early stopping on validation loss (patience {fixed.get('patience')}, the best epoch's "
                f"weights kept), seed {seed} (initialisation, dropout, shuffling)")
    return best, {
        "cv_mean": float(best.best_val_accuracy_), "cv_std": None,
        "params": {key: jsonable(value) for key, value in best_params.items()} | {"epochs": best.best_epoch_},
        "selection": (f"validation accuracy (ties: lower validation loss) over {len(ParameterGrid(grid))} candidates "
                      f"({describe_grid(grid)}); {training}"),
    }
