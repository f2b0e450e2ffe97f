"""Merging journaled batches into a backbone group: one new segment with the new rows, a new list of runs.

Costs what the batches hold (plus 48 bytes per cached row for the lookup tables), whatever the
size of the cache: the cached rows stay in their segments. Rows are keyed by path: a changed file's
row keeps its position and now points into the new segment; a new file's row is appended; a row that
became a failure is dropped. A row reusing an embedding by content hash gets a copy of that
embedding, so every row of a segment is self-contained.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedder.cache.batch import Batch, Failure, Row
from embedder.cache.layout import STR, read_failures, write_failures
from embedder.cache.lookup import RowLookup
from embedder.cache.segments import (
    COLUMNS,
    MAPPED,
    Run,
    compaction_point,
    contract,
    expand,
    link,
    link_columns,
    new_segment,
    read_runs,
    segment_file,
    write_labels,
    write_segment,
)
from embedder.provenance import utc_now

logger = logging.getLogger(__name__)

MAX_RUNS = 64  # above this many runs, the recent segments are compacted into one
COPY_ROWS = 8192  # rows copied at a time when compacting or migrating: bounded memory


@dataclass
class GroupState:
    """What a backbone group holds before a merge, without its row data."""

    runs: list[Run] = field(default_factory=list)
    lookup: RowLookup = field(default_factory=lambda: RowLookup.build([], [], np.empty(0, np.int64)))
    class_names: list[str] = field(default_factory=list)
    failures: dict[str, Failure] = field(default_factory=dict)
    created: str = field(default_factory=utc_now)
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))  # per row: the small file's own


def read_state(cache: Path, key: str, old: h5py.Group | None, *, migrate_old: bool = True) -> GroupState:
    """The runs, lookup tables, class names and failures of `old`. A group of the layout before segments
    is copied into one segment on its first write (`migrate_old`); for reading, its rows are one run."""
    if old is None:
        return GroupState()
    if "runs" in old:
        runs = read_runs(old)
    else:
        runs = migrate(cache, key, old) if migrate_old else []
    lookup = (
        RowLookup.read(old)
        if "index" in old
        else RowLookup.build(old["path"].asstr()[...], old["sha256"][...], np.arange(len(old["path"]), dtype=np.int64))
    )
    return GroupState(
        runs,
        lookup,
        [str(name) for name in old.attrs.get("class_names", [])],
        {failure.path: failure for failure in read_failures(old)},
        str(old.attrs["created"]),
        old["label"][...].astype(np.int32),
    )


def migrate(cache: Path, key: str, old: h5py.Group) -> list[Run]:
    """Copy a group of plain datasets (the layout before segments) into one segment; its single run."""
    rows = len(old["path"])
    if rows == 0:
        return []
    path, relative = new_segment(cache, key)
    digest = write_segment(
        path, rows, int(old["embeddings"].shape[1]), lambda target: copy_rows(target, [(old, 0, rows)])
    )
    logger.info("moved %d rows of backbone %s into segment %s (once)", rows, key, relative)
    return [Run(relative, 0, rows, rows, digest)]


def carry_group(cache: Path, groups: h5py.Group, name: str, old: h5py.Group) -> None:
    """An untouched backbone group into the new cache file: its small metadata is copied, its segments stay."""
    if "runs" in old:
        old.file.copy(old, groups, name=name)
        copied = groups[name]
        if len(copied["runs/file"]):  # mapped again under the cache's own name (a renamed copy, an older layout)
            dim = int(copied["embeddings"].shape[1])
            for column in MAPPED:
                del copied[column]
            link_columns(copied, cache, read_runs(copied), dim)
        if copied["label"].is_virtual:  # an older layout's labels become the small file's own
            labels = old["label"][...]
            del copied["label"]
            write_labels(copied, labels)
        return
    state = read_state(cache, name, old)
    write_group(groups.create_group(name), cache, _attrs(old), state, int(old["embeddings"].shape[1]))


def merge_group(
    cache: Path,
    groups: h5py.Group,
    key: str,
    old: h5py.Group | None,
    provenance: dict[str, Any],
    batches: list[Path],
    read_batch: Callable[[Path], Batch],
) -> None:
    """Write backbone group `key` of the new cache file: `old`'s rows with the journaled batches merged in."""
    state = read_state(cache, key, old)
    dim = int(provenance["dim"])
    final, by_sha, touched, loaded = _replay(state, batches, read_batch)
    previous = find_rows(old, state.lookup, touched) if old is not None else {}
    cached = dict(zip(previous, read_rows(old, list(previous.values()), state.class_names))) if previous else {}
    sources: dict[str, tuple] = {}
    relabelled: dict[int, str] = {}  # cached row -> its new label: the row stays in its segment
    for path, row in sorted(final.items()):
        source = loaded.get(path) or by_sha.get(row.sha256)
        if source is None:
            at = state.lookup.sha_row_of(row.sha256)
            source = ("old", at) if at is not None else None
        if source is None:
            state.failures[path] = Failure(
                path, row.sha256, "same bytes as an image that could not be embedded", row.file_size, row.mtime_ns
            )
        elif path in cached and cached[path]._replace(label=row.label) == row and source[0] == "old":
            if cached[path].label != row.label:
                relabelled[previous[path]] = row.label
            del previous[path]  # the same image: the cached row stays as it is, only its label may change
        else:
            sources[path] = source
    for label in sorted({row.label for row in final.values()} - set(state.class_names) - {""}):
        state.class_names.append(label)
    class_index = {name: i for i, name in enumerate(state.class_names)}
    labels = state.labels.copy()
    for at, label in relabelled.items():
        labels[at] = class_index.get(label, -1)
    order = list(sources)  # the new segment's rows, by path
    replaced = {previous[path]: i for i, path in enumerate(order) if path in previous}  # cached row -> segment row
    removed = np.array(sorted(set(previous.values()) - set(replaced)), dtype=np.int64)  # now failures
    files, file_of, source_row = expand(state.runs)
    if order:
        segment, relative = new_segment(cache, key)
        digest = write_segment(
            segment, len(order), dim, lambda target: _fill(target, order, final, sources, state, old, batches)
        )
        files.append(Run(relative, 0, 0, len(order), digest))
        moved = np.array(sorted(replaced), dtype=np.int64)
        file_of[moved], source_row[moved] = len(files) - 1, [replaced[r] for r in moved.tolist()]
        new_rows = np.array([i for i, path in enumerate(order) if path not in previous], dtype=np.int64)
        file_of = np.concatenate([file_of, np.full(len(new_rows), len(files) - 1, np.int32)])
        source_row = np.concatenate([source_row, new_rows])
    for at, i in replaced.items():
        labels[at] = class_index.get(final[order[i]].label, -1)
    appended_labels = [class_index.get(final[path].label, -1) for path in order if path not in previous]
    keep = np.ones(len(file_of), bool)
    keep[removed] = False
    state.labels = np.concatenate([labels[keep[: len(labels)]], np.array(appended_labels, np.int32)])
    state.runs = contract(files, file_of[keep], source_row[keep])
    rows = [r - int(np.searchsorted(removed, r)) for r in sorted(replaced)]
    total, appended = int(keep.sum()), len(order) - len(replaced)
    rows += list(range(total - appended, total))
    new_paths = [order[replaced[r]] for r in sorted(replaced)] + [p for p in order if p not in previous]
    state.lookup = state.lookup.without(np.array(sorted(previous.values()), dtype=np.int64), removed).plus(
        RowLookup.build(new_paths, [final[p].sha256 for p in new_paths], np.array(rows, dtype=np.int64))
    )
    if len(state.runs) > MAX_RUNS:
        state.runs = compact(cache, key, state.runs, dim)
    attrs = {**provenance, "created": state.created}
    write_group(groups.create_group(key), cache, attrs, state, dim)


