"""The cache file's layout (schema version 1), readable with plain h5py::

    /                              attrs: format, schema_version, created, updated
    /backbones/<backbone key>/     attrs: provenance (backbone key, alpha, size, pooling, resize,
                                          weights, weights_sha256, precision, preprocessing,
                                          library versions, created, updated, source),
                                          class_names (list of str)
        embeddings   float32 (N, D)
        sha256       ascii S64 (N,)   sha256 of the image file's bytes
        path         utf-8 str (N,)   path relative to the source root (posix)
        label        int32 (N,)       index into class_names, -1 when unlabeled
        file_size    int64 (N,)       bytes, with mtime_ns: lets a rerun skip unchanged files
        mtime_ns     int64 (N,)
        failures/    path, sha256, reason, file_size, mtime_ns: inputs that could not be embedded, and
                     limits (utf-8 str, JSON such as {"max_pixels": 1000000}, "" when the failure
                     depends on no limit; absent in files written before it, read as "")
        runs/        file, start, length, rows: where each range of rows is stored (see segments.py)
        index/       path_hash, path_row, sha, sha_row: sorted lookup tables (see lookup.py)

Five row datasets (all but `label`) are HDF5 virtual datasets over segment files in `CACHE.segments/<key>/`
(each with the same six datasets, fletcher32-checksummed); h5py reads them like any dataset as long
as the `.segments` folder sits next to the cache file. `label` is a plain, checksummed dataset of the
cache file itself, so a label written with h5py changes that file only, never a copy's or original's
segments (files written before this map `label` too; their first write makes it the file's own). The folder is always derived from the cache
file's own name, never from the paths the mappings store; root attrs `cache_id` and `written_as`
and the folder's `OWNER` file tie the two together (see storage.py). Files written before segments hold the row
datasets directly; they are read as they are and moved into a segment on their first write.

A file written by `embedder pack` (pack.py) holds them directly too, fletcher32-checksummed, with no
`runs/`; its root attrs add `packed_from`. It grows like a file of the layout before segments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedder.cache.batch import Failure
from embedder.errors import CacheError

SCHEMA_VERSION = 1
FORMAT = "bottleneck-lab embeddings cache"
GROUP = "backbones"
CHUNK_ROWS = 256
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
STR = h5py.string_dtype("utf-8")


def check_cache_file(path: Path) -> None:
    """Raise CacheError unless `path` is absent or an HDF5 cache of this schema version."""
    if path.is_dir():
        raise CacheError(f"cache path '{path}' is a directory; pass a file path such as '{path / 'embeddings.h5'}'.")
    if not path.exists():
        return
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic != HDF5_MAGIC:
        raise CacheError(
            f"'{path}' is not an HDF5 file ({path.stat().st_size} bytes); it is not an embeddings cache. "
            "Pass another --out path, or delete the file if it is yours to overwrite."
        )
    try:
        with h5py.File(path, "r") as handle:
            version, format = handle.attrs.get("schema_version"), handle.attrs.get("format")
    except OSError as exc:
        raise CacheError(
            f"cache '{path}' is damaged: it cannot be opened ({exc}; truncated or not fully written?). Restore it from "
            f"a backup, or extract again into a new file; `embedder verify {path}` lists what else is wrong."
        ) from None
    if format != FORMAT:
        raise CacheError(f"'{path}' is an HDF5 file but not a bottleneck-lab embeddings cache; pass another path.")
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"cache '{path}' was written with schema version {version}; this embedder reads and writes version "
            f"{SCHEMA_VERSION}. Extract into a new file (images are re-embedded), or use the bottleneck-lab "
            "release that wrote it."
        )


def read_failures(group: h5py.Group) -> list[Failure]:
    """The failures table of a backbone group, one record per input that could not be embedded.

    A table written before the `limits` column existed reads with no limits for every failure.
    """
    table = group["failures"]
    count = len(table["path"])
    limits = table["limits"].asstr()[...] if "limits" in table else [""] * count
    return [
        Failure(path, sha, reason, int(size), int(mtime), str(limit))
        for path, sha, reason, size, mtime, limit in zip(
            table["path"].asstr()[...],
            table["sha256"].asstr()[...],
            table["reason"].asstr()[...],
            table["file_size"][...],
            table["mtime_ns"][...],
            limits,
        )
    ]


def write_failures(group: h5py.Group, failures: list[Failure]) -> None:
    """Create the failures table of a backbone group, sorted by path."""
    failures = sorted(failures)
    table = group.create_group("failures")
    table.create_dataset("path", data=np.array([f.path for f in failures], dtype=object), dtype=STR)
    table.create_dataset("sha256", data=np.array([f.sha256 for f in failures], dtype="S64"))
    table.create_dataset("reason", data=np.array([f.reason for f in failures], dtype=object), dtype=STR)
    table.create_dataset("file_size", data=np.array([f.file_size for f in failures], dtype=np.int64))
    table.create_dataset("mtime_ns", data=np.array([f.mtime_ns for f in failures], dtype=np.int64))
    table.create_dataset("limits", data=np.array([f.limits for f in failures], dtype=object), dtype=STR)


def attr_value(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
