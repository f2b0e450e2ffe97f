"""The training photos nearest each of the best model's most confident test errors, so a reader sees why it erred.

report.json's `errors_nearest_train` (null while no row has test predictions)::

    {"model", "kind", "errors_total" (test photos the model got wrong), "k", "max_errors",
     "similarity", "search" (in words), "train_rows" (rows searched), "skipped" (null, or why there are no
     neighbours), "computed_for" (digest of the model, split, backbone and errors it was computed for),
     "errors": [{"path", "label", "predicted", "confidence" (the probability the model gave the predicted
                 class; null in older rows), "nearest": [{"path", "label", "similarity"}] (descending)}]}

Which errors: those of `best_row` (the row the verdict calls best), most confident first (by the
probability the model gave the wrong class it predicted, ties in the order of `split.test_paths`), at
most MAX_ERRORS. Which neighbours: the K nearest training photos of each by the audit's similarity
(`embedder.normalise`: the cosine of power-normalised embeddings), searched exactly over the photos the
model was fitted on, never the test rows: the split's train rows for a neural row (its validation rows
only stop its training), train and validation rows for a classical row (refit on both after the search).
The cache's embeddings are read BLOCK_ROWS rows at a time (`CachedBackbone.normalised_blocks`); the
searched rows of each block are compared with the errors' rows, and the best K so far are kept: memory
is one block, whatever the size of the cache. The similarity is that of the
cached embeddings (the frozen backbone's), for a fine-tuned best row too.

`refresh_nearest` recomputes the record whenever what it was computed for changed (another best row,
such as a fine-tuned row that beat the sweep's best, or other errors); `write_report` calls it, so the
record never goes stale and the views (report.md, report.html) only read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from classical.data.splits import Split
from classical.report.document import best_row
from embedder import SIMILARITY, normalise, open_cache

logger = logging.getLogger(__name__)

MAX_ERRORS = 24  # most confident test errors of the best row
FITTED_ON = {"neural": ("train",), "classical": ("train", "val")}  # the split parts each kind is fitted on
K = 4  # nearest training photos of each
BLOCK_ROWS = 8192  # cache rows read (and their train rows normalised) at a time


def confident_errors(report: dict[str, Any], row: dict[str, Any], limit: int = MAX_ERRORS) -> list[int]:
    """Indices into `split.test_paths` of the test photos `row` got wrong, most confident first, at most `limit`."""
    labels = report["split"].get("test_labels")
    predicted = row.get("test_predictions")
    if labels is None or not predicted or len(predicted) != len(labels):
        return []
    confidence = row.get("test_confidence") or [None] * len(labels)
    wrong = [i for i, (p, y) in enumerate(zip(predicted, labels)) if p != y]
    return sorted(wrong, key=lambda i: (-(confidence[i] if confidence[i] is not None else -1.0), i))[:limit]


def nearest_rows(
    Q: np.ndarray, blocks: Iterator[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of `blocks` most similar to each normalised query: similarities (n, k) descending and row numbers.

    `blocks` yields (row numbers, normalised rows); the best k so far are merged with each block, so
    only one block is held at a time. Ties go to the lower row number; fewer than k rows: -1, -inf.
    """
    n = len(Q)
    sims = np.full((n, 0), -np.inf, np.float32)
    rows = np.zeros((n, 0), np.int64)
    for ids, Z in blocks:
        if not len(ids):
            continue
        sims = np.concatenate([sims, Q @ Z.T], axis=1)
        rows = np.concatenate([rows, np.broadcast_to(np.asarray(ids, np.int64), (n, len(ids)))], axis=1)
        order = np.lexsort((rows, -sims))[:, :k]
        sims, rows = np.take_along_axis(sims, order, axis=1), np.take_along_axis(rows, order, axis=1)
    missing = k - sims.shape[1]
    if missing > 0:
        sims = np.pad(sims, ((0, 0), (0, missing)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, missing)), constant_values=-1)
    return sims, rows