def _replay(
    state: GroupState, batches: list[Path], read_batch: Callable[[Path], Batch]
) -> tuple[dict[str, Row], dict[str, tuple], set[str], dict[str, tuple]]:
    """Apply the batches in order: final rows by path, where each embedded hash is, the paths touched."""
    final: dict[str, Row] = {}
    by_sha: dict[str, tuple] = {}  # sha256 -> ("new", batch, row) of an embedding made in this run
    loaded: dict[str, tuple] = {}  # path -> its own new embedding
    touched: set[str] = set()
    for b, batch_path in enumerate(batches):
        try:
            batch = read_batch(batch_path)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("skipping unreadable journal batch %s (%s); its images will be re-embedded", batch_path, exc)
            continue
        for r, row in enumerate(batch.rows):
            final[row.path] = row
            by_sha[row.sha256] = loaded[row.path] = ("new", b, r)
            state.failures.pop(row.path, None)
        for row in batch.aliases:
            final[row.path] = row
            loaded.pop(row.path, None)
            state.failures.pop(row.path, None)
        for failure in batch.failures:
            final.pop(failure.path, None)
            loaded.pop(failure.path, None)
            state.failures[failure.path] = failure
        touched.update(row.path for row in batch.rows)
        touched.update(row.path for row in batch.aliases)
        touched.update(failure.path for failure in batch.failures)
    return final, by_sha, touched, loaded


def find_rows(group: h5py.Group, lookup: RowLookup, paths: set[str]) -> dict[str, int]:
    """The row of each of `paths` that the group holds (candidates by path hash, confirmed by path)."""
    candidates = lookup.path_candidates(sorted(paths))
    rows = sorted({row for found in candidates.values() for row in found})
    stored = dict(zip(rows, read_at(group["path"], rows)))
    return {path: row for path, found in candidates.items() for row in found if stored[row] == path}


