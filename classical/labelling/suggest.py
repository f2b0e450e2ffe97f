"""`classical suggest`: the unlabelled photos of a cache worth labelling next, by a run's best model.

The candidates are the rows of the cache without a label (label -1). Their probabilities come from
the run's best model on embeddings (its model file, loaded like `classical predict` does, and
applied only to rows of the backbone it was fitted on); their similarity is the audit's (the cosine
of power-normalised embeddings) and so is the near-duplicate threshold (`DEFAULT_THRESHOLD`,
raised in a domain where every photo is close to the next, see `effective_threshold`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classical.data import DEFAULT_THRESHOLD, normalise, search
from classical.data.near_duplicates import effective_threshold
from classical.data.rows import backbone_rows
from classical.errors import DataError, ModelFileError
from classical.labelling.ranking import rank
from classical.modelfiles import SavedModel, load_model
from classical.report import load_report, write_report
from embedder import atomic_path, open_cache

logger = logging.getLogger(__name__)

FORMATS = ("csv", "json", "label-studio")
FILES = {"csv": "suggest.csv", "json": "suggest.json", "label-studio": "suggest.label-studio.json"}
FROM_NAME, TO_NAME = "choice", "image"  # the Label Studio labelling config's tag names (see the guide)
REASONS = {
    "uncertainty": "uncertain: margin {margin:.3f} between its two likeliest classes",
    "diversity": "diverse: distance {distance:.3f} to the nearest labelled or suggested photo",
    "hybrid": "representative of uncertain photos: nearest the centre of a cluster of {members} with "
    "uncertainty mass {mass:.3f} (its own margin {margin:.3f})",
}


@dataclass
class Suggestions:
    """The ranked suggestions, and what they were ranked from."""

    strategy: str
    budget: int
    model: str
    model_path: str
    backbone_key: str
    threshold: float
    unlabelled: int
    labelled: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped_near_duplicates: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "budget": self.budget,
            "model": self.model,
            "model_path": self.model_path,
            "backbone_key": self.backbone_key,
            "near_duplicate_threshold": self.threshold,
            "unlabelled": self.unlabelled,
            "labelled": self.labelled,
            "skipped_near_duplicates": self.skipped_near_duplicates,
            "warnings": self.warnings,
            "suggestions": self.rows,
        }


def best_model(run: Path, name: str | None = None) -> SavedModel:
    """The run's model `name`, or its best model on embeddings (highest test accuracy, then macro-F1)."""
    report = load_report(run)
    rows = sorted(report["models"], key=lambda row: (-row["test_accuracy"], -row.get("macro_f1", 0.0)))
    if name is not None:
        rows = [row for row in rows if row["name"] == name]
        if not rows:
            known = ", ".join(row["name"] for row in report["models"])
            raise ModelFileError(f"run '{run}' has no model '{name}'; its models: {known}.")
    for row in rows:
        path = row.get("model_path") or str(run / f"{row['name']}.model")
        if not Path(path).is_file() and (run / Path(path).name).is_file():
            path = str(run / Path(path).name)  # the run folder was moved
        if not Path(path).is_file():
            continue
        saved = load_model(path)
        if not saved.takes_pixels:
            return saved
    raise ModelFileError(
        f"run '{run}' has no model file of a model on embeddings; run `classical sweep CACHE --out {run}` first."
    )


