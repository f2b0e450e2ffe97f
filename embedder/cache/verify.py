"""`embedder verify`: every check a cache can fail, each problem one line with what to do.

Opens the file, checks that every backbone's datasets are there and row-aligned (see damage.py),
reads every segment and the small file's tables block by block (fletcher32 checksums are verified
on read; an unreadable block is reported and the reading goes on), and checks the rows themselves:
finite embeddings, unique paths, well-formed hashes, labels in range, lookup tables that match the
rows. Every problem is listed, not only the first.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from embedder.cache.damage import RESTORE, RowChecker, bad_segments, ranges, structure_problems
from embedder.cache.layout import GROUP, check_cache_file
from embedder.cache.lookup import RowLookup
from embedder.cache.segments import COLUMNS, expand, file_digest, read_runs, segment_file
from embedder.cache.storage import check_storage
from embedder.errors import CacheError

READ_ROWS = 8192
SMALL_TABLES: tuple[str, ...] = (
    "index/path_hash",
    "index/path_row",
    "index/sha",
    "index/sha_row",
    "runs/file",
    "runs/start",
)
SMALL_TABLES += ("runs/length", "runs/rows", "runs/digest", "failures/path", "failures/sha256", "failures/reason")
SMALL_TABLES += ("failures/file_size", "failures/mtime_ns", "failures/limits")


def verify(path: str | os.PathLike) -> list[str]:
    """Every problem found in cache `path`, one line each (empty when it is sound)."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file; pass the cache file written by `embedder extract --out`."]
    try:
        check_cache_file(path)
        check_storage(path)
    except CacheError as exc:
        return [str(exc)]
    problems: list[str] = []
    try:
        with h5py.File(path, "r") as handle:
            groups = handle.get(GROUP, {})
            for key in list(groups):
                try:
                    found = _verify_group(path, groups[key])
                except (OSError, KeyError, ValueError) as exc:  # what no check foresaw: still one line
                    found = [f"cannot be read ({type(exc).__name__}: {exc}); {RESTORE}."]
                problems += [f"{path}: backbone {key}: {problem}" for problem in found]
    except (OSError, KeyError) as exc:
        problems.append(f"{path}: the file's list of backbones cannot be read ({exc}); {RESTORE}.")
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
    problems = structure_problems(path, group)
    problems += _verify_tables(group)
    segmented = "runs" in group
    problems += _verify_segments(path, group) if segmented else []
    segment_problems = [problem for problem in problems if problem.startswith("segment ")]
    if any(name not in group for name in COLUMNS) or len({group[name].shape[0] for name in COLUMNS}) > 1:
        return problems  # the rows cannot be read as rows
    row_problems, unreadable = _verify_rows(path, group)
    if unreadable and not (segmented and segment_problems):  # a segment's damage is named above, with its file
        problems += unreadable
    problems += row_problems
    if problems:
        return problems
    from embedder.cache.similarity.verify import verify_index

    return verify_index(path, group)


def _verify_tables(group: h5py.Group) -> list[str]:
    """The small file's own tables (lookup tables, runs, failures) read back: checksums, readable strings."""
    problems = []
    for name in SMALL_TABLES:
        if name not in group:
            continue
        try:
            dataset = group[name]
            for start in range(0, dataset.shape[0], READ_ROWS * 8):
                block = dataset[start : start + READ_ROWS * 8]
                if dataset.dtype == object:  # variable-length utf-8: the bytes must decode
                    [value.decode() if isinstance(value, bytes) else value for value in block]
        except (OSError, KeyError, UnicodeDecodeError) as exc:
            problems.append(f"table {name} of the cache file cannot be read ({exc}); {RESTORE}.")
    return problems


def _verify_segments(path: Path, group: h5py.Group) -> list[str]:
    """Every readable segment file read in full, block by block: each dataset's unreadable rows, in one line."""
    problems: list[str] = []
    try:
        runs = read_runs(group)
    except (OSError, KeyError, ValueError):
        return []  # reported by the structural checks
    digests = {run.file: run.digest for run in runs}
    for file in digests:
        segment = segment_file(path, file)
        try:
            handle = h5py.File(segment, "r")
        except OSError:
            continue  # missing or not openable: reported by the structural checks
        with handle:
            for name in COLUMNS:
                if name not in handle:
                    continue
                dataset, failed = handle[name], []
                for start in range(0, dataset.shape[0], READ_ROWS):
                    stop = min(dataset.shape[0], start + READ_ROWS)
                    try:
                        dataset[start:stop]
                    except OSError:
                        failed.append((start, stop - 1))
                if failed:
                    problems.append(
                        f"segment {segment}: {name} {ranges(failed)} fail their checksum (the bytes on disk "
                        f"changed); {RESTORE}."
                    )
        readable = not any(problem.startswith(f"segment {segment}:") for problem in problems)
        if digests[file] and readable and file_digest(segment) != digests[file]:
            problems.append(
                f"segment {segment} changed after it was written (its sha256 is not the one the cache file recorded: "
                f"written through another file mapping it, such as a byte copy of the small file opened with h5py); "
                f"{RESTORE}."
            )
    return problems


def _verify_rows(path: Path, group: h5py.Group) -> tuple[list[str], list[str]]:
    """The rows' values, block by block; and the blocks of the group's datasets that could not be read."""
    rows = group["path"].shape[0]
    keep = np.ones(rows, bool)
    if "runs" in group:
        try:
            bad = bad_segments(path, group)
            files, file_of, _ = expand(read_runs(group))
            keep = ~np.isin(file_of, [i for i, run in enumerate(files) if run.file in bad])
        except (OSError, KeyError, ValueError):
            pass
    checker = RowChecker(len(group.attrs.get("class_names", [])))
    failed: dict[str, list[tuple[int, int]]] = {}
    for start in range(0, rows, READ_ROWS):
        stop = min(rows, start + READ_ROWS)
        block = {}
        for name in COLUMNS:  # every column: a packed file's own checksums are verified here
            try:
                dataset = group[name].asstr() if name == "path" else group[name]
                block[name] = dataset[start:stop]
            except (OSError, UnicodeDecodeError):
                failed.setdefault(name, []).append((start, stop - 1))
        if len(block) == len(COLUMNS):
            checker.add(start, block["embeddings"], block["path"], block["sha256"], block["label"], keep[start:stop])
        else:
            checker.skipped += stop - start
    unreadable = [
        f"{name} {ranges(spans)} cannot be read (checksum or storage failure); {RESTORE}."
        for name, spans in failed.items()
    ]
    try:
        stored = RowLookup.read(group) if "index" in group else None
    except (OSError, KeyError):
        stored = None  # reported with the tables
    return checker.problems(group["path"], stored), unreadable