def read_at(dataset: h5py.Dataset, rows: list[int]) -> list:
    """dataset[rows] for sorted unique rows, as Python values (str for strings)."""
    if not rows:
        return []
    view = dataset.asstr() if h5py.check_string_dtype(dataset.dtype) else dataset
    if len(rows) > len(dataset) // 8:
        return view[...][rows].tolist()
    return view[rows].tolist()


def read_rows(group: h5py.Group, rows: list[int], class_names: list[str]) -> list[Row]:
    """Rows `rows` of the group, in the order given (labels as class names)."""
    unique = sorted(set(rows))
    columns = {
        name: dict(zip(unique, read_at(group[name], unique)))
        for name in ("path", "sha256", "label", "file_size", "mtime_ns")
    }
    names = class_names
    return [
        Row(
            columns["path"][r],
            columns["sha256"][r],
            names[columns["label"][r]] if columns["label"][r] >= 0 else "",
            columns["file_size"][r],
            columns["mtime_ns"][r],
        )
        for r in rows
    ]


def _fill(
    target: Mapping[str, h5py.Dataset],
    order: list[str],
    final: dict[str, Row],
    sources: dict[str, tuple],
    state: GroupState,
    old: h5py.Group | None,
    batches: list[Path],
) -> None:
    """Write the new segment's rows: metadata from `final`, embeddings from the batches or the old rows.

    Embeddings are gathered COPY_ROWS rows at a time in segment order; batches are read through a
    small cache, since rows come in the order they were embedded.
    """
    class_index = {name: i for i, name in enumerate(state.class_names)}
    rows = [final[path] for path in order]
    target["path"][...] = np.array(order, dtype=object)
    target["sha256"][...] = np.array([row.sha256 for row in rows], dtype="S64")
    target["label"][...] = np.array([class_index.get(row.label, -1) for row in rows], dtype=np.int32)
    target["file_size"][...] = np.array([row.file_size for row in rows], dtype=np.int64)
    target["mtime_ns"][...] = np.array([row.mtime_ns for row in rows], dtype=np.int64)
    batch_embeddings = functools.lru_cache(maxsize=64)(lambda b: _load_embeddings(batches[b]))
    dim = target["embeddings"].shape[1]
    for start in range(0, len(order), COPY_ROWS):
        chunk = [sources[path] for path in order[start : start + COPY_ROWS]]
        values = np.empty((len(chunk), dim), np.float32)
        from_old = sorted({source[1] for source in chunk if source[0] == "old"})
        old_values = dict(zip(from_old, old["embeddings"][from_old])) if from_old and old is not None else {}
        for i, source in enumerate(chunk):
            values[i] = old_values[source[1]] if source[0] == "old" else batch_embeddings(source[1])[source[2]]
        target["embeddings"][start : start + len(chunk)] = values


def _load_embeddings(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as arrays:
        return arrays["embeddings"]


def copy_rows(target: Mapping[str, h5py.Dataset], parts: list[tuple[Mapping[str, Any], int, int]]) -> None:
    """Copy rows [start, start + length) of each part (a group or segment file), in order, COPY_ROWS at a time."""
    at = 0
    for source, start, length in parts:
        for offset in range(0, length, COPY_ROWS):
            stop = min(length, offset + COPY_ROWS)
            for name in COLUMNS:
                target[name][at + offset : at + stop] = source[name][start + offset : start + stop]
        at += length


def compact(cache: Path, key: str, runs: list[Run], dim: int) -> list[Run]:
    """Rewrite the runs from the compaction point on into one segment; the runs that now join the cache."""
    point = compaction_point(runs, MAX_RUNS)
    tail = runs[point:]
    rows = sum(run.length for run in tail)
    path, relative = new_segment(cache, key)
    files = {run.file: h5py.File(segment_file(cache, run.file), "r") for run in tail}
    try:
        digest = write_segment(
            path, rows, dim, lambda target: copy_rows(target, [(files[r.file], r.start, r.length) for r in tail])
        )
    finally:
        for handle in files.values():
            handle.close()
    logger.info("compacted %d runs (%d rows) of backbone %s into segment %s", len(tail), rows, key, relative)
    return [*runs[:point], Run(relative, 0, rows, rows, digest)]


def write_group(group: h5py.Group, cache: Path, attrs: dict[str, Any], state: GroupState, dim: int) -> None:
    """Write a backbone group of the new cache file: attributes, virtual datasets, lookup tables, failures."""
    for name, value in attrs.items():
        group.attrs[name] = value
    group.attrs["updated"] = utc_now()
    group.attrs["class_names"] = np.array(state.class_names, dtype=STR)
    link(group, cache, state.runs, dim, state.labels)
    state.lookup.write(group)
    write_failures(group, list(state.failures.values()))


def _attrs(group: h5py.Group) -> dict[str, Any]:
    return {name: value for name, value in group.attrs.items() if name not in ("class_names", "updated")}