def suggest(
    cache: str | os.PathLike,
    run: str | os.PathLike,
    *,
    budget: int = 50,
    strategy: str = "hybrid",
    model: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> Suggestions:
    """Rank the cache's unlabelled rows for labelling by `strategy`, with the run's best model (or `model`)."""
    run = Path(run)
    saved = best_model(run, model)
    with open_cache(cache) as opened:
        if saved.backbone_key not in opened.keys:
            raise DataError(
                f"cache '{cache}' has no embeddings of backbone {saved.backbone_key}, the one model "
                f"'{saved.path}' was fitted on; it has: {', '.join(opened.keys) or 'none'}."
            )
        rows = backbone_rows(opened, saved.backbone_key)
        X, labels, paths = rows.load(), rows.labels, rows.paths
    finite = np.isfinite(X).all(axis=1)
    unlabelled = np.flatnonzero((labels < 0) & finite)
    labelled = np.flatnonzero(labels >= 0)
    result = Suggestions(
        strategy=strategy,
        budget=budget,
        model=str(saved.metadata.get("name", saved.path.stem)),
        model_path=str(saved.path),
        backbone_key=saved.backbone_key,
        threshold=float(threshold),
        unlabelled=len(unlabelled),
        labelled=len(labelled),
    )
    if len(unlabelled) < budget:
        result.warnings.append(
            f"only {len(unlabelled)} unlabelled rows in '{cache}' for a budget of {budget}: all of them are suggested"
            if strategy != "hybrid"
            else f"only {len(unlabelled)} unlabelled rows in '{cache}' for a budget of {budget}"
        )
    if not len(unlabelled):
        return result
    Z = normalise(X[finite])
    position = np.cumsum(finite) - 1  # row -> its row in Z
    nearest = search(Z, threshold=None, k=1, normalised=True).knn[:, 0] if len(Z) > 1 else np.zeros(0)
    result.threshold = effective_threshold(threshold, nearest)
    probs = saved.predict_proba(X[unlabelled], backbone_key=saved.backbone_key)
    ranked = rank(
        strategy,
        probs,
        Z[position[unlabelled]],
        Z[position[labelled[finite[labelled]]]],
        min(budget, len(unlabelled)),
        result.threshold,
    )
    result.skipped_near_duplicates = ranked.skipped_near_duplicates
    names = saved.class_names
    masses = ranked.mass if len(ranked.mass) else np.full(len(ranked.index), np.nan)
    members = ranked.members if len(ranked.members) else np.zeros(len(ranked.index), np.int64)
    for n, (i, score, u, d) in enumerate(zip(ranked.index, ranked.score, ranked.uncertainty, ranked.distance)):
        p = probs[i]
        best = int(np.argmax(p))
        margin = float(1 - u) if np.isfinite(u) else None
        distance = float(d) if np.isfinite(d) else None
        result.rows.append(
            {
                "rank": n + 1,
                "path": str(paths[unlabelled[i]]),
                "score": float(score),
                "label": names[best],
                "prob": float(p[best]),
                "margin": margin,
                "distance": distance,
                "reason": reason(strategy, margin, distance, float(masses[n]), int(members[n])),
            }
        )
    if strategy == "hybrid" and len(result.rows) < budget:
        result.warnings.append(
            f"{len(result.rows)} suggestions for a budget of {budget}: the other unlabelled rows are near-duplicates "
            f"(similarity >= {result.threshold:.3f}) of a labelled photo or of a suggestion"
        )
    return result


def reason(
    strategy: str, margin: float | None, distance: float | None, mass: float = float("nan"), members: int = 0
) -> str:
    """Why a row was ranked: the term of its score (hybrid: its cluster's uncertainty mass, else its margin)."""
    if strategy == "diversity":
        return REASONS["diversity"].format(distance=distance)
    if strategy == "hybrid" and np.isfinite(mass):
        return REASONS["hybrid"].format(mass=mass, members=members, margin=margin)
    return REASONS["uncertainty"].format(margin=margin)


def label_studio_tasks(suggestions: Suggestions) -> list[dict[str, Any]]:
    """Label Studio import tasks: the image, and the model's label as a pre-annotation (a prediction)."""
    return [
        {
            "data": {"image": row["path"]},
            "predictions": [
                {
                    "model_version": f"{suggestions.model} ({suggestions.strategy})",
                    "score": row["prob"],
                    "result": [
                        {
                            "from_name": FROM_NAME,
                            "to_name": TO_NAME,
                            "type": "choices",
                            "value": {"choices": [row["label"]]},
                        }
                    ],
                }
            ],
        }
        for row in suggestions.rows
    ]


CSV_COLUMNS = ("path", "rank", "score", "label", "prob", "margin", "distance", "reason")


def write_suggestions(suggestions: Suggestions, run: str | os.PathLike, format: str = "csv") -> Path:
    """Write RUN/suggest.csv, RUN/suggest.json or RUN/suggest.label-studio.json (atomically); returns its path."""
    if format not in FORMATS:
        raise ValueError(f"unknown format '{format}'; choose one of {', '.join(FORMATS)}.")
    path = Path(run) / FILES[format]
    with atomic_path(path) as tmp:
        if format == "csv":
            with open(tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(CSV_COLUMNS)
                for row in suggestions.rows:
                    writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
        elif format == "json":
            Path(tmp).write_text(json.dumps(suggestions.as_dict(), indent=2) + "\n")
        else:
            Path(tmp).write_text(json.dumps(label_studio_tasks(suggestions), indent=2) + "\n")
    return path


def write_outputs(suggestions: Suggestions, run: str | os.PathLike, format: str = "csv") -> list[Path]:
    """RUN/suggest.json (always: the record report.html reads) and the file of `format`, then report.html again."""
    run = Path(run)
    written = [write_suggestions(suggestions, run, "json")]
    if format != "json":
        written.append(write_suggestions(suggestions, run, format))
    write_report(load_report(run), run)  # the page gains its "Photos to label next" section
    return written
