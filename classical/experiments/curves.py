"""Learning curves: test accuracy against the number of labelled training images per class.

Each point n draws, for each of `seeds` seeds (sweep seed + 0, 1, ...), n images per class at random
(seeded, stratified, without replacement) from the run's training pool, the train + validation parts
of the stored split (the rows the sweep's classical models are selected and fitted on); the last
point, "all", is the whole pool. Every model of the sweep is selected and fitted on the subset only
and scored on the same stored test split; the curve keeps the mean and the sample standard deviation
of the seeds' test accuracies.

Selection stays valid at small sizes by using fewer CV folds, never labels outside the subset:
classical models are grid-searched over the sweep's grids by min(cv, n)-fold stratified CV on the
subset (n >= 2 is required, so every fold holds an image of each class; calibrated models are
calibrated on the same folds). The Dense head holds out max(1, round(n / 5)) of each class's n images
as its validation set (early stopping and the choice among its grid), and at "all" uses the stored
split's validation part, as the sweep does. At "all" the subset is the same for every seed (only
the models' seeds change), and seed 0 there is the sweep's own fit: its rows are reused, not refitted.
Fine-tuned networks join the curve only on request, from their photos (`classical.finetuning.curve`),
on the same subsets (`draw_subset`) and the Dense head's held-out rows (`hold_out`).

With `semi_supervised=True` the semi-supervised models of `classical.experiments.semi` are added at each point
(curves `semi-...`), and at "all", when the cache holds unlabelled rows, each is compared with the
supervised model it extends by the paired test of the report (McNemar exact, Newcombe interval):
did the unlabelled rows help on the test split?
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from classical.data.rows import LabeledEmbeddings
from classical.errors import DataError
from classical.experiments.semi import (
    AGREEMENT,
    LABEL_SPREADING,
    LINEAR_HEADS,
    SEMI_MODELS,
    Unlabeled,
    fit_semi,
    load_unlabeled,
)
from classical.experiments.semi import DESCRIPTION as SEMI_DESCRIPTION
from classical.models.zoo import ZOO, grid_for
from classical.report import paired_comparison
from classical.search.selection import fit_by_cv, fit_on_validation
from classical.search.strategies import choose_plan

logger = logging.getLogger(__name__)

ALL = "all"
DEFAULT_SEEDS = 3
MIN_PER_CLASS = 2  # CV and the Dense head's early stopping each need an image of every class to hold out
DENSE_VALIDATION = 0.2  # of each class's n images, at least one


def parse_points(points: str | Sequence[int | str]) -> list[int | str]:
    """'5,10,25,50' (or a list) as sorted distinct numbers of images per class, with "all" last."""
    items = [item.strip() for item in points.split(",")] if isinstance(points, str) else list(points)
    parsed: set[int] = set()
    for item in items:
        if (isinstance(item, str) and item.lower() == ALL) or item == "":
            continue
        try:
            number = int(item) if not isinstance(item, float) or float(item).is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(item, bool):
            raise ValueError(
                f"--learning-curve takes whole numbers of labelled images per class and 'all', "
                f"e.g. 5,10,25,50. Received: {item!r}"
            )
        if number < MIN_PER_CLASS:
            raise ValueError(
                f"--learning-curve points must be at least {MIN_PER_CLASS} images per class (CV and early "
                f"stopping need one of each class to hold out). Received: {number}"
            )
        parsed.add(number)
    return [*sorted(parsed), ALL]


@dataclass
class CurvePlan:
    """What the curve will fit: its points (capped to the pool), the pool, and the unlabelled rows."""

    per_class: list[int | str]
    pool: np.ndarray  # row indices of train + validation
    capped: list[dict[str, Any]] = field(default_factory=list)
    unlabeled: Unlabeled | None = None  # None: no semi-supervised models


def plan_curve(
    points: str | Sequence[int | str],
    data: LabeledEmbeddings,
    parts: dict[str, np.ndarray],
    *,
    semi_supervised: bool = False,
) -> CurvePlan:
    """Parse and cap the points (with a warning naming the class); load the unlabelled rows the semi models use."""
    requested = parse_points(points)
    unlabeled = (
        load_unlabeled(
            data.cache, data.backbone_key, test_X=data.X[parts["test"]], test_sha256=data.sha256[parts["test"]]
        )
        if semi_supervised
        else None
    )
    pool = np.concatenate([parts["train"], parts["val"]])
    counts = np.bincount(data.y[pool], minlength=len(data.class_names))
    smallest, name = int(counts.min()), data.class_names[int(counts.argmin())]
    per_class: list[int | str] = []
    capped = []
    for n in requested[:-1]:
        if isinstance(n, int) and n > smallest:
            logger.warning(
                "learning curve: %d images per class capped to %d, the training images of class '%s'", n, smallest, name
            )
            capped.append({"requested": n, "used": smallest, "class": name})
            n = smallest
        if n not in per_class:
            per_class.append(n)
    per_class.append(ALL)
    if unlabeled is not None and not len(unlabeled.X) and per_class == [ALL]:
        raise DataError(
            f"--semi-supervised has nothing to learn from: cache '{data.cache}' holds no unlabelled rows "
            "(label -1) and the learning curve holds no labels back (only 'all'). Extract a folder of "
            "unlabelled photos into the cache with the same backbone, or add points, e.g. "
            "--learning-curve 5,10,25."
        )
    return CurvePlan(per_class=per_class, pool=pool, capped=capped, unlabeled=unlabeled)


def draw_subset(pool: np.ndarray, y: np.ndarray, n: int | str, seed: int) -> np.ndarray:
    """n rows of each class from `pool` (seeded, without replacement), sorted; the whole pool for "all"."""
    if n == ALL:
        return np.sort(pool)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(pool[y[pool] == label], size=int(n), replace=False) for label in np.unique(y[pool])]
    return np.sort(np.concatenate(chosen))


def hold_out(
    subset: np.ndarray, y: np.ndarray, n: int | str, parts: dict[str, np.ndarray], *, seed: int
) -> dict[str, np.ndarray]:
    """A network's train and early-stopping rows of a subset: max(1, round(n / 5)) per class held out (seeded,
    stratified); at "all" the stored split's train and validation parts."""
    if n == ALL:
        return {"train": parts["train"], "val": parts["val"]}
    held = max(1, round(DENSE_VALIDATION * int(n))) * len(np.unique(y[subset]))
    train, val = train_test_split(subset, test_size=held, stratify=y[subset], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val)}


