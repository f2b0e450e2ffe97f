"""Searches that scale with N: strategy by size, subsample-then-refit, approximations, budgets, grid errors, threads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, write_cache

from classical import sweep
from classical.data.rows import load_labeled
from classical.modelfiles.saved import load_model
from classical.models.zoo import ZOO, grid_for, load_grids
from classical.search import budget, strategies
from classical.search.budget import BudgetError, estimate, plan_sweep
from classical.search.selection import fit_by_cv
from classical.search.strategies import Plan, choose_plan, stratified_rows
from classical.search.threads import limited, measure, plan_threads


@pytest.fixture
def small_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thresholds scaled down, so that synthetic sets of a few hundred rows take every strategy."""
    monkeypatch.setattr(strategies, "SEARCH_ROWS", 60)
    monkeypatch.setattr(
        strategies, "EXACT_ROWS", {"lr": 1000, "svm-linear": 60, "svm-rbf": 60, "rf": 60, "knn": 100, "dense": 100}
    )
    monkeypatch.setattr(strategies, "APPROXIMATE_ROWS", {"svm-linear": 150, "svm-rbf": 150, "rf": 150})
    monkeypatch.setattr(strategies, "TREE_ROWS", 100)


def test_strategy_by_size() -> None:
    grid = grid_for("svm-rbf")
    assert choose_plan(ZOO["svm-rbf"], grid, 800).strategy == "exact"
    mid = choose_plan(ZOO["svm-rbf"], grid, 2000)
    assert (mid.strategy, mid.search_rows, mid.rows) == ("subsample-then-refit", strategies.SEARCH_ROWS, 2000)
    big = choose_plan(ZOO["svm-rbf"], grid, 50_000)
    assert big.strategy == "approximated" and "Nystroem" in big.approximation
    assert choose_plan(ZOO["lr"], grid_for("lr"), 2000).strategy == "exact"  # cheap: exact further up
    assert choose_plan(ZOO["lr"], grid_for("lr"), 50_000).strategy == "subsample-then-refit"
    forced = choose_plan(ZOO["svm-rbf"], grid, 50_000, search="grid")
    assert (forced.strategy, forced.search_rows) == ("exact", 50_000)  # today's search on request
    many = {"clf__C": [0.01 * 2**i for i in range(12)]}
    assert choose_plan(ZOO["lr"], many, 500).strategy == "halving"
    with pytest.raises(ValueError, match="search must be"):
        choose_plan(ZOO["lr"], grid, 10, search="random")


def test_stratified_subsample_keeps_class_shares() -> None:
    y = np.repeat([0, 1, 2], [300, 150, 50])
    rows = stratified_rows(y, 100, seed=0)
    assert len(rows) == 100 and len(set(rows)) == 100
    assert np.bincount(y[rows]).tolist() == [60, 30, 10]
    assert len(stratified_rows(y, 10_000, seed=0)) == 500


def test_subsample_search_refits_on_all_rows(small_sizes: None) -> None:
    X, labels = blobs(per_class=80, dim=16)
    y = np.searchsorted(sorted(set(labels)), labels)
    plan = choose_plan(ZOO["knn"], grid_for("knn"), len(y))
    assert plan.strategy == "subsample-then-refit" and plan.search_rows == 60
    model, selection = fit_by_cv(ZOO["knn"], grid_for("knn"), X, y, folds=3, n_jobs=1, seed=0, plan=plan)
    assert model.steps[-1][1].n_samples_fit_ == len(y)  # the refit saw every row, not the subsample
    assert selection["strategy"] == "subsample-then-refit" and selection["search_rows"] == 60
    assert selection["search_seconds"] > 0 and selection["refit_seconds"] > 0
    assert "subsample of 60 of the 240" in selection["selection"]


def test_approximated_rbf_svm_and_forest(small_sizes: None) -> None:
    X, labels = blobs(per_class=70, dim=24)
    y = np.searchsorted(sorted(set(labels)), labels)
    plan = choose_plan(ZOO["svm-rbf"], grid_for("svm-rbf"), len(y))
    assert plan.strategy == "approximated"
    model, selection = fit_by_cv(ZOO["svm-rbf"], grid_for("svm-rbf"), X, y, folds=3, n_jobs=1, seed=0, plan=plan)
    assert "map" in model.named_steps and (model.predict(X) == y).mean() > 0.95
    assert selection["params"]["map__gamma"] in (1 / 24, 0.0002, 0.0001)  # gamma="scale" became 1/D
    plan = choose_plan(ZOO["rf"], {"clf__n_estimators": [10]}, len(y))
    model, _ = fit_by_cv(ZOO["rf"], {"clf__n_estimators": [10]}, X, y, folds=3, n_jobs=2, seed=0, plan=plan)
    assert model.named_steps["clf"].max_samples == 100 and model.named_steps["clf"].n_jobs is None


