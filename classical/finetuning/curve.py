"""Fine-tuned networks on a run's learning curve, on request (`--learning-curve-neural`): they cost far more.

A sweep run holds a cache, not photos, so the neural curve is drawn by `classical finetune PHOTOS --out
RUN --learning-curve-neural`, after the run's own fine-tuning, at the points and seeds of the run's
`learning_curve` (written by `classical sweep --learning-curve`). Every subset is the classical one:
`classical.experiments.curves.draw_subset` on the same pool (train + validation of the stored split, rows of the
run's cache) with the same seed, and the network holds out the same rows for early stopping as the
Dense head does there (`classical.experiments.curves.hold_out`: max(1, round(n / 5)) per class; at "all" the stored
validation part). Each network trains with the fine-tuning's settings, seeded with the subset's seed,
and is scored on the stored test split. At "all", seed 0 is the fine-tuning's own row when it was
trained with that seed. Each subset keeps its progress in RUN/learning-curve/finetune-<variant>/<n>-seed<s>/
(an interrupted curve resumes; a finished subset is only scored again); its cached activations are
deleted once it is trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classical.data.rows import load_labeled
from classical.data.splits import Split
from classical.errors import DataError
from classical.experiments.curves import ALL, draw_subset, hold_out, seed_summary
from classical.finetuning.images import Images
from classical.models.network import predict_proba

logger = logging.getLogger(__name__)

METHOD = (
    "trained with the fine-tuning's settings on the classical subsets (same seeds, same rows), on the rows the "
    "Dense head holds out for early stopping, seeded with the subset's seed; at 'all' seed 0 is the fine-tuning's row"
)
Train = Callable[[Images, Path, "np.ndarray | None", int, dict[str, Any]], Any]
"""(images, progress folder, their embeddings or None, seed, config additions) -> the trained network."""


def require_curve(report: dict[str, Any] | None, run: Path) -> dict[str, Any]:
    """The run's learning curve, or a one-line error naming the sweep option that draws it."""
    curve = (report or {}).get("learning_curve")
    if not curve or not curve.get("per_class"):
        raise DataError(
            f"'{run / 'report.json'}' has no learning curve to put the fine-tuned network on; run "
            f"`classical sweep CACHE --out {run} --learning-curve 5,10,25,50` first, then "
            "`classical finetune PHOTOS --out RUN --learning-curve-neural`."
        )
    return curve


def curve_subsets(report: dict[str, Any], run: Path, paths: Sequence[str]) -> list[list[dict[str, np.ndarray] | None]]:
    """For each point and seed of the run's curve, the rows of `paths` the network trains and stops on (the
    classical subset, drawn again from the run's cache and split); None at "all" (the stored parts)."""
    curve = require_curve(report, run)
    cache = Path(report["cache"])
    if cache.suffix != ".h5" or not cache.is_file():
        raise DataError(
            f"the learning curve of '{run}' was drawn from cache '{cache}', which is not here; the "
            "fine-tuned curve redraws the same subsets from it: restore the cache at that path."
        )
    labeled = load_labeled(cache, report["backbone"])
    parts = Split.load(run / "split.json").indices(labeled.paths)
    pool = np.concatenate([parts["train"], parts["val"]])
    position = {path: i for i, path in enumerate(paths)}
    subsets: list[list[dict[str, np.ndarray] | None]] = []
    for n in curve["per_class"]:
        row: list[dict[str, np.ndarray] | None] = []
        for seed in curve["seed_values"]:
            if n == ALL:
                row.append(None)
                continue
            inner = hold_out(draw_subset(pool, labeled.y, n, seed), labeled.y, n, parts, seed=seed)
            row.append(
                {
                    part: np.array([position[str(labeled.paths[i])] for i in rows], dtype=np.int64)
                    for part, rows in inner.items()
                }
            )
        subsets.append(row)
    return subsets


def add_finetune_curve(
    report: dict[str, Any],
    run: Path,
    data: Images,
    embeddings: np.ndarray | None,
    row: dict[str, Any],
    *,
    train: Train,
    batch_size: int,
) -> dict[str, Any]:
    """Train the fine-tuning on each subset of the run's curve and add its line (`row["name"]`) to the curve."""
    curve = require_curve(report, run)
    name, seeds = row["name"], curve["seed_values"]
    subsets = curve_subsets(report, run, data.paths)
    accuracy = np.full((len(curve["per_class"]), len(seeds)), np.nan)
    seconds = np.zeros_like(accuracy)
    started = time.perf_counter()
    for p, n in enumerate(curve["per_class"]):
        for s, seed in enumerate(seeds):
            clock = time.perf_counter()
            if n == ALL and s == 0 and (row.get("params") or {}).get("seed") == seed:  # the fine-tuning's own row
                accuracy[p, s], seconds[p, s] = row["test_accuracy"], row["fit_seconds"]
                continue
            images, subset_embeddings = _subset_images(data, embeddings, subsets[p][s])
            folder = run / "learning-curve" / name / f"{n}-seed{seed}"
            network = train(images, folder, subset_embeddings, seed, {"curve": _identity(images, n, seed)})
            shutil.rmtree(folder / "activations", ignore_errors=True)
            test = images.parts["test"]
            predicted = predict_proba(network, images.pixels, test, batch_size).argmax(axis=1)
            accuracy[p, s] = float((predicted == images.labels[test]).mean())
            seconds[p, s] = time.perf_counter() - clock
            logger.info(
                "learning curve, %s: %s per class, seed %d: test accuracy %.3f (%.0f s)",
                name,
                n,
                seed,
                accuracy[p, s],
                seconds[p, s],
            )
    summary = seed_summary({name: accuracy})
    for key in ("models", "std", "accuracies"):
        curve[key][name] = summary[key][name]
    curve["kinds"][name] = "neural"
    curve["fit_seconds"][name] = [float(v) for v in seconds.mean(axis=1)]
    curve.setdefault("finetune", {})[name] = {
        "seconds": time.perf_counter() - started,
        "subsets": [
            [
                None if subset is None else {part: [data.paths[i] for i in rows] for part, rows in subset.items()}
                for subset in point
            ]
            for point in subsets
        ],
        "method": METHOD,
    }
    return curve


def _subset_images(
    data: Images, embeddings: np.ndarray | None, subset: dict[str, np.ndarray] | None
) -> tuple[Images, np.ndarray | None]:
    """The images of one subset and the test images (in memory), or all of them at "all"."""
    if subset is None:
        return data, embeddings
    rows = np.concatenate([subset["train"], subset["val"], data.parts["test"]])
    bounds = np.cumsum([0, len(subset["train"]), len(subset["val"]), len(data.parts["test"])])
    parts = {part: np.arange(bounds[i], bounds[i + 1]) for i, part in enumerate(("train", "val", "test"))}
    images = Images(
        pixels=np.asarray(data.pixels[rows]), labels=data.labels[rows], paths=[data.paths[i] for i in rows], parts=parts
    )
    return images, None if embeddings is None else embeddings[rows]


def _identity(images: Images, n: int | str, seed: int) -> dict[str, Any]:
    """What a subset's progress folder was trained on: its point, seed and the digest of its train/val paths."""
    named = {part: sorted(images.paths[i] for i in images.parts[part]) for part in ("train", "val")}
    return {"per_class": n, "seed": seed, "paths_sha256": hashlib.sha256(json.dumps(named).encode()).hexdigest()[:16]}
