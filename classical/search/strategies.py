"""How each model is searched at N rows: exact below a size, cheaper strategies above it, refit on all rows.

Strategies (the `strategy` of a report row):

- exact: today's search, every candidate by k-fold CV on all train + validation rows.
- halving: successive halving (`HalvingGridSearchCV`, factor 3) on all rows.
- subsample-then-refit: the search (grid, or halving for large grids) on a stratified subsample
  of `search_rows` rows, then one refit of the chosen configuration on all rows.
- approximated: the model itself is replaced by a cheaper one that scales with N (the RBF SVM
  by `Nystroem` + `LinearSVC`, the random forest by trees grown on at most `TREE_ROWS` bootstrap
  rows each, the linear SVM by `SGDClassifier`), searched on a subsample and refitted on all rows.

Outside the exact strategy, the calibrated models (the SVMs) are calibrated on `CALIBRATION_FOLDS`
(2) folds instead of the search's 5: at 12,755 rows the 5-fold calibration was 250 s of the linear
SVM's 271 s.

The linear SVM is approximated by averaged SGD (`SGDClassifier(loss="hinge", average=True)`),
its regularisation `alpha = 1 / (C n)` (n: the rows it is given; LinearSVC's objective at the
grid's C), stopped when its training loss falls by less than `SGD_TOL` for 5 epochs. Measured on
the benchmark's sets (`benchmarks/sweep.py`; 13 classes x 1280 dims; 2 cores shared, load average
1-6), refit + 2-fold sigmoid calibration: liblinear's LinearSVC(dual=True) took 15 s at 1,700
train+val rows, 95 s at 4,241, 49-157 s at 12,755 (C 0.0005-0.05) and had not ended after 7
minutes at 42,497; its primal solver (dual=False) was slower still (one uncalibrated fit at 42,497
rows unfinished after 6 minutes: liblinear works on its own sparse copy of the dense rows). SGD:
5-9 s up to 12,755 rows and 11-46 s at 42,497. Test accuracy at 12,755 rows, liblinear / averaged
SGD / plain SGD: 0.893 / 0.882 / 0.876 at C = 0.0005, 0.889 / 0.888 / 0.875 at 0.005, 0.880 /
0.880 / 0.874 at 0.05 (plain SGD fell below liblinear's interval, hence the averaging); at 42,497,
averaged SGD 0.878-0.883 over the grid. Not used: early stopping (as fast, but its held-out tenth
must hold every class, which small folds and halving's first round do not guarantee),
scikit-learn's tol of 1e-3 (80 epochs, 160 s at C = 0.05 and 42,497 rows), squared hinge (no
better, 2-10x slower), calibration on a held-out tenth instead of 2 folds (half the cost, same
accuracy, not needed at this cost). The rows stay float32 (the cache's dtype; SGD fits in it,
liblinear copies to float64). The search on the subsample is SGD's too (1-7 s at 1,200 rows where
LinearSVC's took up to 83 s). Above 1,500 rows: at 1,700 liblinear already cost 6-15 s against
SGD's 4-6 s, and 15x more from 4,000 rows.

The sizes are chosen from `benchmarks/sweep.py` (2 cores): below them the exact search of a
model costs a few seconds; above them its cost grows as N^1.5..N^2 (kernel SVM, forest, kNN).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import ParameterGrid, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from classical.models.zoo import ModelSpec

STRATEGY_FIELDS = (
    "strategy",
    "search",
    "rows",
    "search_rows",
    "approximation",
    "cut",
    "search_seconds",
    "refit_seconds",
)  # copied into each report row
STRATEGIES = ("exact", "halving", "subsample-then-refit", "approximated")
AUTO = "auto"
SEARCH_ROWS = 1200  # rows of the stratified subsample searched above a model's exact size
EXACT_ROWS = {"lr": 2500, "svm-linear": 1200, "svm-rbf": 1200, "rf": 1200, "knn": 6000, "dense": 3000}
APPROXIMATE_ROWS = {"svm-linear": 1500, "svm-rbf": 3000, "rf": 3000}  # above these, the cheaper model itself
HALVING_CANDIDATES = 9  # grids with more candidates than this are searched by successive halving
HALVED = frozenset(
    {"lr", "svm-linear", "svm-rbf", "rf"}
)  # kNN's k depends on N: not searched on halving's small rounds
SEARCH_TREES = 100  # a forest's single n_estimators value is searched with at most this many trees
NYSTROEM_COMPONENTS = 800
NYSTROEM_TOL = 1e-2  # liblinear's primal tolerance on the Nystroem features (its 1e-4: 1.5x the refit, same accuracy)
TREE_ROWS = 2000  # bootstrap rows of each tree of the approximated forest
SGD_EPOCHS = 200  # at most, for the approximated linear SVM (it stopped after 7-19 on the benchmark)
SGD_TOL = 1e-2  # its training loss falling by less for 5 epochs stops it (scikit-learn's 1e-3: 80 epochs, 160 s)
CALIBRATION_FOLDS = 2  # sigmoid calibration's folds outside the exact strategy (exact: the search's folds)


@dataclass(frozen=True)
class Plan:
    """How one model is searched and refitted: strategy, search kind, rows searched, the approximation used."""

    strategy: str
    search: str  # "grid" or "halving"
    rows: int  # train + validation rows (neural: train rows)
    search_rows: int  # rows the search runs on (== rows unless subsampled)
    approximation: str | None = None
    cut: str | None = None  # what a time budget cut, if anything

    def record(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "search": self.search,
            "rows": self.rows,
            "search_rows": self.search_rows,
            "approximation": self.approximation,
            "cut": self.cut,
        }


def choose_plan(
    spec: ModelSpec, grid: dict[str, list[Any]], rows: int, *, search: str = AUTO, search_rows: int | None = None
) -> Plan:
    """The plan of `spec` at `rows` rows: `search="grid"`/"halving" force today's search on all rows."""
    search_rows = search_rows or SEARCH_ROWS
    candidates = len(ParameterGrid(grid))
    if search in ("grid", "halving"):
        return Plan("exact" if search == "grid" else "halving", search, rows, rows)
    if search != AUTO:
        raise ValueError(f"search must be 'auto', 'grid' or 'halving'. Received: search={search!r}")
    kind = "halving" if candidates > HALVING_CANDIDATES and spec.kind == "classical" else "grid"
    if rows <= max(EXACT_ROWS.get(spec.name, search_rows), search_rows):
        return Plan("exact" if kind == "grid" else "halving", kind, rows, rows)
    sub = min(rows, search_rows)
    if candidates >= 3 and spec.name in HALVED:  # on a subsample, halving's first round is cheap and enough
        kind = "halving"
    if rows > APPROXIMATE_ROWS.get(spec.name, np.inf) and approximable(spec, grid):
        return Plan("approximated", kind, rows, sub, approximation=APPROXIMATIONS[spec.name])
    return Plan("subsample-then-refit", kind, rows, sub)


