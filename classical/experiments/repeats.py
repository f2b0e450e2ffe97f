"""`sweep(..., repeats=K)`: the ranking over K re-splits, so that it does not hang on one split.

Each repeat r = 0..K-1 draws a new split with seed `seed + r` exactly as the run's split is drawn
(`make_split`: stratified, identical bytes and near-duplicates kept together, the same fractions), stores it as
`RUN/repeats/split-<seed>.json`, and selects and fits every requested model on it with the same
selection as the sweep (`select_and_fit`: same grids, CV folds seeded with the repeat's seed, the
Dense head on the repeat's validation part). Only test accuracy is kept; no model file is written.
The cached embeddings make this cheap: no image is embedded again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from classical.data.rows import LabeledEmbeddings
from classical.data.splits import Split, make_split
from classical.models.zoo import ZOO, grid_for
from classical.search.selection import cv_folds, select_and_fit

logger = logging.getLogger(__name__)


def repeat_split(data: LabeledEmbeddings, folder: Path, seed: int, fractions: tuple[float, ...]) -> Split:
    """The stored split of repeat `seed` if it still fits the data, else a new one (stored)."""
    path = folder / f"split-{seed}.json"
    if path.is_file():
        stored = Split.load(path)
        if (
            stored.seed == seed
            and tuple(stored.fractions) == tuple(fractions)
            and stored.backbone_key == data.backbone_key
            and set(stored.assignment) == set(data.paths.tolist())
        ):
            return stored
    split = make_split(
        data.paths,
        data.sha256,
        data.y,
        data.class_names,
        backbone_key=data.backbone_key,
        fractions=fractions,
        seed=seed,
        X=data.X,
    )
    folder.mkdir(parents=True, exist_ok=True)
    split.save(path)
    return split


def run_repeats(
    data: LabeledEmbeddings,
    models: Sequence[str],
    overrides: dict[str, dict[str, list[Any]]] | None,
    *,
    k: int,
    seed: int,
    fractions: tuple[float, ...],
    cv: int,
    search: str,
    n_jobs: int,
    run: Path,
    progress: bool | None = None,
    fitted: tuple[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The report's `repeats` block: each model's test accuracy on K re-splits, mean, std, times ranked first.

    `fitted`: (split id, {model: test accuracy}) of models the sweep has just fitted with the same
    selection and seed `seed`: when repeat 0's split is that split (same seed, same fractions, same
    images), fitting again would give the same models, so their accuracies are taken as they are.
    """
    if k < 1:
        raise ValueError(f"repeats must be >= 1. Received: repeats={k}")
    started = time.perf_counter()
    seeds = [seed + r for r in range(k)]
    accuracies: dict[str, list[float]] = {name: [] for name in models}
    splits, reused = [], []
    bar = tqdm(total=k * len(models), unit="fit", desc="repeats", disable=None if progress is None else not progress)
    for repeat_seed in seeds:
        split = repeat_split(data, run / "repeats", repeat_seed, fractions)
        parts = split.indices(data.paths)
        folds = cv_folds(data.y[np.concatenate([parts["train"], parts["val"]])], cv, data.class_names)
        splits.append(
            {
                "seed": repeat_seed,
                "id": split.id,
                "n_test": len(parts["test"]),
                "path": str(Path("repeats") / f"split-{repeat_seed}.json"),
            }
        )
        for name in models:
            bar.set_postfix_str(f"seed {repeat_seed} {name}")
            if fitted and repeat_seed == seed and split.id == fitted[0] and name in fitted[1]:
                accuracies[name].append(float(fitted[1][name]))
                reused.append(name)
                bar.update()
                continue
            model, _ = select_and_fit(
                ZOO[name],
                grid_for(name, overrides),
                data,
                parts,
                folds=folds,
                search=search,
                n_jobs=n_jobs,
                seed=repeat_seed,
            )
            predicted = np.argmax(model.predict_proba(data.X[parts["test"]]), axis=1)
            accuracies[name].append(float((predicted == data.y[parts["test"]]).mean()))
            bar.update()
    bar.close()
    table = np.array([accuracies[name] for name in models])  # (models, repeats)
    firsts = (table >= table.max(axis=0, keepdims=True) - 1e-12).sum(axis=1)  # ties: each tied model counts
    block = {
        "k": k,
        "seeds": seeds,
        "splits": splits,
        "models": {
            name: {
                "accuracies": accuracies[name],
                "mean": float(np.mean(accuracies[name])),
                "std": float(np.std(accuracies[name], ddof=1)) if k > 1 else None,
                "first": int(first),
            }
            for name, first in zip(models, firsts)
        },
        "seconds": time.perf_counter() - started,
        "reused": (
            {"seed": seed, "models": reused, "why": "repeat 0's split is the run's split: the sweep's rows"}
            if reused
            else None
        ),
        "method": (
            f"{k} stratified splits (seeds {seeds[0]}..{seeds[-1]}, fractions {list(fractions)}, identical bytes "
            "together), each model selected and fitted on each as in the sweep; std is the sample standard "
            "deviation (ddof=1); 'first' counts the splits where a model has the best test accuracy (ties count "
            "for each tied model)"
        ),
    }
    logger.info("repeats: %d splits x %d models in %.1f s", k, len(models), block["seconds"])
    return block
