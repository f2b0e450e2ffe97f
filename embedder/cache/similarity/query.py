"""Queries against a cache's index: image files embedded with the cache's own backbone, or paths already cached."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedder.cache.lookup import RowLookup
from embedder.cache.merge import find_rows, read_at
from embedder.errors import CacheError, ImageError
from embedder.inputs import DEFAULT_MAX_PIXELS, decode_image


@dataclass(frozen=True)
class Match:
    """One cached photo found for a query: its path in the cache, row, similarity and label ("" unlabelled)."""

    path: str
    row: int
    similarity: float
    label: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def matches(group: h5py.Group, similarity: np.ndarray, rows: np.ndarray) -> list[list[Match]]:
    """Search results (similarities, row numbers; -1 none) as Matches, with the rows' paths and labels."""
    wanted = sorted({int(r) for r in np.asarray(rows).ravel().tolist() if r >= 0})
    paths = dict(zip(wanted, read_at(group["path"], wanted)))
    labels = dict(zip(wanted, read_at(group["label"], wanted)))
    names = [str(name) for name in group.attrs.get("class_names", [])]
    return [
        [
            Match(str(paths[r]), r, round(float(s), 6), names[labels[r]] if labels[r] >= 0 else "")
            for s, r in zip(sims.tolist(), found.tolist())
            if r >= 0
        ]
        for sims, found in zip(similarity, rows)
    ]


def cached_rows(group: h5py.Group, paths: list[str]) -> dict[str, int]:
    """The row of each of `paths` that the group holds (paths as stored: relative to the source root, posix)."""
    n = int(group["path"].shape[0])
    lookup = (
        RowLookup.read(group)
        if "index" in group
        else RowLookup.build(group["path"].asstr()[...], group["sha256"][...], np.arange(n, dtype=np.int64))
    )
    return find_rows(group, lookup, set(paths))


def embed_files(
    provenance: dict[str, Any],
    key: str,
    files: list[Path],
    *,
    runtime: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Embed image files with the backbone (and preprocessing) that made backbone `key`'s rows: (n, dim) float32.

    Raises ImageError naming the file when one cannot be decoded, CacheError when the backbone
    cannot be rebuilt as it was (another precision, or the weights changed).
    """
    from embedder.backbone import Backbone
    from embedder.runtimes import load_encoder

    if provenance.get("precision", "fp32") != "fp32":
        raise CacheError(
            f"backbone {key} was embedded in {provenance['precision']}; query it by paths already in the cache "
            "(image files can be embedded for fp32 caches only)."
        )
    backbone = Backbone.from_provenance(provenance)
    if backbone.key != key:
        raise CacheError(
            f"the cache's rows are of backbone {key}, but its provenance now rebuilds {backbone.key} (the weights "
            "file changed or moved?); query by paths already in the cache, or re-extract."
        )
    images = []
    for file in files:
        try:
            images.append(
                decode_image(Path(file).read_bytes(), size=backbone.size, resize=backbone.resize, max_pixels=max_pixels)
            )
        except ImageError as exc:
            raise ImageError(
                f"the query image cannot be decoded ({exc.reason})", str(file), limits=exc.limits
            ) from None
        except OSError as exc:
            raise ImageError(f"the query image cannot be read ({exc.strerror or exc})", str(file)) from None
    if not images:
        return np.zeros((0, backbone.dim), np.float32)
    return np.asarray(load_encoder(backbone, runtime)(np.stack(images)), np.float32)


def is_image_query(query: str | os.PathLike, group: h5py.Group) -> bool:
    """Whether a query names an image file to embed (not a path already in the cache)."""
    return not cached_rows(group, [str(query)]) and Path(query).is_file()
