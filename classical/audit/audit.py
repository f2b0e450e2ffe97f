"""The audit of a cache's embeddings: near-duplicates (and leaky splits), label issues, outliers, a map.

Every row of the backbone takes part in near-duplicates and outliers, unlabelled ones (label -1)
included; label issues use the labelled rows. With a stored split in the run directory each pair
says which parts its images are in, and pairs across train and test are counted as straddling.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from classical.audit import embedding_map, label_issues, outliers
from classical.data.near_duplicates import DEFAULT_THRESHOLD, SIMILARITY, exact_pairs, find_near_duplicates, normalise
from classical.data.rows import backbone_rows
from classical.errors import DataError
from embedder import EXACT_ROWS, atomic_path, open_cache, utc_now

logger = logging.getLogger(__name__)
VERSION = 1


def load_rows(
    cache: str | os.PathLike, backbone: str | None = None, *, large_bytes: int = label_issues.MAX_EXACT_BYTES
) -> dict[str, Any]:
    """All rows of one backbone (labelled or not) with finite embeddings, and the rows left out.

    "X" holds the raw rows and "Z" the normalised ones (`embedder.normalise`). A backbone whose rows
    take more than `large_bytes` is read normalised in blocks (`CachedBackbone.load_normalised`), so
    the rows are held once: then "X" is None.
    """
    with open_cache(cache) as opened:
        rows = backbone_rows(opened, backbone)
        y, names = np.asarray(rows.labels), list(rows.class_names)
        paths, sha256, key = np.asarray(rows.paths).astype(str), np.asarray(rows.sha256).astype(str), rows.key
        if len(rows) * rows.dim * 4 > large_bytes:
            X, (Z, kept) = None, rows.load_normalised()
            finite = np.zeros(len(rows), bool)
            finite[kept] = True
        else:
            X = rows.load()
            finite = np.isfinite(X).all(axis=1)
            X = np.ascontiguousarray(X[finite], np.float32)
            Z = normalise(X)
    if not len(y):
        raise DataError(f"cache '{cache}' has no rows of backbone {key}")
    return {
        "X": X,
        "Z": Z,
        "y": y[finite],
        "class_names": names,
        "paths": paths[finite],
        "sha256": sha256[finite],
        "backbone": key,
        "left_out": [str(p) for p in paths[~finite]],
    }


def audit(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    *,
    backbone: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    cv: int = 5,
    seed: int = 0,
    k: int = outliers.K,
    map_method: str = "pca",
    plot: bool = True,
    n_jobs: int | None = None,
    large_bytes: int = label_issues.MAX_EXACT_BYTES,
    exact_rows: int = EXACT_ROWS,
) -> dict[str, Any]:
    """Audit the cache's embeddings; write `out/audit.json` (and `out/plots/embedding_map.png`); return the audit.

    The run's `split.json`, when there is one, decides each pair's `splits` and the straddling count.
    A backbone whose rows take more than `large_bytes` (256 MiB) is read normalised, once, in blocks,
    and its label issues use principal components (`label_issues`); from `exact_rows` rows on the
    near-duplicates come from the approximate k-NN graph (`embedder.neighbours`).
    """
    from classical.data.splits import Split  # classical.data.splits uses this package's search

    started = time.perf_counter()
    run = Path(out)
    data = load_rows(cache, backbone, large_bytes=large_bytes)
    X, Z, y, names, paths, sha = data["X"], data["Z"], data["y"], data["class_names"], data["paths"], data["sha256"]
    split = Split.load(run / "split.json") if (run / "split.json").is_file() else None
    if split is not None and split.backbone_key and split.backbone_key != data["backbone"]:
        raise DataError(f"run '{run}' was split on embeddings of {split.backbone_key}; these are {data['backbone']}.")
    part = [split.assignment.get(p) if split else None for p in paths]
    label = [names[c] if c >= 0 else None for c in y]

    t0 = time.perf_counter()
    found, effective = find_near_duplicates(Z, threshold=threshold, k=k, normalised=True, exact_rows=exact_rows)
    exact = exact_pairs(sha)
    pairs = {(int(a), int(b)): float(c) for a, b, c in zip(found.i, found.j, found.cosine)}
    for a, b in exact - set(pairs):
        pairs[(a, b)] = float(Z[a] @ Z[b])
    near: list[dict[str, Any]] = []
    for (a, b), cos in sorted(pairs.items(), key=lambda item: (-item[1], item[0])):
        splits = [part[a], part[b]]
        near.append(
            {
                "a": str(paths[a]),
                "b": str(paths[b]),
                "cosine": round(min(cos, 1.0), 6),
                "same_label": None if y[a] < 0 or y[b] < 0 else bool(y[a] == y[b]),
                "exact": (a, b) in exact,
                "splits": splits,
                "straddles": None if None in splits else splits[0] != splits[1],
            }
        )
    near_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    score = outliers.scores(found.knn)
    flagged, cutoff = outliers.flag(score)
    outlier_list = [{"path": str(paths[r]), "score": round(float(score[r]), 6), "label": label[r]} for r in flagged]
    outlier_seconds = time.perf_counter() - t0  # scoring only: the kNN came with the near-duplicate search

    t0 = time.perf_counter()
    found_issues = label_issues.find(
        Z if X is None else X, y, names, cv=cv, seed=seed, n_jobs=n_jobs, normalised=X is None
    )
    issue_list = [
        {"path": str(paths[i["row"]]), **{key: v for key, v in i.items() if key != "row"}}
        for i in found_issues["issues"]
    ]
    issue_seconds = time.perf_counter() - t0

    straddling = [p for p in near if p["straddles"]]
    train_test = [p for p in straddling if set(p["splits"]) == {"train", "test"}]
    result: dict[str, Any] = {
        "version": VERSION,
        "cache": str(cache),
        "backbone": data["backbone"],
        "created": utc_now(),
        "rows": len(Z),
        "labelled": int((y >= 0).sum()),
        "unlabelled": int((y < 0).sum()),
        "left_out": data["left_out"],
        "class_counts": {names[c]: n for c, n in sorted(Counter(y[y >= 0].tolist()).items())},
        "summary": {
            "near_duplicates": len(near),
            "exact_duplicates": sum(p["exact"] for p in near),
            "near_duplicate_images": len({p["a"] for p in near} | {p["b"] for p in near}),
            "cross_label_pairs": sum(p["same_label"] is False for p in near),
            "label_issues": len(issue_list),
            "outliers": len(outlier_list),
            "near_duplicate_saturated_rows": found.saturated,
            "straddling": len(straddling) if split else None,
            "straddling_train_test": len(train_test) if split else None,
        },
        "near_duplicates_method": {
            "similarity": SIMILARITY,
            "threshold": round(effective, 6),
            "base_threshold": threshold,
            "threshold_rule": (
                "the base threshold, raised to 1 - 0.6 x (1 - median nearest-neighbour similarity) where that "
                "is higher: a near-duplicate is closer than 0.6 x the typical nearest-photo distance"
            ),
            "search": f"k-NN graph of the similarity index: {found.search}; plus identical bytes (sha256)",
            "graph": found.method,
            "graph_k": found.graph_k,
            "saturated_rows": found.saturated,
            "saturated_note": (
                None
                if not found.saturated
                else f"{found.saturated} rows have all {found.graph_k} graph neighbours at or above the threshold "
                "(more near-duplicates than the graph holds): their pairs come from an exact product of those rows with every row"
            ),
            "seconds": round(near_seconds, 3),
        },
        "label_issues_method": {
            "method": found_issues["method"],
            "features": found_issues["features"],
            "fit_rows": found_issues["fit_rows"],
            "cv": cv,
            "seed": seed,
            "skipped": found_issues["skipped"],
            "n_scored": found_issues["n_scored"],
            "oof_accuracy": found_issues.get("oof_accuracy"),
            "seconds": round(issue_seconds, 3),
        },
        "outliers_method": {
            "method": outliers.METHOD.format(
                k=found.knn.shape[1], fence=outliers.FENCE, fraction=100 * outliers.MAX_FRACTION
            ),
            "k": int(found.knn.shape[1]),
            "cutoff": None if cutoff is None else round(cutoff, 6),
            "median_score": round(float(np.median(score)), 6) if len(score) else None,
            "seconds": round(outlier_seconds, 3),
        },
        "split": None
        if split is None
        else {
            "id": split.id,
            "near_duplicates_grouped": split.near_duplicates_grouped,
            "near_duplicate_clusters": split.near_duplicate_clusters,
            "near_duplicate_threshold": split.near_duplicate_threshold,
        },
        "straddling": None
        if split is None
        else {
            "count": len(straddling),
            "train_test": len(train_test),
            "pairs": [[p["a"], p["b"]] for p in straddling],
            "note": (
                "the split grouped near-duplicates; pairs can straddle only if the cache or threshold changed"
                if split.near_duplicates_grouped
                else "this split was made without near-duplicate grouping: these pairs leak across its parts"
            ),
        },
        "near_duplicates": near,
        "label_issues": issue_list,
        "label_issues_skipped": found_issues["skipped"],
        "outliers": outlier_list,
    }
    run.mkdir(parents=True, exist_ok=True)
    if plot:
        t0 = time.perf_counter()
        index = {p: r for r, p in enumerate(paths)}
        result["map"] = embedding_map.draw(
            Z,
            y,
            names,
            run / "plots" / "embedding_map.png",
            near={index[p["a"]] for p in near} | {index[p["b"]] for p in near},
            issues={index[i["path"]] for i in issue_list},
            outliers={index[o["path"]] for o in outlier_list},
            method=map_method,
            seed=seed,
        )
        result["map"] |= {"path": "plots/embedding_map.png", "seconds": round(time.perf_counter() - t0, 3)}
    else:
        result["map"] = None
    result["seconds"] = round(time.perf_counter() - started, 3)
    with atomic_path(run / "audit.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    logger.info("audit: %s", summary_line(result))
    return result


def summary_line(result: dict[str, Any]) -> str:
    """One line of counts, for the command line."""
    s = result["summary"]
    leak = (
        f", {s['straddling']} straddle two parts ({s['straddling_train_test']} train/test)"
        if s["straddling"] is not None
        else ""
    )
    issues = (
        f"{s['label_issues']} label-issue candidates"
        if result["label_issues_skipped"] is None
        else f"label issues skipped: {result['label_issues_skipped']}"
    )
    saturated = s.get("near_duplicate_saturated_rows") or 0  # absent from audits before the index
    wide = (
        f", {saturated} rows with more than {result['near_duplicates_method']['graph_k']} near-duplicates "
        "(their pairs by an exact product)"
        if saturated
        else ""
    )
    return (
        f"{s['near_duplicates']} near-duplicate pairs ({s['exact_duplicates']} exact{leak}{wide}), {issues}, "
        f"{s['outliers']} outliers, {result['seconds']:.1f} s"
    )