def with_search_rows(plan: Plan, search_rows: int, cut: str) -> Plan:
    """The same plan searched on fewer rows (a budget's cut)."""
    strategy = plan.strategy if plan.strategy == "approximated" else "subsample-then-refit"
    return replace(plan, strategy=strategy, search_rows=min(plan.rows, search_rows), cut=cut)


def stratified_rows(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a stratified random subsample of `size` rows (all rows when size >= len(y))."""
    if size >= len(y):
        return np.arange(len(y))
    counts = np.bincount(y)
    if (counts[counts > 0] < 2).any() or size < len(counts[counts > 0]):
        return np.sort(np.random.default_rng(seed).choice(len(y), size, replace=False))
    rows, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=y, random_state=seed)
    return np.sort(rows)


def _rbf_approximated(spec: ModelSpec, seed: int, rows: int) -> Pipeline:
    """Standardize, Nystroem RBF features, a linear SVM on them: linear in N where SVC is quadratic."""
    scale, reduce = spec.build(seed).steps[:2]
    return Pipeline(
        [
            scale,
            reduce,
            (
                "map",
                Nystroem(kernel="rbf", n_components=min(NYSTROEM_COMPONENTS, max(rows // 2, 1)), random_state=seed),
            ),
            ("clf", LinearSVC(dual=False, tol=NYSTROEM_TOL, max_iter=5000, random_state=seed)),
        ]
    )


def _svm_linear_approximated(spec: ModelSpec, seed: int, rows: int) -> Pipeline:
    """Standardize, a linear SVM fitted by averaged SGD (hinge loss): linear in N where liblinear is not."""
    scale, reduce = spec.build(seed).steps[:2]
    return Pipeline(
        [
            scale,
            reduce,
            ("clf", SGDClassifier(loss="hinge", average=True, tol=SGD_TOL, max_iter=SGD_EPOCHS, random_state=seed)),
        ]
    )


def _rf_approximated(spec: ModelSpec, seed: int, rows: int) -> BaseEstimator:
    """The zoo's forest, each tree grown on at most TREE_ROWS bootstrap rows of the `rows` it is fitted on."""
    return spec.build(seed).set_params(clf__max_samples=TREE_ROWS if rows > TREE_ROWS else None)


APPROXIMATIONS = {
    "svm-linear": "averaged SGDClassifier (hinge loss) for LinearSVC, alpha = 1 / (C x rows)",
    "svm-rbf": f"Nystroem RBF features ({NYSTROEM_COMPONENTS} components) + LinearSVC, same C and gamma",
    "rf": f"random forest, each tree on at most {TREE_ROWS} bootstrap rows (max_samples)",
}
_BUILDERS = {"svm-linear": _svm_linear_approximated, "svm-rbf": _rbf_approximated, "rf": _rf_approximated}


def estimator_for(spec: ModelSpec, plan: Plan, seed: int, rows: int) -> BaseEstimator:
    """The estimator the plan fits on `rows` rows: the zoo's, or its approximation."""
    if plan.strategy != "approximated":
        return spec.build(seed)
    return _BUILDERS[spec.name](spec, seed, rows)


def grid_for_plan(spec: ModelSpec, plan: Plan, grid: dict[str, list[Any]], n_features: int) -> dict[str, list[Any]]:
    """The grid as the plan's search runs it.

    Nystroem takes no gamma="scale": it becomes 1/D (the rows are standardized). SGD takes no C: it
    becomes alpha = 1 / (C x searched rows). Outside the exact strategy a forest's single tree count
    (not searched: more trees only lower the variance) is searched with at most `SEARCH_TREES`
    trees; the refit grows them all (`refit_params`).
    """
    trees = grid.get("clf__n_estimators")
    if plan.strategy != "exact" and trees and len(trees) == 1 and trees[0] > SEARCH_TREES:
        grid = {**grid, "clf__n_estimators": [SEARCH_TREES]}
    if plan.strategy != "approximated":
        return grid
    return {
        _TRANSLATED.get((spec.name, key), key): [
            _translate(spec.name, key, value, n_features, plan.search_rows) for value in values
        ]
        for key, values in grid.items()
    }


_TRANSLATED = {("svm-rbf", "clf__gamma"): "map__gamma", ("svm-linear", "clf__C"): "clf__alpha"}


def _translate(name: str, key: str, value: Any, n_features: int, rows: int) -> Any:
    """One grid value for the approximation: gamma "scale" as 1/D, C as SGD's alpha at `rows` rows."""
    if (name, key) == ("svm-rbf", "clf__gamma"):
        return 1.0 / n_features if value in ("scale", "auto") else value
    if (name, key) == ("svm-linear", "clf__C"):
        return 1.0 / (value * rows)
    return value


def approximable(spec: ModelSpec, grid: dict[str, list[Any]]) -> bool:
    """Whether every parameter of the grid has a counterpart in the model's approximation."""
    known = _BUILDERS[spec.name](spec, 0, 2).get_params()
    return all(_TRANSLATED.get((spec.name, key), key) in known for key in grid)


def refit_params(plan: Plan, grid: dict[str, list[Any]], best: dict[str, Any]) -> dict[str, Any]:
    """The chosen configuration as refitted on all rows.

    A forest gets back the tree count of its grid; SGD's alpha is rescaled to all rows (the same C).
    """
    trees = grid.get("clf__n_estimators")
    if "clf__n_estimators" in best and trees and len(trees) == 1:
        return {**best, "clf__n_estimators": trees[0]}
    if plan.strategy == "approximated" and "clf__alpha" in best and "clf__C" in grid:
        return {**best, "clf__alpha": best["clf__alpha"] * plan.search_rows / plan.rows}
    return best
