"""Caches written before segments (plain datasets) still read, and move into a segment on their first write."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from conftest import blobs

from embedder import open_cache
from embedder.cache import Batch, CacheWriter, Failure, Row, verify
from embedder.cache.layout import FORMAT, STR, write_failures

KEY = "mobilenet_v2-1.0-96-random-synthetic-avg-crop-fp32"


def write_legacy(path: Path, X: np.ndarray, labels: list[str]) -> list[str]:
    """A cache as the writer of the previous release wrote it: the row datasets stored in the file itself."""
    names = sorted(set(labels))
    paths = [f"{label}/{i:04d}.jpg" for i, label in enumerate(labels)]
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        handle.attrs.update(
            {
                "format": FORMAT,
                "schema_version": 1,
                "created": "2026-01-01T00:00:00Z",
                "updated": "2026-01-01T00:00:00Z",
            }
        )
        group = handle.create_group("backbones").create_group(KEY)
        group.attrs.update(
            {
                "backbone_key": KEY,
                "dim": X.shape[1],
                "size": 96,
                "alpha": 1.0,
                "weights": "none",
                "pooling": "avg",
                "resize": "crop",
                "precision": "fp32",
                "created": "2026-01-01T00:00:00Z",
                "updated": "2026-01-01T00:00:00Z",
            }
        )
        group.attrs["class_names"] = np.array(names, dtype=STR)
        group.create_dataset("embeddings", data=X, chunks=(16, X.shape[1]), maxshape=(None, X.shape[1]))
        group.create_dataset("sha256", data=np.array([rng.bytes(32).hex() for _ in paths], dtype="S64"))
        group.create_dataset("path", data=np.array(paths, dtype=object), dtype=STR)
        group.create_dataset("label", data=np.array([names.index(label) for label in labels], dtype=np.int32))
        group.create_dataset("file_size", data=np.ones(len(paths), np.int64))
        group.create_dataset("mtime_ns", data=np.ones(len(paths), np.int64))
        write_failures(group, [Failure("bad.jpg", "", "not an image", 3, 4)])
    return paths


def test_a_cache_of_the_previous_layout_reads_and_grows(tmp_path: Path) -> None:
    X, labels = blobs(per_class=10, dim=8)
    cache = tmp_path / "old.h5"
    paths = write_legacy(cache, X, labels)
    with open_cache(cache) as opened:
        rows = opened.backbone()
        assert list(rows.paths) == paths and np.array_equal(rows.load(), X) and rows.failures[0].path == "bad.jpg"
    with open_cache(cache) as opened:
        provenance = opened.backbone().provenance
    with CacheWriter(cache) as writer:
        index = writer.index(KEY, [paths[3], "new/0.jpg"])
        assert set(index.rows) == {paths[3]} and index.rows[paths[3]].label == labels[3]
        writer.begin(KEY, {**provenance, "dim": 8})
        writer.write_batch(
            KEY, Batch(embeddings=np.full((1, 8), 7, np.float32), rows=[Row("new/0.jpg", "ab" * 32, "new", 1, 1)])
        )
    with open_cache(cache) as opened:
        rows = opened.backbone()
        assert list(rows.paths) == [*paths, "new/0.jpg"] and np.array_equal(rows.load()[:-1], X)
        assert rows.class_names[-1] == "new" and rows.failures[0].path == "bad.jpg"
    with h5py.File(cache) as handle:
        assert handle["backbones"][KEY]["embeddings"].is_virtual  # moved into a segment, once
    assert verify(cache) == []
