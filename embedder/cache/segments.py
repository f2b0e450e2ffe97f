"""Segment files: each commit's new rows in their own immutable file, joined by the cache file's virtual datasets.

A backbone group of the cache file holds the facts about its images as HDF5 virtual datasets
(`embeddings`, `sha256`, `path`, `file_size`, `mtime_ns`: the `MAPPED` columns) whose rows are
*runs* (row ranges) of segment files in `CACHE.segments/<key>/`. Growing a cache writes one segment
with the new rows and a new, small cache file with one more run, so it costs what is added, not what
is there. A replaced row is left out of its run; when the runs get many, the small segments are
compacted into one. Every numeric dataset of a segment carries HDF5's fletcher32 checksum.

`label`, the one column people change, is a plain dataset of the small file itself (4 bytes per row),
so a label written with h5py through any copy of the small file changes that copy only. Segments keep
the label each row was written with, which nothing reads but an older cache file's mapping. The small file
records each segment's sha256 when it is written (`runs/digest`), so a segment changed afterwards (say, an
h5py write of embeddings through a byte copy of the small file, which maps the same segments) is found by
`embedder verify`: HDF5's checksums alone would not see it, since HDF5 recomputes them on a write.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from embedder.atomic import atomic_path
from embedder.cache.layout import CHUNK_ROWS, STR

COLUMNS = ("embeddings", "sha256", "path", "label", "file_size", "mtime_ns")
MAPPED = ("embeddings", "sha256", "path", "file_size", "mtime_ns")  # read from segments; `label` is the small file's
LABEL_CHUNK = 65536  # rows per chunk of the small file's labels (256 KiB)
CHECKSUMMED = ("embeddings", "sha256", "label", "file_size", "mtime_ns")  # HDF5 filters cannot apply to vlen str
DTYPES = {
    "sha256": np.dtype("S64"),
    "path": STR,
    "label": np.dtype(np.int32),
    "file_size": np.dtype(np.int64),
    "mtime_ns": np.dtype(np.int64),
    "embeddings": np.dtype(np.float32),
}
FILL = {
    "embeddings": np.nan,
    "sha256": b"",
    "label": -2,
    "file_size": -1,
    "mtime_ns": -1,
}  # what a missing segment reads as


@dataclass(frozen=True)
class Run:
    """Rows [start, start + length) of a segment file of `rows` rows; `file` is `<key>/<name>.h5` inside the
    cache's own segment folder (files of older caches named the folder too; `read_runs` drops it); `digest` is
    the file's sha256 when it was written ("" for files written before digests were recorded)."""

    file: str
    start: int
    length: int
    rows: int
    digest: str = ""


def segments_folder(cache: Path) -> Path:
    """Where the segment files of cache file `cache` live: always named after the file itself, next to it."""
    return cache.with_name(cache.name + ".segments")


def segment_file(cache: Path, file: str) -> Path:
    """The segment a run names, in the cache's own folder (never where the file says it was written)."""
    return segments_folder(cache) / file


def new_segment(cache: Path, key: str) -> tuple[Path, str]:
    """A fresh segment path for backbone `key`, and its name inside the cache's segment folder."""
    relative = f"{key}/{uuid.uuid4().hex}.h5"
    return segment_file(cache, relative), relative


def file_digest(path: Path) -> str:
    """sha256 of a segment file's bytes (what the small file records, and `embedder verify` compares)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_segment(path: Path, rows: int, dim: int, fill: Callable[[dict[str, h5py.Dataset]], None]) -> str:
    """Create a segment of `rows` rows and let `fill` write its datasets; atomic and durable (it is referenced
    right after). Returns the file's digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=True) as tmp, h5py.File(tmp, "w") as handle:
        datasets = {}
        for name in COLUMNS:
            shape = (rows, dim) if name == "embeddings" else (rows,)
            chunks = (max(1, min(CHUNK_ROWS, rows)), *shape[1:])
            datasets[name] = handle.create_dataset(
                name, shape=shape, dtype=DTYPES[name], chunks=chunks, fletcher32=name in CHECKSUMMED
            )
        fill(datasets)
    return file_digest(path)


def link(group: h5py.Group, cache: Path, runs: list[Run], dim: int, labels: np.ndarray) -> None:
    """Create the group's virtual datasets, its own labels and its table of runs."""
    link_columns(group, cache, runs, dim)
    write_labels(group, labels)
    table = group.create_group("runs")
    table.create_dataset("file", data=np.array([run.file for run in runs], dtype=object), dtype=STR)
    for field in ("start", "length", "rows"):
        table.create_dataset(field, data=np.array([getattr(run, field) for run in runs], dtype=np.int64))
    table.create_dataset("digest", data=np.array([run.digest for run in runs], dtype="S64"))