def test_linear_svm_is_approximated_by_sgd_above_its_size(small_sizes: None) -> None:
    X, labels = blobs(per_class=70, dim=24)
    y = np.searchsorted(sorted(set(labels)), labels)
    grid = grid_for("svm-linear")
    assert choose_plan(ZOO["svm-linear"], grid, 140).strategy == "subsample-then-refit"  # below 150: LinearSVC
    assert choose_plan(ZOO["svm-linear"], {"clf__dual": [True]}, 210).strategy == "subsample-then-refit"  # no SGD dual
    plan = choose_plan(ZOO["svm-linear"], grid, len(y))
    assert plan.strategy == "approximated" and "SGDClassifier" in plan.approximation
    model, selection = fit_by_cv(ZOO["svm-linear"], grid, X, y, folds=3, n_jobs=1, seed=0, plan=plan)
    calibrated = model.named_steps["clf"]
    assert type(calibrated.calibrated_classifiers_[0].estimator).__name__ == "SGDClassifier"
    assert (model.predict(X) == y).mean() > 0.95 and np.allclose(model.predict_proba(X).sum(axis=1), 1)
    chosen_c = 1 / (selection["params"]["clf__alpha"] * len(y))  # the refit's alpha is the searched C at all rows
    assert min(abs(chosen_c - c) / c for c in grid["clf__C"]) < 1e-9
    assert selection["strategy"] == "approximated" and "SGDClassifier" in selection["approximation"]


def test_sweep_records_and_shows_the_strategies(tmp_path: Path, small_sizes: None) -> None:
    X, labels = blobs(per_class=60, dim=16)
    write_cache(tmp_path / "c.h5", X, labels)
    report = sweep(
        tmp_path / "c.h5",
        tmp_path / "run",
        models=["lr", "knn", "svm-linear"],
        grids={"knn": {"n_neighbors": [1, 5]}, "svm-linear": {"C": [0.05]}},
        cv=3,
        n_jobs=2,
        progress=False,
        embedding_cost=False,
        audit=False,
    )
    rows = {row["name"]: row for row in report["models"]}
    assert rows["lr"]["strategy"] == "exact" and rows["lr"]["search_rows"] == rows["lr"]["rows"]
    assert rows["knn"]["strategy"] == "subsample-then-refit" and rows["knn"]["search_rows"] == 60
    assert rows["svm-linear"]["strategy"] == "approximated" and "SGD" in rows["svm-linear"]["approximation"]
    saved = load_model(rows["svm-linear"]["model_path"])  # a model file that loads (its types trusted)
    assert saved.model.predict_proba(X[:5]).shape == (5, 3)
    for row in rows.values():
        assert row["search_seconds"] > 0 and row["refit_seconds"] > 0
        assert row["fit_seconds"] >= row["search_seconds"] + row["refit_seconds"]
    stored = json.loads((tmp_path / "run" / "report.json").read_text())
    assert stored["threads"]["workers"] * max(stored["threads"]["worker_threads"]) <= stored["threads"]["cores"]
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "## Search strategies" in markdown and "| knn | subsample-then-refit | grid | 60 / " in markdown


def test_estimates_grow_with_rows_and_shrink_with_cuts() -> None:
    spec, cost = ZOO["svm-rbf"], (1.0, 2.0, 100)  # 1 s at 100 rows, quadratic
    exact = estimate(spec, Plan("exact", "grid", 1000, 1000), 6, cost, folds=5, workers=2)
    assert exact["search"] == pytest.approx(15 * 64)  # 30 fits on 800 rows, 2 at a time
    assert exact["refit"] == pytest.approx(100 + 3 * 64 + 100)  # fit + calibration's folds + its final fit
    cut = estimate(spec, Plan("subsample-then-refit", "grid", 1000, 500), 6, cost, folds=5, workers=2)
    halving = estimate(spec, Plan("exact", "halving", 1000, 1000), 6, cost, folds=5, workers=2)
    assert cut["search"] < exact["search"] and halving["search"] < exact["search"]
    assert cut["refit"] == exact["refit"]


