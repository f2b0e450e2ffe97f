"""`embedder pack`: a cache as one self-contained HDF5 file, no virtual datasets, no segment files beside it.

The packed file has the layout of caches written before segments (see layout.py): each backbone
group holds its six row datasets itself (chunked, the numeric ones with fletcher32 checksums), its
failures, its lookup tables (`index/`) and every attribute (provenance, class names). Every command
and plain h5py read it like any cache, and it can grow again: its first write moves its rows into a
segment (one copy), after which growth costs what is added. The similarity index is not copied: it
is bound to the rows' identities and rebuilt on first use.

Rows are copied COPY_ROWS at a time (bounded memory) and checked as they are copied, with the
checks of `embedder verify` (checksums on read, finite embeddings, hashes, labels, unique paths,
lookup tables rebuilt from the copied rows and compared with the source's): a damaged source is
refused in one line and nothing is written. The file is written under a temporary name and renamed
into place, so `--out` is either the whole packed cache or untouched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import h5py

from embedder.atomic import atomic_path
from embedder.cache.damage import RowChecker, reading, structure_problems
from embedder.cache.layout import (
    CHUNK_ROWS,
    FORMAT,
    GROUP,
    SCHEMA_VERSION,
    check_cache_file,
    read_failures,
    write_failures,
)
from embedder.cache.lookup import RowLookup
from embedder.cache.merge import COPY_ROWS
from embedder.cache.segments import CHECKSUMMED, COLUMNS, DTYPES
from embedder.cache.similarity.storage import index_dir
from embedder.cache.storage import check_storage
from embedder.cache.verify import pending
from embedder.errors import CacheError, CacheLockedError
from embedder.provenance import utc_now


@dataclass
class PackSummary:
    """What `pack` wrote: the file, rows per backbone key, its size and the time it took."""

    out: Path
    rows: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"packed {sum(self.rows.values())} rows of {len(self.rows)} backbone(s) into {self.out} "
            f"({self.bytes / 1e6:.1f} MB, one self-contained file) in {self.seconds:.1f} s"
        )


def pack(cache: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> PackSummary:
    """Write cache `cache` (every backbone) as one self-contained HDF5 file `out`; raises CacheError in one line.

    Refuses an existing `out` unless `force` (which replaces it, its journal and its similarity index),
    a damaged source (nothing is written), and a source whose journal holds unmerged batches.
    """
    started = time.perf_counter()
    source, out = Path(cache), Path(out)
    if not source.exists():
        raise CacheError(f"cache '{source}' does not exist; pass the cache file written by `embedder extract --out`.")
    check_cache_file(source)
    check_storage(source)
    if out.is_dir():
        raise CacheError(f"--out '{out}' is a directory; pass a file path such as '{out / source.name}'.")
    if out.exists() and out.resolve() == source.resolve():
        raise CacheError(f"--out '{out}' is the cache itself; pack it into another file.")
    if not out.parent.is_dir():
        raise CacheError(f"folder '{out.parent}' of --out '{out}' does not exist; create it first.")
    journal = out.with_name(out.name + ".journal")
    if (out.exists() or journal.exists()) and not force:
        raise CacheError(f"'{out}' already exists; pass --force to replace it, or another --out path.")
    note = pending(source)
    if note:
        raise CacheError(
            f"cache '{source}' has finished batches of an interrupted run that are not merged yet ({note[6:]}); "
            "run the same `embedder extract` again to merge them, then pack."
        )
    summary = PackSummary(out)
    with _locked(source), _locked(out):
        with reading(source, "it cannot be read"), h5py.File(source, "r") as handle:
            groups = handle.get(GROUP, {})
            problems = [
                f"backbone {key}: {problem.rsplit('; ', 1)[0]}"
                for key in groups
                for problem in structure_problems(source, groups[key])
            ]
            if problems:
                raise _refused(source, problems[0], len(problems))
            with atomic_path(out, durable=True) as tmp, h5py.File(tmp, "w") as target:
                target.attrs["format"] = FORMAT
                target.attrs["schema_version"] = SCHEMA_VERSION
                target.attrs["created"] = handle.attrs.get("created", utc_now())
                target.attrs["updated"] = utc_now()
                target.attrs["packed_from"] = str(source)
                new_groups = target.create_group(GROUP)
                for key in groups:
                    summary.rows[key] = _pack_group(source, key, groups[key], new_groups.create_group(key))
        if force:
            shutil.rmtree(journal, ignore_errors=True)
            shutil.rmtree(index_dir(out), ignore_errors=True)  # bound to the replaced file's rows
    summary.bytes = out.stat().st_size
    summary.seconds = time.perf_counter() - started
    return summary


def _pack_group(source: Path, key: str, group: h5py.Group, target: h5py.Group) -> int:
    """Copy one backbone group into `target` as plain checksummed datasets, checking every row; its rows."""
    for name, value in group.attrs.items():
        target.attrs[name] = value
    rows, dim = int(group["embeddings"].shape[0]), int(group["embeddings"].shape[1])
    datasets: dict[str, Any] = {}
    for name in COLUMNS:
        shape = (rows, dim) if name == "embeddings" else (rows,)
        chunks = (max(1, min(CHUNK_ROWS, rows)), *shape[1:]) if rows else None
        datasets[name] = target.create_dataset(
            name, shape=shape, dtype=DTYPES[name], chunks=chunks, fletcher32=bool(rows) and name in CHECKSUMMED
        )
    checker = RowChecker(len(group.attrs.get("class_names", [])))
    for start in range(0, rows, COPY_ROWS):
        stop = min(rows, start + COPY_ROWS)
        block = {}
        for name in COLUMNS:
            with reading(
                source, f"backbone {key}: rows {start}-{stop - 1} of {name} cannot be read, nothing was packed"
            ):
                block[name] = (group[name].asstr() if name == "path" else group[name])[start:stop]
        checker.add(start, block["embeddings"], block["path"], block["sha256"], block["label"])
        for name in COLUMNS:
            datasets[name][start:stop] = block[name]
    with reading(source, f"backbone {key}: its lookup tables or failures cannot be read, nothing was packed"):
        stored = RowLookup.read(group) if "index" in group else None
        failures = read_failures(group)
    problems = checker.problems(datasets["path"], stored)
    if problems:
        raise _refused(source, f"backbone {key}: {problems[0].rsplit('; ', 1)[0]}", len(problems))
    checker.lookup().write(target)
    write_failures(target, failures)
    return rows


def _refused(source: Path, problem: str, count: int) -> CacheError:
    more = f" (and {count - 1} more problem(s))" if count > 1 else ""
    return CacheError(
        f"cache '{source}' is damaged, nothing was packed: {problem}{more}. Run `embedder verify {source}` for "
        "every problem; restore the file from a backup, or extract again into a new file."
    )


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Hold cache `cache`'s writer lock (`CACHE.lock`), so no write changes it while it is packed or replaced.

    Where no lock file can be made (a read-only folder), nobody can write there either: no lock is needed.
    """
    lock_path = cache.with_name(cache.name + ".lock")
    made = not lock_path.exists()
    handle = _open_lock(lock_path)
    if handle is None:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheLockedError(
                f"cache '{cache}' is being written by another process (lock file {lock_path}); wait for it to "
                "finish, then pack."
            ) from None
        try:
            yield
        finally:
            if made and not cache.exists():  # nothing was written: leave no lock file behind
                lock_path.unlink(missing_ok=True)


def _open_lock(path: Path) -> IO[str] | None:
    try:
        return open(path, "a+")
    except OSError:
        return None
