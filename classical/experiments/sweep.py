"""The sweep: every model of the zoo fitted on one stored split of cached embeddings, then compared.

Classical models are selected by stratified k-fold CV on train + validation (they have no use
for a separate validation set); the Dense head is selected on the validation split (early
stopping needs it). The test split is touched once per model, for the final table. Test images
are scored in the order of their sorted paths (`report["split"]["test_paths"]`), so every row's
`test_predictions` pair up image by image for the paired comparison. Once per sweep the backbone
is timed from pixels (`classical.experiments.costs`), so that every row's cost counts backbone + head; with
`repeats=K` the models are also fitted on K re-splits (`classical.experiments.repeats`).
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
from tqdm import tqdm

from classical.audit import audit as run_audit
from classical.data.rows import LabeledEmbeddings, load_labeled
from classical.data.splits import DEFAULT_FRACTIONS, Split, load_or_make_split
from classical.errors import DataError
from classical.experiments.costs import measure_embedding, not_measured
from classical.experiments.curves import ALL, parse_points, plan_curve, run_curve
from classical.modelfiles.saved import EMBEDDING_FIELDS, MODEL_SUFFIX, save_model
from classical.models.zoo import MODEL_NAMES, ZOO, ModelSpec, grid_for, load_grids
from classical.report import (
    add_rows,
    format_table,
    latency_ms,
    load_report,
    new_report,
    score,
    verdict,
    write_report,
)
from classical.search.budget import plan_sweep
from classical.search.selection import cv_folds, select_and_fit
from classical.search.strategies import STRATEGY_FIELDS, Plan
from classical.search.threads import limited, measure, plan_threads

__all__ = ["cv_folds", "fit_and_score", "joblib_backend", "rerender", "summary", "sweep"]
logger = logging.getLogger(__name__)
SEARCHES = ("auto", "grid", "halving")
ENGINES = ("local", "ray")
LATENCY_ROWS = 1000  # test rows the head's latency is timed on (all 7,503 doubled kNN's scoring time at 50,000 rows)


def sweep(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    *,
    models: Sequence[str] = MODEL_NAMES,
    backbone: str | None = None,
    grids: str | os.PathLike | dict[str, dict[str, list[Any]]] | None = None,
    search: str = "auto",
    cv: int = 5,
    n_jobs: int = -1,
    seed: int = 0,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    progress: bool | None = None,
    engine: str = "local",
    address: str | None = None,
    repeats: int = 0,
    embedding_cost: bool = True,
    audit: bool = True,
    learning_curve: str | Sequence[int | str] | None = None,
    curve_seeds: int = 3,
    semi_supervised: bool = False,
    time_budget: float | None = None,
) -> dict[str, Any]:
    """Fit and compare `models` on the cache's embeddings; write the report into `out`; return it.

    `engine="ray"` runs the searches' joblib jobs on the Ray cluster at `address` (default: a
    local Ray): same seeds, same folds, same report as a local sweep. `repeats=K` (K >= 1) also
    re-splits with seeds seed..seed+K-1 (stored in `out/repeats/`), fits the same models on each
    split with the same selection (no model files) and adds `report["repeats"]`.
    `embedding_cost=False` skips timing the backbone (costs from pixels stay null unless an
    earlier sweep of the run measured them). `audit=True` (default) audits the cache on the run's
    split first (`classical.audit`: `out/audit.json`, its counts in `report["audit"]`).
    `learning_curve="5,10,25,50"` ("all" implied last) also fits the models on `curve_seeds` seeded
    subsets of n labelled images per class (`classical.experiments.curves`: `report["learning_curve"]`);
    `semi_supervised=True` adds the semi-supervised models (`classical.experiments.semi`) to the curve (alone: at "all").
    `search="auto"` (default) picks each model's strategy by its size (`classical.search.strategies`);
    "grid"/"halving" search every model on all rows. `time_budget=SECONDS` plans the model fits
    within it (`classical.search.budget`: trial fits, then cuts; a BudgetError before any fit if it cannot).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}. Received: engine={engine!r}")
    unknown = [name for name in models if name not in ZOO]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}. Received: search={search!r}")
    if repeats is None or repeats < 0:
        raise ValueError(f"repeats must be 0 (none) or a number of re-splits >= 1. Received: repeats={repeats!r}")
    points = None if learning_curve is None and not semi_supervised else parse_points(learning_curve or ALL)
    if points is not None and (curve_seeds is None or curve_seeds < 1):
        raise ValueError(
            f"curve_seeds must be a number of subsets per point >= 1. Received: curve_seeds={curve_seeds!r}"
        )
    overrides = load_grids(grids) if isinstance(grids, (str, os.PathLike)) else grids
    run = Path(out)
    data = load_labeled(cache, backbone)
    split = load_or_make_split(run, data, fractions=fractions, seed=seed)
    parts = sorted_test(split.indices(data.paths), data)
    folds = cv_folds(data.y[np.concatenate([parts["train"], parts["val"]])], cv, data.class_names)
    plan = None if points is None else plan_curve(points, data, parts, semi_supervised=semi_supervised)
    threads = plan_threads(n_jobs)
    with limited(threads, local=engine == "local"):  # before the audit: a budget that cannot fit fails first
        plans, planning = plan_sweep(
            {name: (ZOO[name], grid_for(name, overrides)) for name in models},
            data,
            parts,
            folds=folds,
            search=search,
            workers=threads["workers"],
            seed=seed,
            time_budget=time_budget,
        )
        measured = measure(threads) if engine == "local" else {}
    for cut in planning["cuts"]:
        logger.warning("time budget %s s: %s", time_budget, cut)
    record = split.summary() | {
        "test_paths": [str(p) for p in data.paths[parts["test"]]],
        "test_labels": [int(label) for label in data.y[parts["test"]]],
    }
    report = (
        load_report(run)
        if (run / "report.json").is_file()
        else new_report(backbone=data.backbone_key, cache=str(cache), class_names=data.class_names, split=record)
    )
    if report["split"]["id"] != split.id or report["class_names"] != data.class_names:
        raise DataError(f"report in '{run}' belongs to another split or class list; use another --out directory.")
    report["split"].update(record)  # reports written before the test paths were recorded get them
    if audit:
        audited = run_audit(cache, run, backbone=data.backbone_key, cv=cv, seed=seed)
        report["audit"] = {
            "path": "audit.json",
            "seconds": audited["seconds"],
            **audited["summary"],
            "label_issues_skipped": audited["label_issues_skipped"],
        }
    if embedding_cost:
        report["embedding"] = measure_embedding(
            data, record["test_paths"], n_trainval=len(parts["train"]) + len(parts["val"])
        )
    elif not (report.get("embedding") or {}).get("ms_per_image"):
        report["embedding"] = not_measured("embedding_cost=False")
    report["planning"], report["threads"] = planning, threads | measured
    bar = tqdm(list(models), unit="model", desc="sweep", disable=None if progress is None else not progress)
    fitted: dict[str, float] = {}
    rows: dict[str, dict[str, Any]] = {}
    with joblib_backend(engine, address), limited(threads, local=engine == "local"):
        for name in bar:
            bar.set_postfix_str(name)
            row = fit_and_score(
                ZOO[name],
                grid_for(name, overrides),
                data,
                parts,
                split,
                run=run,
                folds=folds,
                search=search,
                n_jobs=threads["workers"] if engine == "local" else n_jobs,
                seed=seed,
                plan=plans[name],
            )
            add_rows(report, [row])
            fitted[name], rows[name] = row["test_accuracy"], row
            logger.info("%s: test accuracy %.3f, fit %.1f s", name, row["test_accuracy"], row["fit_seconds"])
        bar.close()
        if repeats:
            from classical.experiments.repeats import run_repeats

            report["repeats"] = run_repeats(
                data,
                list(models),
                overrides,
                k=repeats,
                seed=seed,
                fractions=fractions,
                cv=cv,
                search=search,
                n_jobs=n_jobs,
                run=run,
                progress=progress,
                fitted=(split.id, fitted),
            )
        if plan is not None:
            report["learning_curve"] = run_curve(
                plan,
                data,
                parts,
                list(models),
                overrides=overrides,
                seeds=curve_seeds,
                folds=folds,
                n_jobs=n_jobs,
                seed=seed,
                progress=progress,
                fitted={name: row for name, row in rows.items() if plans[name].strategy == "exact"},
            )
    write_report(report, run)
    return report


