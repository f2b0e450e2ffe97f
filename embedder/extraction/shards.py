"""Shards: the Ray engine's finished blocks, each one `Batch` in an HDF5 file, and their merge into the cache.

An actor writes a shard under a temporary name and renames it when complete, so the driver sees a
shard whole or not at all. The driver journals finished shards into the cache with the same
content-hash rules as local extraction, then deletes them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedder.atomic import atomic_path
from embedder.cache import NUMERIC, STR, Batch, CacheIndex, CacheWriter
from embedder.errors import EmbedderError
from embedder.extraction.rows import ExtractSummary

logger = logging.getLogger(__name__)

SHARD_SUFFIX = ".h5"


def write_shard(path: Path, shard: Batch, attrs: dict[str, Any]) -> None:
    """Write a shard under a temporary name, then rename it: readers see it whole or not at all."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        for name, value in attrs.items():
            handle.attrs[name] = value
        handle.create_dataset("embeddings", data=shard.embeddings.astype(np.float32))
        for table, name, values in shard.columns():
            group = handle.require_group(table)
            if name in NUMERIC:
                group.create_dataset(name, data=values)
            else:
                group.create_dataset(name, data=np.array(values, dtype=object), dtype=STR)


def read_shard(path: Path, key: str) -> Batch:
    """A finished shard; an error if it was written for another backbone key."""
    with h5py.File(path, "r") as handle:
        if handle.attrs.get("backbone_key") != key:
            raise EmbedderError(f"shard '{path}' holds backbone {handle.attrs.get('backbone_key')!r}, not {key!r}")

        def column(table: str, name: str) -> list:
            dataset = handle[table][name]
            return (dataset[...] if name in NUMERIC else dataset.asstr()[...]).tolist()

        return Batch.from_columns(handle["embeddings"][...], column)


def absorb_shards(
    cache: CacheWriter,
    key: str,
    folder: Path,
    index: CacheIndex,
    provenance: dict[str, Any],
    summary: ExtractSummary | None = None,
) -> int:
    """Journal every finished shard of `folder` into the cache, merge, and delete them; returns how many.

    An image whose bytes are already in the cache (or in an earlier shard) becomes a row reusing
    that embedding, exactly as local extraction records it.
    """
    shards = sorted(folder.glob(f"*{SHARD_SUFFIX}")) if folder.is_dir() else []
    if not shards:
        return 0
    cache.begin(key, provenance)
    added: set[str] = set()  # hashes embedded by earlier shards of this merge
    for path in shards:
        try:
            shard = read_shard(path, key)
        except OSError as exc:  # cannot happen for a renamed shard, except on a broken disk
            logger.warning("skipping unreadable shard %s (%s); its images will be embedded again", path, exc)
            continue
        known = [row.sha256 in added or row.sha256 in index.hashes for row in shard.rows]
        keep = [i for i, cached in enumerate(known) if not cached]
        batch = Batch(
            embeddings=shard.embeddings[keep],
            rows=[shard.rows[i] for i in keep],
            aliases=[row for row, cached in zip(shard.rows, known) if cached] + shard.aliases,
            failures=shard.failures,
        )
        added.update(row.sha256 for row in shard.rows)
        if summary is not None:
            summary.count(batch, index)
        cache.write_batch(key, batch)
    cache.commit()
    for path in shards:
        path.unlink()
    for stale in folder.glob(f"*{SHARD_SUFFIX}.tmp-*"):  # left by killed actors; their blocks were retried
        stale.unlink(missing_ok=True)
    return len(shards)
