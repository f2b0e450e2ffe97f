"""How each model of the zoo is selected and fitted on one split: the same for the sweep and its repeats.

Classical models: a grid (or successive-halving) search by stratified k-fold CV on train +
validation, refitted on all of it; calibrated models get sigmoid calibration of the chosen
configuration. The Dense head: every candidate of its grid trained on train with early stopping
on validation loss, the candidate with the best validation accuracy kept (ties: lower
validation loss).
"""

from __future__ import annotations

import logging
import time
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

from classical.data.rows import LabeledEmbeddings
from classical.errors import DataError
from classical.models.zoo import ModelSpec
from classical.search.strategies import (
    CALIBRATION_FOLDS,
    Plan,
    choose_plan,
    estimator_for,
    grid_for_plan,
    refit_params,
    stratified_rows,
)

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
        logger.warning(
            "class '%s' has only %d images in train + validation: using %d-fold CV instead of %d",
            class_names[int(counts.argmin())],
            smallest,
            smallest,
            cv,
        )
        return smallest
    return cv


def select_and_fit(
    spec: ModelSpec,
    grid: dict[str, list[Any]],
    data: LabeledEmbeddings,
    parts: dict[str, np.ndarray],
    *,
    folds: int,
    search: str,
    n_jobs: int,
    seed: int,
    plan: Plan | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The selected model fitted on the split's train (+ validation) rows, and how it was selected.

    `plan` (`classical.search.strategies`): how the search scales with N; None is `search` on all rows.
    The returned dict has the plan's record, its `search_seconds` and `refit_seconds`, and the `grid` searched.
    """
    if spec.kind == "neural":
        plan = plan or choose_plan(spec, grid, len(parts["train"]), search="grid")
        model, record = fit_on_validation(spec, grid, data, parts, seed=seed, plan=plan)
    else:
        trainval = np.concatenate([parts["train"], parts["val"]])
        plan = plan or choose_plan(spec, grid, len(trainval), search=search)
        model, record = fit_by_cv(
            spec, grid, data.X[trainval], data.y[trainval], folds=folds, n_jobs=n_jobs, seed=seed, plan=plan
        )
    record["grid"] = {key: [jsonable(value) for value in values] for key, values in grid.items()}  # as asked for
    return model, record


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def fit_by_cv(
    spec: ModelSpec,
    grid: dict[str, list[Any]],
    X: np.ndarray,
    y: np.ndarray,
    *,
    folds: int,
    n_jobs: int,
    seed: int,
    plan: Plan,
) -> tuple[Any, dict[str, Any]]:
    """Search the plan's grid by stratified k-fold CV on its rows, then fit the chosen configuration on all rows."""
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    subsampled = plan.search_rows < len(y)
    estimator = estimator_for(spec, plan, seed, plan.search_rows)
    searched = grid_for_plan(spec, plan, grid, X.shape[1])
    options = {"cv": splitter, "scoring": "accuracy", "n_jobs": n_jobs, "refit": False, "error_score": "raise"}
    searcher = (
        HalvingGridSearchCV(estimator, searched, factor=3, random_state=seed, **options)
        if plan.search == "halving"
        else GridSearchCV(estimator, searched, **options)
    )
    rows = stratified_rows(y, plan.search_rows, seed) if subsampled else slice(None)
    started = time.perf_counter()
    searcher.fit(X[rows], y[rows])
    search_seconds, started = time.perf_counter() - started, time.perf_counter()
    chosen = refit_params(plan, grid, searcher.best_params_)
    model = clone(estimator_for(spec, plan, seed, len(y))).set_params(**chosen)
    if spec.calibrated:  # sigmoid calibration of the chosen configuration gives probabilities
        name, classifier = model.steps[-1]
        calibration = (
            splitter
            if plan.strategy == "exact"
            else StratifiedKFold(CALIBRATION_FOLDS, shuffle=True, random_state=seed)
        )
        model.steps[-1] = (
            name,
            CalibratedClassifierCV(classifier, method="sigmoid", cv=calibration, ensemble=False, n_jobs=n_jobs),
        )
    model = refit(model, {}, X, y, n_jobs)
    refit_seconds = time.perf_counter() - started
    candidates = len(ParameterGrid(grid))
    where = (
        f"a stratified subsample of {plan.search_rows} of the {len(y)} train+val rows, then one refit on all"
        if subsampled
        else "train+val"
    )
    model_name = f" of the approximation ({plan.approximation})" if plan.approximation else ""
    return model, {
        "cv_mean": float(searcher.cv_results_["mean_test_score"][searcher.best_index_]),
        "cv_std": float(searcher.cv_results_["std_test_score"][searcher.best_index_]),
        "params": {key: jsonable(value) for key, value in chosen.items()},
        "selection": f"{folds}-fold stratified CV on {where}, {plan.search} search over {candidates} candidates{model_name}",
        **plan.record(),
        "search_seconds": search_seconds,
        "refit_seconds": refit_seconds,
    }


def refit(estimator: Any, params: dict[str, Any], X: np.ndarray, y: np.ndarray, n_jobs: int) -> Any:
    """The chosen configuration fitted on all rows; a forest grows its trees on `n_jobs` workers, then forgets them."""
    model = clone(estimator).set_params(**params)
    parallel = "clf__n_estimators" in model.get_params()  # forests: trees grow in parallel
    if parallel:
        model.set_params(clf__n_jobs=n_jobs)
    model.fit(X, y)
    if parallel:
        model.set_params(clf__n_jobs=None)
    return model


def describe_grid(grid: dict[str, list[Any]]) -> str:
    """`learning_rate ∈ {0.001, 0.003} × dropout ∈ {0, 0.2}`."""
    return " × ".join(
        f"{key} ∈ {{{', '.join(f'{jsonable(v):g}' if isinstance(v, float) else str(jsonable(v)) for v in values)}}}"
        for key, values in grid.items()
    )


def fit_on_validation(
    spec: ModelSpec,
    grid: dict[str, list[Any]],
    data: LabeledEmbeddings,
    parts: dict[str, np.ndarray],
    *,
    seed: int,
    plan: Plan,
) -> tuple[Any, dict[str, Any]]:
    """Every candidate trained on train (or the plan's stratified subsample of it), the best on validation kept."""
    train, val = parts["train"], parts["val"]
    searched = train[stratified_rows(data.y[train], plan.search_rows, seed)]
    best, best_params = None, None
    started = time.perf_counter()
    for params in ParameterGrid(grid):
        model = clone(spec.build(seed)).set_params(**params)
        model.fit(data.X[searched], data.y[searched], validation_data=(data.X[val], data.y[val]))
        if best is None or (model.best_val_accuracy_, -min(model.history_["val_loss"])) > (
            best.best_val_accuracy_,
            -min(best.history_["val_loss"]),
        ):
            best, best_params = model, params
    if best is None or best_params is None:
        raise ValueError(f"the grid of {spec.name} has no candidates")
    search_seconds, started = time.perf_counter() - started, time.perf_counter()
    if len(searched) < len(train):  # one refit of the chosen candidate on all train rows
        best = clone(spec.build(seed)).set_params(**best_params)
        best.fit(data.X[train], data.y[train], validation_data=(data.X[val], data.y[val]))
    refit_seconds = time.perf_counter() - started
    subsample = (
        f" trained on a stratified subsample of {len(searched)} of the {len(train)} train rows, the chosen "
        "one retrained on all"
        if len(searched) < len(train)
        else ""
    )
    fixed = spec.build(seed).get_params()
    training = (
        f"each trained on train with Adam (batch {fixed.get('batch_size')}), at most {fixed.get('max_epochs')} "
        f"epochs, early stopping on validation loss (patience {fixed.get('patience')}, the best epoch's "
        f"weights kept), seed {seed} (initialisation, dropout, shuffling)"
    )
    return best, {
        "cv_mean": float(best.best_val_accuracy_),
        "cv_std": None,
        "params": {key: jsonable(value) for key, value in best_params.items()} | {"epochs": best.best_epoch_},
        "selection": (
            f"validation accuracy (ties: lower validation loss) over {len(ParameterGrid(grid))} candidates "
            f"({describe_grid(grid)}){subsample}; {training}"
        ),
        **plan.record(),
        "search_seconds": search_seconds,
        "refit_seconds": refit_seconds,
    }