def sorted_test(parts: dict[str, np.ndarray], data: LabeledEmbeddings) -> dict[str, np.ndarray]:
    """The split's row indices with the test rows in the order of their paths (the report's `test_paths`)."""
    test = parts["test"]
    order = sorted(range(len(test)), key=lambda i: str(data.paths[test[i]]))
    return {**parts, "test": test[np.array(order, dtype=np.int64)] if len(test) else test}


def joblib_backend(engine: str, address: str | None) -> contextlib.AbstractContextManager:
    """Where the searches' joblib jobs run: this machine's processes, or the tasks of a Ray cluster."""
    if engine == "local":
        return contextlib.nullcontext()
    from embedder import connect

    connect(address)
    from ray.util.joblib import register_ray

    register_ray()
    return joblib.parallel_config(backend="ray")


def fit_and_score(
    spec: ModelSpec,
    grid: dict[str, list[Any]],
    data: LabeledEmbeddings,
    parts: dict[str, np.ndarray],
    split: Split,
    *,
    run: Path,
    folds: int,
    search: str,
    n_jobs: int,
    seed: int,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """Select, fit, score on test and save one model; returns its report row.

    `predict_ms_per_image` and `fit_seconds_with_embedding` are filled in by the report from its
    `embedding` block when the row is added (see `classical.report.document`).
    """
    started = time.perf_counter()
    model, selection = select_and_fit(
        spec, grid, data, parts, folds=folds, search=search, n_jobs=n_jobs, seed=seed, plan=plan
    )
    fit_seconds = time.perf_counter() - started
    X_test, y_test = data.X[parts["test"]], data.y[parts["test"]]
    metrics = score(y_test, model.predict_proba(X_test), data.class_names)
    path = run / f"{spec.name}{MODEL_SUFFIX}"
    metadata = {
        "name": spec.name,
        "kind": spec.kind,
        "backbone_key": data.backbone_key,
        "backbone": {field: data.provenance[field] for field in EMBEDDING_FIELDS if field in data.provenance},
        "class_names": data.class_names,
        "dim": int(data.X.shape[1]),
        "split_id": split.id,
        "params": selection["params"],
        "metrics": {
            k: v for k, v in metrics.items() if k not in ("confusion_matrix", "test_predictions", "test_confidence")
        },
    }
    model_bytes = save_model(path, model, metadata)
    return {
        "name": spec.name,
        "kind": spec.kind,
        "description": spec.description,
        **metrics,
        "cv_mean": selection["cv_mean"],
        "cv_std": selection["cv_std"],
        "selection": selection["selection"],
        "grid": selection["grid"],
        "fit_seconds": fit_seconds,
        "fit_seconds_with_embedding": None,
        "predict_ms_per_image": None,
        "head_ms_per_image": latency_ms(model.predict_proba, X_test[:LATENCY_ROWS]),
        "model_bytes": model_bytes,
        "params": selection["params"],
        "model_path": str(path),
        **{key: selection[key] for key in STRATEGY_FIELDS},
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