def fit_point(
    name: str,
    data: LabeledEmbeddings,
    subset: np.ndarray,
    n: int | str,
    parts: dict[str, np.ndarray],
    *,
    overrides: dict[str, dict[str, list[Any]]] | None,
    folds: int,
    n_jobs: int,
    seed: int,
) -> tuple[Any, dict]:
    """One model selected and fitted on the subset alone; returns the model and its selection record."""
    spec, grid = ZOO[name], grid_for(name, overrides)
    search = "auto" if n == ALL else "grid"  # the whole pool as the sweep searches it; a subset exactly
    if spec.kind == "neural":
        split = hold_out(subset, data.y, n, parts, seed=seed)
        plan = choose_plan(spec, grid, len(split["train"]), search=search)
        return fit_on_validation(spec, grid, data, split, seed=seed, plan=plan)
    if n == ALL:
        return fit_by_cv(
            spec,
            grid,
            data.X[subset],
            data.y[subset],
            folds=folds,
            n_jobs=n_jobs,
            seed=seed,
            plan=choose_plan(spec, grid, len(subset), search=search),
        )
    k = min(folds, int(n))
    fold_rows = len(subset) - -(-len(subset) // k)  # the fewest rows a CV fold trains on
    grid = clip_grid(grid, fold_rows)
    return fit_by_cv(
        spec,
        grid,
        data.X[subset],
        data.y[subset],
        folds=k,
        n_jobs=n_jobs,
        seed=seed,
        plan=choose_plan(spec, grid, len(subset), search=search),
    )


def clip_grid(grid: dict[str, list[Any]], rows: int) -> dict[str, list[Any]]:
    """The grid with sizes no subset of `rows` rows can fit clipped to it: k of k-NN, PCA components."""
    clipped: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if key.endswith("n_neighbors"):
            values = sorted({min(int(v), rows) for v in values})
        elif key == "reduce":
            values = [
                clone(v).set_params(n_components=min(v.n_components, rows))
                if isinstance(v, PCA) and isinstance(v.n_components, int)
                else v
                for v in values
            ]
        clipped[key] = values
    return clipped


def run_curve(
    plan: CurvePlan,
    data: LabeledEmbeddings,
    parts: dict[str, np.ndarray],
    models: Sequence[str],
    *,
    overrides: dict[str, dict[str, list[Any]]] | None,
    seeds: int = DEFAULT_SEEDS,
    folds: int,
    n_jobs: int,
    seed: int,
    fitted: dict[str, dict[str, Any]] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The report's `learning_curve` block (its shape: `classical.report.document`).

    `fitted`: {model: {"test_predictions", "cv_mean"}} of the sweep's own rows (selected the same
    way, with seed `seed`, on the whole pool), reused as seed 0 of the "all" point.
    """
    if seeds < 1:
        raise ValueError(f"learning-curve seeds must be >= 1. Received: {seeds}")
    started = time.perf_counter()
    classical = [name for name in models if ZOO[name].kind == "classical"]
    names = list(models)
    if plan.unlabeled is not None:
        names += [name for name in SEMI_MODELS if classical or name == LABEL_SPREADING]
    accuracy = {name: np.full((len(plan.per_class), seeds), np.nan) for name in names}
    seconds = {name: np.zeros(len(plan.per_class)) for name in names}
    full: dict[str, np.ndarray] = {}  # test predictions at "all", seed 0
    heads: list[list[dict[str, str | None]]] = [[] for _ in plan.per_class]  # each semi model's head, per seed
    heads_at_full: dict[str, str | None] = {}
    bar = tqdm(
        total=len(plan.per_class) * seeds,
        unit="subset",
        desc="learning curve",
        disable=None if progress is None else not progress,
    )
    for p, n in enumerate(plan.per_class):
        for s in range(seeds):
            bar.set_postfix_str(f"{n} per class, seed {seed + s}")
            subset = draw_subset(plan.pool, data.y, n, seed + s)
            reuse = fitted if n == ALL and s == 0 else None
            point = _fit_supervised(
                models,
                data,
                subset,
                n,
                parts,
                overrides=overrides,
                folds=folds,
                n_jobs=n_jobs,
                seed=seed + s,
                reuse=reuse,
            )
            if plan.unlabeled is not None:
                X_unlabeled = np.concatenate([data.X[np.setdiff1d(plan.pool, subset)], plan.unlabeled.X])
                if len(X_unlabeled):  # at "all" without unlabelled rows there is nothing to add
                    used = _fit_semi_point(
                        point,
                        classical,
                        data,
                        subset,
                        n,
                        parts,
                        X_unlabeled,
                        overrides=overrides,
                        folds=folds,
                        n_jobs=n_jobs,
                        seed=seed + s,
                    )
                    heads[p].append(used)
                    if n == ALL and s == 0:
                        heads_at_full = used
            for name, predicted in point.predictions.items():
                accuracy[name][p, s] = float((predicted == data.y[parts["test"]]).mean())
                seconds[name][p] += point.seconds[name] / seeds
                if n == ALL and s == 0:
                    full[name] = predicted
            bar.update()
        logger.info(
            "learning curve, %s per class: %s",
            n,
            ", ".join(
                f"{name} {np.nanmean(accuracy[name][p]):.3f}" for name in names if not np.isnan(accuracy[name][p]).all()
            ),
        )
    bar.close()
    block = _block(plan, data, accuracy, seconds, seeds=seeds, seed=seed, folds=folds)
    if plan.unlabeled is not None:
        block["semi_heads"] = heads
        block["full_labels"] = full_label_tests(
            full, data.y[parts["test"]], heads=heads_at_full, unlabeled=len(plan.unlabeled.X)
        )
    block["seconds"] = time.perf_counter() - started
    return block


@dataclass
class _Point:
    """The supervised fits of one subset: test predictions, CV scores, fitted models and seconds, by model."""

    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    cv_mean: dict[str, float] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _fit_supervised(
    models: Sequence[str],
    data: LabeledEmbeddings,
    subset: np.ndarray,
    n: int | str,
    parts: dict[str, np.ndarray],
    *,
    overrides: dict[str, dict[str, list[Any]]] | None,
    folds: int,
    n_jobs: int,
    seed: int,
    reuse: dict[str, dict[str, Any]] | None,
) -> _Point:
    point = _Point()
    for name in models:
        clock = time.perf_counter()
        if reuse and name in reuse:
            point.predictions[name] = np.asarray(reuse[name]["test_predictions"])
            point.cv_mean[name] = float(reuse[name]["cv_mean"])
        else:
            model, selection = fit_point(
                name, data, subset, n, parts, overrides=overrides, folds=folds, n_jobs=n_jobs, seed=seed
            )
            point.predictions[name] = model.predict(data.X[parts["test"]])
            point.cv_mean[name], point.models[name] = selection["cv_mean"], model
        point.seconds[name] = time.perf_counter() - clock
    return point


def _fit_semi_point(
    point: _Point,
    classical: Sequence[str],
    data: LabeledEmbeddings,
    subset: np.ndarray,
    n: int | str,
    parts: dict[str, np.ndarray],
    X_unlabeled: np.ndarray,
    *,
    overrides: dict[str, dict[str, list[Any]]] | None,
    folds: int,
    n_jobs: int,
    seed: int,
) -> dict[str, str | None]:
    """The semi-supervised models of one subset, their test predictions and seconds added to `point`.

    Returns the supervised model each one extends (the one its paired test at "all" compares it with):
    self-training and label spreading the point's best-CV classical head, agreement the best-CV linear one.
    """
    head = max(classical, key=lambda name: point.cv_mean[name], default=None)
    linear = max(
        (name for name in classical if name in LINEAR_HEADS), key=lambda name: point.cv_mean[name], default=head
    )
    for name in [
        name for name in {head, linear} - set(point.models) if name is not None
    ]:  # the sweep's row was reused: fit its twin to wrap it
        point.models[name], _ = fit_point(
            name, data, subset, n, parts, overrides=overrides, folds=folds, n_jobs=n_jobs, seed=seed
        )
    clock = time.perf_counter()
    semi = fit_semi(
        data.X[subset],
        data.y[subset],
        X_unlabeled,
        point.models.get(head or ""),
        agreement_head=point.models.get(linear or ""),
    )
    for name, model in semi.items():
        point.predictions[name] = model.predict(data.X[parts["test"]])
        point.seconds[name] = (time.perf_counter() - clock) / len(semi)
    return {name: linear if name == AGREEMENT else head for name in semi}


def full_label_tests(
    full: dict[str, np.ndarray], y_test: np.ndarray, *, heads: dict[str, str | None], unlabeled: int
) -> dict[str, Any]:
    """At "all": each semi-supervised model against the supervised head it extends (`heads`), paired on the test
    images."""
    if not unlabeled:
        return {
            "unlabeled_rows": 0,
            "tests": [],
            "not_run": "the cache holds no unlabelled rows: at 'all' no label is held back, nothing to learn from",
        }
    tests = []
    for semi in SEMI_MODELS:
        head = heads.get(semi)
        if semi in full and head in full:
            paired = paired_comparison(y_test, full[semi], full[head])
            tests.append(
                {
                    "semi": semi,
                    "supervised": head,
                    **paired,
                    "helped": bool(paired["significant"] and paired["difference"] > 0),
                }
            )
    return {"unlabeled_rows": unlabeled, "tests": tests, "not_run": None}


def seed_summary(accuracy: dict[str, np.ndarray]) -> dict[str, dict[str, list[Any]]]:
    """The curve's `models` (mean), `std` (sample std, ddof=1) and `accuracies` (each seed) of points x seeds arrays;
    NaN (not fitted) is left out, and is null where nothing is left."""

    def mean(row: np.ndarray) -> float | None:
        row = row[~np.isnan(row)]
        return float(np.mean(row)) if len(row) else None

    def spread(row: np.ndarray) -> float | None:
        row = row[~np.isnan(row)]
        return float(np.std(row, ddof=1)) if len(row) > 1 else None

    return {
        "models": {name: [mean(row) for row in a] for name, a in accuracy.items()},
        "std": {name: [spread(row) for row in a] for name, a in accuracy.items()},
        "accuracies": {
            name: [[None if np.isnan(v) else float(v) for v in row] for row in a] for name, a in accuracy.items()
        },
    }


def _block(
    plan: CurvePlan,
    data: LabeledEmbeddings,
    accuracy: dict[str, np.ndarray],
    seconds: dict[str, np.ndarray],
    *,
    seeds: int,
    seed: int,
    folds: int,
) -> dict[str, Any]:
    classes = len(data.class_names)
    kinds = {name: ZOO[name].kind if name in ZOO else "semi-supervised" for name in accuracy}
    return {
        "per_class": plan.per_class,
        "images": [len(plan.pool) if n == ALL else int(n) * classes for n in plan.per_class],
        "seeds": seeds,
        "seed_values": [seed + s for s in range(seeds)],
        **seed_summary(accuracy),
        "kinds": kinds,
        "fit_seconds": {name: [float(v) for v in s] for name, s in seconds.items()},
        "folds": [folds if n == ALL else min(folds, int(n)) for n in plan.per_class],
        "capped": plan.capped,
        "unlabeled": None if plan.unlabeled is None else plan.unlabeled.record(),
        "method": (
            f"n labelled images per class drawn from train + validation (seeded, stratified, {seeds} seeds: "
            f"{seed}..{seed + seeds - 1}), scored on the stored test split; mean and sample std (ddof=1) of the "
            f"seeds' test accuracies. Classical models: grid search over the sweep's grids by min({folds}, n)-fold "
            f"stratified CV on the subset alone. Dense head: {round(100 * DENSE_VALIDATION)}% of each class's n "
            "images (at least 1) held out for early stopping and its grid; at 'all' the stored validation part."
            + (f" Semi-supervised: {SEMI_DESCRIPTION}." if plan.unlabeled is not None else "")
        ),
    }
