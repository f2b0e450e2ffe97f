"""The sweep's plan: each model's strategy at its size, and with `time_budget` the cuts that make it fit.

Without a budget each model gets `classical.search.strategies.choose_plan`. With `time_budget=SECONDS`
every model is first fitted once (its first grid candidate, the plan's estimator) on stratified
subsamples of `TRIAL_ROWS` and twice that many rows, plus a prediction of a quarter as many rows;
the two times give a cost t(m) = t2 (m / m2)^e (e clipped to [0.7, 2.2]; the Dense head: seconds per
epoch from fits of 1 and 7 epochs (their difference over 6), times `EXPECTED_EPOCHS`, linear in rows) from which the search
(candidates x folds fits on the searched rows, spread over the joblib workers; successive
halving's rounds counted as scikit-learn runs them) and the refit (with sigmoid calibration's
fold fits) are estimated. While the estimate exceeds what is left of the budget after the
trials, the costliest model's search is cut: first searched on a stratified subsample of
`SEARCH_ROWS` rows, then by successive halving, then on half as many rows down to `MIN_ROWS`.
Nothing is fitted before the plan fits: a grid that cannot fit, or a budget too small for one
fit per model, is an error naming the model and the seconds it needs. The audit and the backbone
timing are not part of the budget (their seconds are in the report).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.model_selection import ParameterGrid

from classical.data.rows import LabeledEmbeddings
from classical.errors import ClassicalError
from classical.models.zoo import ModelSpec
from classical.search.strategies import (
    HALVED,
    SEARCH_ROWS,
    Plan,
    choose_plan,
    estimator_for,
    grid_for_plan,
    stratified_rows,
)
from classical.search.strategies import with_search_rows as smaller

TRIAL_ROWS = 200
MIN_ROWS = 300
EXPONENT_RANGE = (0.7, 2.2)
TRIAL_EPOCHS = (1, 7)
EXPECTED_EPOCHS = 60  # epochs the Dense head ran before early stopping on the real sets (57 on 2,000 photos)


class BudgetError(ClassicalError):
    """The sweep cannot fit its time budget: a grid too large, or a budget too small for one fit per model."""


def model_rows(spec: ModelSpec, parts: dict[str, np.ndarray]) -> np.ndarray:
    """The rows a model is fitted on: train + validation (classical, by CV), train (neural)."""
    return parts["train"] if spec.kind == "neural" else np.concatenate([parts["train"], parts["val"]])


def _neural_trial(
    spec: ModelSpec, first: dict[str, Any], data: LabeledEmbeddings, parts: dict[str, np.ndarray], seed: int
) -> tuple[float, float, int]:
    """The Dense head: seconds per epoch from fits of a few and a few more epochs, counted as EXPECTED_EPOCHS."""
    rows = parts["train"][stratified_rows(data.y[parts["train"]], min(len(parts["train"]), 2 * TRIAL_ROWS), seed)]
    val = parts["val"][: max(len(rows) // 4, 1)]
    seconds = []
    for epochs in TRIAL_EPOCHS:  # the first fit also pays Keras' warm-up and tracing
        model = spec.build(seed).set_params(**first, max_epochs=epochs, patience=epochs)
        started = time.perf_counter()
        model.fit(data.X[rows], data.y[rows], validation_data=(data.X[val], data.y[val]))
        seconds.append(time.perf_counter() - started)
    span = seconds[-1] - seconds[0]  # the widest span of epochs: the least disturbed by a busy machine
    per_epoch = span / (TRIAL_EPOCHS[-1] - TRIAL_EPOCHS[0]) if span > 0 else seconds[-1] / TRIAL_EPOCHS[-1]
    return EXPECTED_EPOCHS * per_epoch, 1.0, len(rows)


def trial(
    spec: ModelSpec,
    plan: Plan,
    grid: dict[str, list[Any]],
    data: LabeledEmbeddings,
    parts: dict[str, np.ndarray],
    seed: int,
) -> tuple[float, float, int]:
    """Seconds of one fit (+ a quarter-size prediction) at m2 rows, the scaling exponent, and m2."""
    first = ParameterGrid(grid_for_plan(spec, plan, grid, data.X.shape[1]))[0]
    if spec.kind == "neural":
        return _neural_trial(spec, first, data, parts, seed)
    rows = model_rows(spec, parts)
    sizes = sorted({min(len(rows), TRIAL_ROWS), min(len(rows), 2 * TRIAL_ROWS)})
    seconds = []
    for size in sizes:
        picked = rows[stratified_rows(data.y[rows], size, seed)]
        model = estimator_for(spec, plan, seed, size).set_params(**first)
        started = time.perf_counter()
        model.fit(data.X[picked], data.y[picked])
        model.predict(data.X[picked[: max(size // 4, 1)]])
        seconds.append(time.perf_counter() - started)
    if len(sizes) < 2 or seconds[0] < 0.02:
        return seconds[-1], 1.0, sizes[-1]
    exponent = math.log(max(seconds[1], 1e-6) / seconds[0]) / math.log(sizes[1] / sizes[0])
    return seconds[-1], float(np.clip(exponent, *EXPONENT_RANGE)), sizes[-1]


def estimate(
    spec: ModelSpec, plan: Plan, candidates: int, cost: tuple[float, float, int], *, folds: int, workers: int
) -> dict[str, float]:
    """Estimated search and refit seconds of a plan from its trial cost."""
    seconds, exponent, measured = cost

    def t(rows: float) -> float:
        return seconds * (max(rows, 1.0) / measured) ** exponent

    if spec.kind == "neural":
        search = candidates * t(plan.search_rows)
        return {"search": search, "refit": t(plan.rows) if plan.search_rows < plan.rows else 0.0}
    fold_rows = plan.search_rows * (folds - 1) / folds
    if plan.search == "halving":  # HalvingGridSearchCV, factor 3, min_resources="exhaust"
        rounds = 1 + math.floor(math.log(candidates, 3)) if candidates > 1 else 1
        smallest = plan.search_rows / 3 ** (rounds - 1)
        search = (
            sum(math.ceil(candidates / 3**i) * folds * t(smallest * 3**i * (folds - 1) / folds) for i in range(rounds))
            / workers
        )
    else:
        search = math.ceil(candidates * folds / workers) * t(fold_rows)
    refit = t(plan.rows)
    if spec.calibrated:  # cross_val_predict over the folds, then one fit on all rows
        refit += math.ceil(folds / workers) * t(plan.rows * (folds - 1) / folds) + t(plan.rows)
    return {"search": search, "refit": refit}


def next_cut(spec: ModelSpec, plan: Plan, candidates: int) -> Plan | None:
    """The next cheaper plan of a model, or None when its search cannot be cut further."""
    if plan.search_rows > SEARCH_ROWS:
        return smaller(plan, SEARCH_ROWS, f"searched on a stratified subsample of {SEARCH_ROWS} of {plan.rows} rows")
    if plan.search == "grid" and candidates >= 3 and spec.name in HALVED:
        return replace(plan, search="halving", cut=f"{plan.cut + '; ' if plan.cut else ''}successive halving")
    if plan.search_rows // 2 >= MIN_ROWS:
        rows = plan.search_rows // 2
        return smaller(plan, rows, f"{plan.cut + '; ' if plan.cut else ''}searched on {rows} of {plan.rows} rows")
    return None


def plan_sweep(
    models: dict[str, tuple[ModelSpec, dict[str, list[Any]]]],
    data: LabeledEmbeddings,
    parts: dict[str, np.ndarray],
    *,
    folds: int,
    search: str,
    workers: int,
    seed: int,
    time_budget: float | None = None,
) -> tuple[dict[str, Plan], dict[str, Any]]:
    """Each model's plan and the report's `planning` block; with a budget, plans cut to fit it (or a BudgetError)."""
    plans = {
        name: choose_plan(spec, grid, len(model_rows(spec, parts)), search=search)
        for name, (spec, grid) in models.items()
    }
    record: dict[str, Any] = {"time_budget": time_budget, "cuts": []}
    if time_budget is None:
        return plans, record
    if time_budget <= 0:
        raise BudgetError(f"--time-budget must be a number of seconds > 0. Received: {time_budget!r}")
    started = time.perf_counter()
    candidates = {name: len(ParameterGrid(grid)) for name, (_, grid) in models.items()}
    costs = {name: trial(spec, plans[name], grid, data, parts, seed) for name, (spec, grid) in models.items()}
    trial_seconds = time.perf_counter() - started
    left = time_budget - trial_seconds

    def estimates() -> dict[str, dict[str, float]]:
        return {
            name: estimate(spec, plans[name], candidates[name], costs[name], folds=folds, workers=workers)
            for name, (spec, _) in models.items()
        }

    planned = estimates()
    before = {name: sum(e.values()) for name, e in planned.items()}
    one_fit = {
        name: estimate(
            spec, replace(plans[name], search_rows=plans[name].rows), 1, costs[name], folds=folds, workers=workers
        )["refit"]
        or costs[name][0]
        for name, (spec, _) in models.items()
    }
    if sum(one_fit.values()) > left:
        needed = trial_seconds + sum(one_fit.values())
        raise BudgetError(
            f"--time-budget {time_budget:g} s is too small for one fit per model: it needs about {needed:.0f} s "
            f"({', '.join(f'{n} {s:.1f} s' for n, s in one_fit.items())}, trial fits {trial_seconds:.1f} s); "
            f"give --time-budget {math.ceil(needed * 1.5)} or more, or fewer --models."
        )
    while sum(sum(e.values()) for e in planned.values()) > left:
        cuttable = [
            (planned[name]["search"], name)
            for name, (spec, _) in models.items()
            if next_cut(spec, plans[name], candidates[name]) is not None
        ]
        if not cuttable:
            total = sum(sum(e.values()) for e in planned.values())
            worst = max(planned, key=lambda name: planned[name]["search"])
            raise BudgetError(
                f"the grids cannot fit --time-budget {time_budget:g} s: even cut, the sweep needs about "
                f"{total + trial_seconds:.0f} s; the grid of '{worst}' ({candidates[worst]} candidates) alone needs "
                f"about {planned[worst]['search']:.0f} s of search. Shrink its grid (--grid) or give --time-budget "
                f"{math.ceil((total + trial_seconds) * 1.2)}."
            )
        _, name = max(cuttable)
        cut = next_cut(models[name][0], plans[name], candidates[name])
        assert cut is not None, "cuttable holds only models with a next cut"
        plans[name] = cut
        planned = estimates()
    record.update(
        {
            "trial_seconds": trial_seconds,
            "estimated_seconds": {
                name: {"search": e["search"], "refit": e["refit"], "uncut": before[name]} for name, e in planned.items()
            },
            "estimated_total": trial_seconds + sum(sum(e.values()) for e in planned.values()),
            "cuts": [
                f"{name}: {plan.cut} (estimated {before[name]:.0f} s -> {sum(planned[name].values()):.0f} s)"
                for name, plan in plans.items()
                if plan.cut
            ],
            "trial": {name: {"seconds": c[0], "rows": c[2], "exponent": c[1]} for name, c in costs.items()},
        }
    )
    return plans, record