def write_labels(group: h5py.Group, labels: np.ndarray) -> None:
    """The group's `label` dataset, held by the small file itself (checksummed like the lookup tables)."""
    labels = np.asarray(labels, dtype=np.int32)
    group.create_dataset(
        "label",
        data=labels,
        chunks=(max(1, min(LABEL_CHUNK, len(labels))),),
        fletcher32=len(labels) > 0,
    )


def link_columns(group: h5py.Group, cache: Path, runs: list[Run], dim: int, names: tuple[str, ...] = MAPPED) -> None:
    """The group's virtual datasets `names`: the runs' rows, in order, mapped onto `CACHE.segments/...` relative to
    the cache file's folder, under the cache's own name. A missing segment reads as NaN / -1."""
    folder = segments_folder(cache).name
    total = sum(run.length for run in runs)
    for name in names:
        shape = (total, dim) if name == "embeddings" else (total,)
        layout = h5py.VirtualLayout(shape=shape, dtype=DTYPES[name])
        at = 0
        for run in runs:
            source = h5py.VirtualSource(f"{folder}/{run.file}", name, shape=(run.rows, *shape[1:]), dtype=DTYPES[name])
            layout[at : at + run.length] = source[run.start : run.start + run.length]
            at += run.length
        group.create_virtual_dataset(name, layout, fillvalue=FILL.get(name))


def virtual_columns(group: h5py.Group) -> tuple[str, ...]:
    """The columns of the group that are mapped onto segments (older cache files map `label` too)."""
    return tuple(name for name in COLUMNS if name in group and group[name].is_virtual)


def read_runs(group: h5py.Group) -> list[Run]:
    """The runs of a segmented backbone group, in row order."""
    table = group["runs"]
    files = table["file"].asstr()[...]
    digests = table["digest"][...] if "digest" in table else [b""] * len(files)
    return [
        Run("/".join(str(file).split("/")[-2:]), int(start), int(length), int(rows), bytes(digest).decode())
        for file, start, length, rows, digest in zip(
            files, table["start"][...], table["length"][...], table["rows"][...], digests
        )
    ]


def expand(runs: list[Run]) -> tuple[list[Run], np.ndarray, np.ndarray]:
    """The runs row by row: the segment files (as runs of length 0), each row's file number and segment row."""
    files: dict[str, Run] = {}
    for run in runs:
        files.setdefault(run.file, Run(run.file, 0, 0, run.rows, run.digest))
    number = {name: i for i, name in enumerate(files)}
    lengths = [run.length for run in runs]
    file_of = np.repeat(np.array([number[run.file] for run in runs], dtype=np.int32), lengths)
    source_row = (
        np.concatenate([np.arange(run.start, run.start + run.length) for run in runs])
        if runs
        else np.empty(0, np.int64)
    ).astype(np.int64)
    return list(files.values()), file_of, source_row


def contract(files: list[Run], file_of: np.ndarray, source_row: np.ndarray) -> list[Run]:
    """Row-by-row sources back into runs: a new run wherever the file changes or the segment rows jump."""
    if len(file_of) == 0:
        return []
    breaks = np.flatnonzero((np.diff(file_of) != 0) | (np.diff(source_row) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(file_of)]])
    return [
        Run(files[file_of[s]].file, int(source_row[s]), int(e - s), files[file_of[s]].rows, files[file_of[s]].digest)
        for s, e in zip(starts.tolist(), ends.tolist())
    ]


def compaction_point(runs: list[Run], max_runs: int) -> int:
    """Index of the first run to rewrite into one segment, or len(runs) when the runs are few enough.

    The runs after the last run of the largest segment are the small, recent ones: merging them costs
    what they hold. Only when the largest segment itself is cut into too many runs is everything merged.
    """
    if len(runs) <= max_runs:
        return len(runs)
    live: dict[str, int] = {}
    for run in runs:
        live[run.file] = live.get(run.file, 0) + run.length
    largest = max(live, key=live.__getitem__)
    last = max(i for i, run in enumerate(runs) if run.file == largest)
    return last + 1 if last + 1 <= max_runs // 2 else 0


def referenced_files(runs: list[Run]) -> set[str]:
    """The segment files the runs read."""
    return {run.file for run in runs}
