"""`embedder verify`: every check a cache can fail, each problem one line with what to do.

Opens the file, checks that every backbone's datasets are there and row-aligned, reads every segment
in full (fletcher32 checksums are verified on read), and checks the rows themselves: finite
embeddings, unique paths, well-formed hashes, labels in range, lookup tables that match the rows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np

from embedder.cache.layout import GROUP, check_cache_file
from embedder.cache.lookup import RowLookup
from embedder.cache.segments import COLUMNS, read_runs
from embedder.errors import CacheError

READ_ROWS = 8192
HEX64 = re.compile(r"[0-9a-f]{64}")
RESTORE = "restore the cache from a backup, or extract again into a new file"


def verify(path: str | os.PathLike) -> list[str]:
    """Every problem found in cache `path`, one line each (empty when it is sound)."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file; pass the cache file written by `embedder extract --out`."]
    try:
        check_cache_file(path)
    except CacheError as exc:
        return [str(exc)]
    problems: list[str] = []
    with h5py.File(path, "r") as handle:
        for key, group in handle.get(GROUP, {}).items():
            problems += [f"{path}: backbone {key}: {problem}" for problem in _verify_group(path, group)]
    return problems


def pending(path: str | os.PathLike) -> str | None:
    """A note when finished batches of an interrupted run wait in the journal (not damage: the next run merges them)."""
    journal = Path(path).with_name(Path(path).name + ".journal")
    if journal.is_dir() and any(journal.rglob("*.npz")):
        return (
            f"note: finished batches of an interrupted run wait in {journal}; the next `embedder extract` merges them."
        )
    return None


def _verify_group(path: Path, group: h5py.Group) -> list[str]:
    missing = [name for name in (*COLUMNS, "failures") if name not in group]
    if missing:
        return [f"dataset {', '.join(missing)} missing (damaged, or written by another tool); {RESTORE}."]
    lengths = {name: group[name].shape[0] for name in COLUMNS}
    if len(set(lengths.values())) > 1:
        return [f"datasets are not row-aligned ({', '.join(f'{n} {r}' for n, r in lengths.items())}); {RESTORE}."]
    problems = _verify_segments(path, group) if "runs" in group else []
    if problems:
        return problems
    problems = _verify_rows(group)
    if problems:
        return problems
    from embedder.cache.similarity.verify import verify_index

    return verify_index(path, group)


def _verify_segments(path: Path, group: h5py.Group) -> list[str]:
    """Every segment file exists, has the rows its runs read, and reads back with valid checksums."""
    problems: list[str] = []
    runs = read_runs(group)
    sizes: dict[str, int] = {}
    for run in runs:
        sizes[run.file] = max(sizes.get(run.file, 0), run.rows)
    for file, rows in sizes.items():
        segment = path.parent / file
        if not segment.is_file():
            problems.append(
                f"segment {segment} is missing; move the cache together with its .segments folder, or {RESTORE}."
            )
            continue
        try:
            with h5py.File(segment, "r") as handle:
                for name in COLUMNS:
                    if name not in handle or handle[name].shape[0] != rows:
                        problems.append(f"segment {segment}: dataset {name} missing or not {rows} rows; {RESTORE}.")
                        continue
                    for start in range(0, rows, READ_ROWS):
                        try:
                            handle[name][start : start + READ_ROWS]
                        except OSError:
                            problems.append(
                                f"segment {segment}: {name} rows {start}-{min(rows, start + READ_ROWS) - 1} "
                                f"fail their checksum (the bytes on disk changed); {RESTORE}."
                            )
                            break
        except OSError as exc:
            problems.append(f"segment {segment} cannot be opened ({exc}); {RESTORE}.")
    return problems


def _verify_rows(group: h5py.Group) -> list[str]:
    """The rows' values: finite embeddings, unique paths, hashes, labels, lookup tables."""
    problems: list[str] = []
    rows = group["path"].shape[0]
    try:
        bad = 0
        for start in range(0, rows, READ_ROWS):
            bad += int((~np.isfinite(group["embeddings"][start : start + READ_ROWS]).all(axis=1)).sum())
        paths, shas, labels = group["path"].asstr()[...], group["sha256"].asstr()[...], group["label"][...]
    except OSError as exc:
        return [f"rows cannot be read ({exc}); {RESTORE}."]
    if bad:
        problems.append(f"{bad} embedding row(s) hold NaN or infinite values; {RESTORE}.")
    unique, counts = np.unique(paths, return_counts=True)
    if (counts > 1).any():
        problems.append(
            f"{int((counts > 1).sum())} path(s) appear more than once (first: {unique[counts > 1][0]}); {RESTORE}."
        )
    malformed = [sha for sha in shas.tolist() if not HEX64.fullmatch(sha)]
    if malformed:
        problems.append(
            f"{len(malformed)} content hash(es) are not 64 hex digits (first: {malformed[0]!r}); {RESTORE}."
        )
    classes = len(group.attrs.get("class_names", []))
    if len(labels) and (labels.min() < -1 or labels.max() >= classes):
        problems.append(f"labels outside -1..{classes - 1} (the class names); {RESTORE}.")
    if "index" in group and not malformed:
        stored, expected = RowLookup.read(group), RowLookup.build(paths, shas, np.arange(rows, dtype=np.int64))
        if _pairs(stored) != _pairs(expected):
            problems.append(
                f"the lookup tables do not match the rows (a rerun could skip or duplicate images); {RESTORE}."
            )
    return problems


def _pairs(lookup: RowLookup) -> tuple[set, set]:
    """A lookup's (key, row) entries, whatever the order of equal keys."""
    return (
        set(zip(lookup.path_hash.tolist(), lookup.path_row.tolist())),
        set(zip(lookup.sha.tolist(), lookup.sha_row.tolist())),
    )
