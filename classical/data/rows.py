"""Labelled embeddings from a cache, checked before any model sees them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from classical.errors import DataError
from embedder import Cache, CachedBackbone, open_cache

logger = logging.getLogger(__name__)


@dataclass
class LabeledEmbeddings:
    """Rows of one backbone with a label: X (N, D) float32, y (N,) class indices into class_names."""

    X: np.ndarray
    y: np.ndarray
    class_names: list[str]
    paths: np.ndarray
    sha256: np.ndarray
    backbone_key: str
    provenance: dict[str, Any]
    cache: str


def backbone_rows(opened: Cache, backbone: str | None) -> CachedBackbone:
    """The rows of `backbone` in an open cache, or of its only backbone; a DataError naming the choices otherwise."""
    if backbone is None and len(opened.keys) > 1:
        raise DataError(
            f"cache '{opened.path}' holds {len(opened.keys)} backbones; choose one with --backbone: {', '.join(opened.keys)}"
        )
    if backbone is not None and backbone not in opened.keys:
        raise DataError(
            f"cache '{opened.path}' has no embeddings of backbone '{backbone}'; it has: {', '.join(opened.keys) or 'none'}"
        )
    return opened.backbone(backbone)


def load_labeled(cache: str | os.PathLike, backbone: str | None = None) -> LabeledEmbeddings:
    """Load the labelled rows of `backbone` (or of the cache's only backbone) and validate them."""
    with open_cache(cache) as opened:
        rows = backbone_rows(opened, backbone)
        X, labels, names = rows.load(), rows.labels, rows.class_names
        paths, sha256, key, provenance = rows.paths, rows.sha256, rows.key, rows.provenance
    labeled = labels >= 0
    if not labeled.any():
        raise DataError(
            f"cache '{cache}' has no labels ({len(labels)} unlabeled rows); extract from a folder with one "
            "sub-folder per class, or from a list with a label column."
        )
    if not labeled.all():
        logger.warning("ignoring %d unlabeled rows of %s", int((~labeled).sum()), cache)
    X, labels, paths, sha256 = X[labeled], labels[labeled], paths[labeled], sha256[labeled]
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        shown = ", ".join(paths[bad][:5])
        raise DataError(
            f"cache '{cache}' has {int(bad.sum())} rows with NaN or infinite embeddings ({shown}); "
            "re-extract them into a new cache file."
        )
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(
            f"cache '{cache}' has labelled images of {len(present)} class ({names[present[0]]}); "
            "a classifier needs at least 2 classes."
        )
    remap = np.full(len(names), -1)
    remap[present] = np.arange(len(present))
    return LabeledEmbeddings(
        X=np.ascontiguousarray(X, dtype=np.float32),
        y=remap[labels],
        class_names=[names[i] for i in present],
        paths=paths,
        sha256=sha256,
        backbone_key=key,
        provenance=provenance,
        cache=str(cache),
    )