def errors_nearest_train(
    report: dict[str, Any],
    run: Path,
    *,
    k: int = K,
    max_errors: int = MAX_ERRORS,
    block_rows: int = BLOCK_ROWS,
) -> dict[str, Any] | None:
    """The record of the best row's most confident test errors and their nearest training photos (see the module).

    None when no row has test predictions; a record with `skipped` (and no neighbours) when they cannot
    be searched: no cache of the run's backbone, no split.json, a split that is not the report's.
    """
    row = best_row(report)
    if row is None or not row.get("test_predictions"):
        return None
    split, names = report["split"], report["class_names"]
    chosen = confident_errors(report, row, max_errors)
    paths = [split["test_paths"][i] for i in chosen]
    confidence = row.get("test_confidence") or [None] * len(split["test_paths"])
    errors = [
        {
            "path": split["test_paths"][i],
            "label": names[split["test_labels"][i]],
            "predicted": names[row["test_predictions"][i]],
            "confidence": confidence[i],
            "nearest": [],
        }
        for i in chosen
    ]
    wrong = sum(p != y for p, y in zip(row["test_predictions"], split.get("test_labels") or []))
    record: dict[str, Any] = {
        "model": row["name"],
        "kind": row["kind"],
        "errors_total": int(wrong),
        "k": k,
        "max_errors": max_errors,
        "similarity": SIMILARITY,
        "search": None,
        "train_rows": None,
        "skipped": None,
        "computed_for": computed_for(report, row, chosen),
        "errors": errors,
    }
    if not errors:
        return record
    cache = _cache_file(report, run)
    split_file = run / "split.json"
    if cache is None:
        return record | {"skipped": f"no embedding cache of the run is here ({report['cache']})"}
    if not split_file.is_file():
        return record | {"skipped": f"the run has no {split_file.name}"}
    stored = Split.load(split_file)
    if stored.id != split["id"]:
        return record | {"skipped": f"{split_file.name} is split {stored.id}, the report's is {split['id']}"}
    with open_cache(cache) as opened:
        if report["backbone"] not in opened.keys:
            return record | {"skipped": f"cache '{cache}' has no rows of backbone {report['backbone']}"}
        cached = opened[report["backbone"]]
        cache_paths, labels, cache_names = cached.paths, cached.labels, cached.class_names
        row_of: dict[str, int] = {}
        wanted = set(paths)
        for r, path in enumerate(cache_paths.tolist()):
            if path in wanted:
                row_of[path] = r
        absent = [path for path in paths if path not in row_of]
        if absent:
            return record | {"skipped": f"{len(absent)} of the errors' photos are not in cache '{cache}' ({absent[0]})"}
        fitted = FITTED_ON.get(row["kind"], ("train",))
        train = np.array([stored.assignment.get(str(path)) in fitted for path in cache_paths], bool)
        queries = [row_of[path] for path in paths]
        order = sorted(set(queries))
        read = dict(zip(order, cached.embeddings[order]))
        Q = normalise(np.stack([read[r] for r in queries]))
        blocks = cached.normalised_blocks(block_rows=block_rows, where=train)
        sims, near = nearest_rows(Q, ((block.rows, block.Z) for block in blocks), k)
    for error, found_sims, found_rows in zip(errors, sims, near):
        error["nearest"] = [
            {
                "path": str(cache_paths[r]),
                "label": cache_names[labels[r]] if labels[r] >= 0 else "",
                "similarity": round(float(s), 4),
            }
            for s, r in zip(found_sims.tolist(), found_rows.tolist())
            if r >= 0
        ]
    searched = int(train.sum())
    return record | {
        "train_rows": searched,
        "search": (
            f"exact: each error against the {searched:,} {' and '.join(fitted)} rows of split {split['id']} (what "
            f"the model was fitted on) in cache '{cache}' (read {block_rows:,} rows at a time), not the test rows"
        ),
    }


def computed_for(report: dict[str, Any], row: dict[str, Any], chosen: list[int]) -> str:
    """A digest of what the record depends on: model, split, backbone and the errors chosen (with their predictions)."""
    confidence = row.get("test_confidence") or [None] * len(report["split"]["test_paths"])
    basis = [
        row["name"],
        report["split"]["id"],
        report["backbone"],
        [[report["split"]["test_paths"][i], row["test_predictions"][i], confidence[i]] for i in chosen],
    ]
    return hashlib.sha256(json.dumps(basis).encode()).hexdigest()[:16]


def refresh_nearest(report: dict[str, Any], run: Path) -> None:
    """Recompute `report["errors_nearest_train"]` unless it is of the current best row and errors (and not skipped)."""
    stored = report.get("errors_nearest_train")
    row = best_row(report)
    if stored and not stored.get("skipped") and row is not None and row.get("test_predictions"):
        chosen = confident_errors(report, row, stored.get("max_errors", MAX_ERRORS))
        if stored.get("computed_for") == computed_for(report, row, chosen):
            return
    report["errors_nearest_train"] = errors_nearest_train(report, run)
    skipped = (report["errors_nearest_train"] or {}).get("skipped")
    if skipped:
        logger.info("report: no nearest training photos of the best model's errors: %s", skipped)


def _cache_file(report: dict[str, Any], run: Path) -> Path | None:
    """The run's cache: the one it was swept on, or the one a fine-tuning without a sweep embedded its photos in."""
    cache = Path(report["cache"])
    if cache.suffix == ".h5" and cache.is_file():
        return cache
    own = run / "embeddings.h5"
    return own if own.is_file() else None


def nearest_reading(record: dict[str, Any]) -> str:
    """One sentence on the record for people: which errors are shown, how many sit among the predicted class."""
    errors = record["errors"]
    which = (
        f"All {len(errors)} test errors of {record['model']}, most confident first"
        if len(errors) == record["errors_total"]
        else f"The {len(errors)} most confident of the {record['errors_total']} test errors of {record['model']}"
    )
    sentence = (
        f"{which} (true → predicted, the model's probability), each with its {record['k']} nearest training "
        "photos (label, similarity)."
    )
    searched = [error for error in errors if error["nearest"]]
    if searched:
        among = sum(
            2 * sum(near["label"] == error["predicted"] for near in error["nearest"]) > len(error["nearest"])
            for error in searched
        )
        sentence += (
            f" For {among} of the {len(searched)}, most of those training photos are of the predicted class: "
            "the photo looks like the training photos of that class."
        )
    return sentence


def nearest_markdown(report: dict[str, Any]) -> list[str]:
    """The report.md section: each error with its nearest training photos ([] without the record)."""
    record = report.get("errors_nearest_train")
    if not record or not record["errors"]:
        return []
    lines = [
        "",
        f"## Why {record['model']} erred: the training photos nearest its most confident test errors",
        "",
        nearest_reading(record),
        f"Similarity: the {record['similarity']}.",
    ]
    if record.get("skipped"):
        return [*lines, "", f"No neighbours: {record['skipped']}."]
    lines += ["", "| test photo | true → predicted (probability) | nearest training photos (label, similarity) |"]
    lines.append("|---|---|---|")
    for error in record["errors"]:
        probability = "" if error["confidence"] is None else f" ({error['confidence']:.2f})"
        nearest = "<br>".join(
            f"`{near['path']}` ({near['label']}, {near['similarity']:.3f})" for near in error["nearest"]
        )
        lines.append(f"| `{error['path']}` | {error['label']} → {error['predicted']}{probability} | {nearest} |")
    return [*lines, "", f"Search: {record['search']}."]
