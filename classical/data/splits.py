"""Stored, stratified, seeded train/validation/test splits, with exact and near duplicates kept together.

A split assigns each image path to "train", "val" or "test". It is computed once per run from
the cache's labelled rows and saved as `split.json`, so that every model of the run (classical
or neural, now or later) is scored on exactly the same test images. Images with identical
bytes (same sha256) form one group that goes to one part, so a duplicate never straddles two;
given the embeddings, near-duplicates (the audit's similarity at its threshold) are joined too:
the connected components of near-duplicate pairs (union-find) each go to one part.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from classical.data.near_duplicates import DEFAULT_THRESHOLD, components, find_near_duplicates
from classical.data.rows import LabeledEmbeddings
from classical.errors import DataError

logger = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
MAX_CLUSTER_FRACTION = 0.02  # near-duplicate clusters above 2 % of the images (and 10) are not grouped


@dataclass(frozen=True)
class Split:
    """Which part each path belongs to, with how the assignment was made."""

    id: str
    seed: int
    fractions: tuple[float, ...]
    backbone_key: str
    assignment: dict[str, str]
    # near-duplicate grouping (split.json files written before it have none: False, 0, None)
    near_duplicates_grouped: bool = False
    near_duplicate_clusters: int = 0
    near_duplicate_threshold: float | None = None

    def indices(self, paths: Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
        """Row indices of `paths` in each part; every path of the split must be among them."""
        parts = np.array([self.assignment.get(path, "") for path in paths])
        missing = len(self.assignment) - int((parts != "").sum())
        if missing:
            raise DataError(
                f"split {self.id} names {missing} images that are not here (anymore); "
                "score on the same images by restoring them, or start a new run directory."
            )
        extra = int((parts == "").sum())
        if extra:
            logger.warning("%d images are not in split %s and are ignored", extra, self.id)
        return {part: np.flatnonzero(parts == part) for part in PARTS}

    def counts(self) -> dict[str, int]:
        counted = Counter(self.assignment.values())
        return {part: counted.get(part, 0) for part in PARTS}

    def summary(self) -> dict[str, Any]:
        """The split as the report records it: id, sizes, seed and fractions."""
        counts = self.counts()
        return {
            "id": self.id,
            "n_train": counts["train"],
            "n_val": counts["val"],
            "n_test": counts["test"],
            "seed": self.seed,
            "fractions": list(self.fractions),
        }

    def save(self, path: Path) -> None:
        record = {
            "id": self.id,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "backbone_key": self.backbone_key,
            "counts": self.counts(),
            "assignment": self.assignment,
            "near_duplicates_grouped": self.near_duplicates_grouped,
            "near_duplicate_clusters": self.near_duplicate_clusters,
            "near_duplicate_threshold": self.near_duplicate_threshold,
        }
        path.write_text(json.dumps(record, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> Split:
        record = json.loads(path.read_text())
        return cls(
            id=record["id"],
            seed=record["seed"],
            fractions=tuple(record["fractions"]),
            backbone_key=record["backbone_key"],
            assignment=record["assignment"],
            near_duplicates_grouped=bool(record.get("near_duplicates_grouped", False)),
            near_duplicate_clusters=int(record.get("near_duplicate_clusters", 0)),
            near_duplicate_threshold=record.get("near_duplicate_threshold"),
        )


def make_split(
    paths: Sequence[str] | np.ndarray,
    sha256: Sequence[str] | np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    *,
    backbone_key: str = "",
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    seed: int = 0,
    X: np.ndarray | None = None,
    near_duplicate_threshold: float = DEFAULT_THRESHOLD,
) -> Split:
    """Stratified split of images (paths with content hashes and class indices), grouping identical bytes.

    With their embeddings `X`, near-duplicates (pairs at or above `near_duplicate_threshold`, raised in
    tight domains as the audit raises it, `effective_threshold`) are grouped as well: each connected component goes to one part. Where no
    pair is found, the split is the same as without `X`.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"fractions must be three positive numbers summing to 1 (train, val, test). Received: {fractions}"
        )
    keys = [str(sha) for sha in sha256]
    clusters = 0
    if X is not None:
        found, near_duplicate_threshold = find_near_duplicates(X, threshold=near_duplicate_threshold)
        root = components(len(keys), found.i, found.j).tolist()
        members: dict[int, set[str]] = {}
        for row, r in enumerate(root):
            members.setdefault(r, set()).add(keys[row])
        # a component this large is a chain through distinct images, not copies of one: left ungrouped
        largest = max(10, round(MAX_CLUSTER_FRACTION * len(keys)))
        oversized = {r for r, shas in members.items() if len(shas) > largest}
        for r in oversized:
            logger.warning(
                "split: a near-duplicate cluster of %d images at >= %.2f is too large to be copies "
                "of one image; its images are not grouped",
                len(members[r]),
                near_duplicate_threshold,
            )
        # a cluster is named by its smallest content hash, so groups without near-duplicates keep their sha
        keys = [keys[row] if r in oversized else min(members[r]) for row, r in enumerate(root)]
        clusters = sum(len(shas) > 1 for r, shas in members.items() if r not in oversized)
        if clusters:
            logger.info(
                "split: %d near-duplicate clusters (%d pairs at >= %.2f) kept in one part each",
                clusters,
                len(found.i),
                near_duplicate_threshold,
            )
    groups: dict[str, list[int]] = {}
    for row, sha in enumerate(keys):
        groups.setdefault(sha, []).append(row)
    shas = sorted(groups)
    # a group of duplicates is stratified by its most common label
    group_labels = np.array([Counter(y[groups[sha]].tolist()).most_common(1)[0][0] for sha in shas])
    n_test, n_val = round(fractions[2] * len(shas)), round(fractions[1] * len(shas))
    try:
        rest, test = train_test_split(shas, test_size=n_test, stratify=group_labels, random_state=seed)
        rest_labels = group_labels[np.searchsorted(shas, rest)]
        train, val = train_test_split(rest, test_size=n_val, stratify=rest_labels, random_state=seed)
    except ValueError as exc:
        counts = Counter(class_names[label] for label in group_labels)
        raise DataError(
            f"cannot split {len(shas)} distinct images into {fractions} stratified by class ({exc}); "
            f"images per class: {dict(sorted(counts.items()))}. Add images to the small classes."
        ) from exc
    assignment = {
        paths[row]: part for part, members in zip(PARTS, (train, val, test)) for sha in members for row in groups[sha]
    }
    digest = hashlib.sha256(json.dumps(sorted(assignment.items())).encode()).hexdigest()[:12]
    return Split(
        id=digest,
        seed=seed,
        fractions=tuple(fractions),
        backbone_key=backbone_key,
        assignment=assignment,
        near_duplicates_grouped=X is not None,
        near_duplicate_clusters=clusters,
        near_duplicate_threshold=float(near_duplicate_threshold) if X is not None else None,
    )


def load_or_make_split(run: Path, data: LabeledEmbeddings, **options: Any) -> Split:
    """The run's stored split if there is one, else a new one of `data`, saved.

    A split made on embeddings records their backbone; reusing it for another backbone is refused.
    """
    path = run / "split.json"
    if path.is_file():
        split = Split.load(path)
        if split.backbone_key and split.backbone_key != data.backbone_key:
            raise DataError(
                f"run '{run}' was split on embeddings of {split.backbone_key}; these are {data.backbone_key}. "
                "Use another --out directory for another backbone."
            )
        return split
    split = make_split(
        data.paths, data.sha256, data.y, data.class_names, backbone_key=data.backbone_key, X=data.X, **options
    )
    run.mkdir(parents=True, exist_ok=True)
    split.save(path)
    return split