@pytest.fixture
def planned(tmp_path: Path) -> tuple:
    X, labels = blobs(per_class=100, dim=16)
    write_cache(tmp_path / "c.h5", X, labels)
    data = load_labeled(tmp_path / "c.h5")
    order = np.random.default_rng(0).permutation(len(data.y))
    parts = {"train": order[:200], "val": order[200:250], "test": order[250:]}
    models = {name: (ZOO[name], grid_for(name)) for name in ("lr", "knn")}
    return models, data, parts


def test_budget_plans_from_trial_fits(planned: tuple) -> None:
    models, data, parts = planned
    plans, record = plan_sweep(models, data, parts, folds=3, search="auto", workers=2, seed=0, time_budget=600)
    assert record["cuts"] == [] and record["trial_seconds"] > 0
    assert set(record["estimated_seconds"]) == {"lr", "knn"} and record["estimated_total"] < 600
    assert all(plan.cut is None for plan in plans.values())


def test_budget_cuts_the_costliest_search(planned: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    models, data, parts = planned
    monkeypatch.setattr(budget, "MIN_ROWS", 50)
    monkeypatch.setattr(budget, "trial", lambda spec, *a: (0.01, 1.0, 100) if spec.name == "knn" else (4.0, 1.0, 100))
    plans, record = plan_sweep(models, data, parts, folds=3, search="auto", workers=2, seed=0, time_budget=30)
    assert plans["knn"].cut is None and plans["lr"].cut  # only the costly model is cut
    assert record["cuts"][0].startswith("lr: ") and record["estimated_total"] <= 30


def test_budget_errors_say_what_is_needed(planned: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    models, data, parts = planned
    with pytest.raises(BudgetError, match=r"too small for one fit per model: it needs about \d+ s \(lr "):
        plan_sweep(models, data, parts, folds=3, search="auto", workers=2, seed=0, time_budget=0.001)
    monkeypatch.setattr(budget, "trial", lambda spec, *a: (0.01, 1.0, 100) if spec.name == "knn" else (1.0, 1.0, 100))
    many = {"lr": (ZOO["lr"], {"clf__C": [0.01 * 2**i for i in range(30)]}), "knn": models["knn"]}
    with pytest.raises(BudgetError, match=r"grid of 'lr' \(30 candidates\) alone needs about \d+ s"):
        plan_sweep(many, data, parts, folds=3, search="auto", workers=2, seed=0, time_budget=10)
    with pytest.raises(BudgetError, match="must be a number of seconds > 0"):
        plan_sweep(models, data, parts, folds=3, search="auto", workers=2, seed=0, time_budget=-5)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"lr": {"Cc": [1.0]}}, "'lr': unknown parameter 'Cc'; its parameters: C, "),
        ({"rf": {"n_estimators": [1.5]}}, "'rf': parameter 'n_estimators' cannot be 1.5: .* must be an int"),
        ({"svm-rbf": {"gamma": ["wide"]}}, "'svm-rbf': parameter 'gamma' cannot be 'wide'"),
        ({"dense": {"learning_rate": ["fast"]}}, "'dense': parameter 'learning_rate' cannot be 'fast' \\(a str\\)"),
        ({"knn": {"n_neighbors": []}}, "'knn': 'n_neighbors' must map to a non-empty list"),
        ({"lr": {"pca": [-3]}}, "'lr': parameter 'pca' cannot be PCA\\(n_components=-3"),
    ],
)
def test_bad_grid_files_name_the_model_and_parameter(tmp_path: Path, grid: dict, message: str) -> None:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    with pytest.raises(ValueError, match=f"grid file '{path}': grid for {message}"):
        load_grids(path)


def test_thread_plan_never_oversubscribes() -> None:
    assert plan_threads(-1, available=2) == {"cores": 2, "workers": 2, "threads_per_worker": 1}
    assert plan_threads(1, available=2) == {"cores": 2, "workers": 1, "threads_per_worker": 2}
    assert plan_threads(8, available=2)["workers"] == 2
    with pytest.raises(ValueError, match="n_jobs must be"):
        plan_threads(0)
    plan = plan_threads(2, available=2)
    with limited(plan):
        measured = measure(plan)
    assert measured["worker_threads"] == [1] and not measured["oversubscribed"]
