"""The crash-safe writer of a cache file: one writer at a time, a journal of finished batches, atomic merges.

A writer holds an exclusive lock (`CACHE.lock`), appends each finished batch to a journal folder
(`CACHE.journal/`, one file per batch, written under a temporary name then renamed), and merges the
journal by writing one new segment file (`CACHE.segments/<key>/`) with the new rows and a new copy of
the small cache file (virtual datasets over the segments, lookup tables, failures) that atomically
replaces the old one. Killed at any instant, the file still opens with its previous content, and the
next writer replays the finished batches (replay is idempotent), so at most the batch in flight is
lost and no row is duplicated. Rows are keyed by path: a changed file replaces its row, a new file
appends one. Segments are never modified, so readers keep a consistent snapshot while a write goes on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedder.atomic import atomic_path, write_bytes_atomic
from embedder.cache.batch import NUMERIC, Batch, Failure, Row
from embedder.cache.damage import check_before_write, damaged, from_h5py, reading
from embedder.cache.layout import FORMAT, GROUP, SCHEMA_VERSION, check_cache_file
from embedder.cache.lookup import DIGEST, KnownHashes
from embedder.cache.merge import carry_group, find_rows, merge_group, read_rows, read_state
from embedder.cache.segments import read_runs, referenced_files, segments_folder
from embedder.cache.storage import check_storage, claim, new_cache_id
from embedder.errors import CacheError, CacheLockedError
from embedder.provenance import utc_now

logger = logging.getLogger(__name__)


@dataclass
class CacheIndex:
    """What a backbone group holds for the paths of a run, for planning it without reading embeddings."""

    rows: dict[str, Row] = field(default_factory=dict)  # by path, for the paths asked about
    failures: dict[str, Failure] = field(default_factory=dict)  # by path, every recorded failure
    hashes: KnownHashes = field(default_factory=lambda: KnownHashes(np.empty(0, DIGEST)))  # every embedded hash


class CacheWriter:
    """The single writer of a cache file: lock, journal of finished batches, atomic merges.

    Use as a context manager; leaving it (also by an exception or Ctrl-C) merges every
    finished batch into the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.name + ".journal")
        self._lock_handle: Any = None
        self._seq = 0

    def __enter__(self) -> CacheWriter:
        check_cache_file(self.path)
        check_storage(self.path)
        if not self.path.parent.is_dir():
            raise CacheError(f"folder '{self.path.parent}' of cache '{self.path}' does not exist; create it first.")
        self._lock()
        try:
            for stale in self.path.parent.glob(self.path.name + ".tmp-*"):
                stale.unlink()
            check_before_write(self.path)  # a write never proceeds on a damaged cache
            self.commit()
            self._collect_segments()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.commit()
        except Exception as error:
            if exc is None:
                raise
            logger.error(
                "could not merge finished batches into %s (%s); they stay in %s for the next run",
                self.path,
                error,
                self.journal,
            )
        finally:
            self._unlock()

    def _lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise CacheLockedError(
                f"cache '{self.path}' is being written by another process (pid {holder}, lock file {lock_path}); "
                "wait for it to finish, or write to another --out file."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle

    def _unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing releases the flock
            self._lock_handle = None

    # ---- planning

    def index(self, key: str, paths: Iterable[str] = ()) -> CacheIndex:
        """The cached rows of `paths`, every failure and every embedded hash of `key` (journal merged, so complete).

        Reads the lookup tables and the rows asked about, not every path: planning a run of k images
        on a cache of N rows holds k rows and 32 bytes per cached row.
        """
        if not self.path.exists():
            return CacheIndex()
        with reading(self.path, "reading its lookup tables and rows failed"), h5py.File(self.path, "r") as handle:
            if key not in handle.get(GROUP, {}):
                return CacheIndex()
            group = handle[GROUP][key]
            state = read_state(self.path, key, group, migrate_old=False)
            wanted = set(paths)
            found = find_rows(group, state.lookup, wanted) if wanted else {}
            rows = dict(zip(found, read_rows(group, list(found.values()), state.class_names)))
            failures = state.failures
        return CacheIndex(rows=rows, failures=failures, hashes=KnownHashes(state.lookup.sha))

    # ---- journal

    def begin(self, key: str, provenance: dict[str, Any]) -> None:
        """Start journaling batches for `key`, recording the backbone's provenance first."""
        folder = self.journal / key
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(folder / "provenance.json", json.dumps(provenance).encode())
        self._seq = max((int(p.name.split(".")[0]) for p in folder.glob("*.npz")), default=0)

    def write_batch(self, key: str, batch: Batch) -> None:
        """Make a finished batch durable: after this returns, a crash cannot lose it.

        No fsync: a killed process loses nothing the kernel has; after a power cut a journal batch
        may be unreadable, and the merge then skips it (its images are embedded again).
        """
        self._seq += 1
        arrays = {"embeddings": np.asarray(batch.embeddings, dtype=np.float32)}
        for table, name, values in batch.columns():
            arrays[f"{table}.{name}"] = values if name in NUMERIC else np.array(values, dtype=str)
        target = self.journal / key / f"{self._seq:08d}.npz"
        try:
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        except OSError as exc:
            raise CacheError(
                f"could not journal a finished batch to '{target}' ({_reason(exc, self.path)}); the "
                "batches finished before it are kept: free space and rerun the same command."
            ) from None

    @staticmethod
    def _read_batch(path: Path) -> Batch:
        with np.load(path, allow_pickle=False) as arrays:
            return Batch.from_columns(arrays["embeddings"], lambda table, name: arrays[f"{table}.{name}"].tolist())

    # ---- merge

    def commit(self) -> None:
        """Merge every journaled batch: new segments, then a new copy of the cache file swapped in atomically.

        Disk full (or any write error) leaves the previous file and the journal as they were: the next
        run, with space, completes from the journal.
        """
        if not self.journal.is_dir():
            return
        keys = sorted(p.name for p in self.journal.iterdir() if p.is_dir() and any(p.glob("*.npz")))
        if keys:
            self._check_space(keys)
            try:
                self._merge(keys)
            except (OSError, KeyError) as exc:
                if isinstance(exc, KeyError) and not from_h5py(exc):
                    raise
                if isinstance(exc, KeyError) or _read_failure(exc):
                    raise damaged(
                        self.path,
                        f"reading its rows failed ({exc}); nothing was written, the finished batches stay in "
                        f"'{self.journal}'",
                    ) from None
                raise CacheError(
                    f"could not write cache '{self.path}' ({_reason(exc, self.path)}); its previous content is intact and "
                    f"the finished batches stay in '{self.journal}': free space and rerun the same command to complete it."
                ) from None
        for folder in list(self.journal.iterdir()):
            for entry in folder.iterdir():
                entry.unlink()
            folder.rmdir()
        self.journal.rmdir()

    def _check_space(self, keys: list[str]) -> None:
        """Refuse to merge when the disk cannot hold the new segments and cache file (HDF5 may crash on a full disk)."""
        journal = sum(p.stat().st_size for key in keys for p in (self.journal / key).glob("*.npz"))
        old = self.path.stat().st_size if self.path.exists() else 0
        needed = int(1.25 * (journal + old)) + (1 << 20)
        free = shutil.disk_usage(self.path.parent).free
        if free < needed:
            raise CacheError(
                f"could not write cache '{self.path}' (no space left on the disk holding it: {free >> 20} MB free, the "
                f"merge needs about {needed >> 20} MB); its previous content is intact and the finished batches stay in "
                f"'{self.journal}': free space and rerun the same command to complete it."
            )

    def _merge(self, keys: list[str]) -> None:
        with atomic_path(self.path, durable=True) as tmp:
            old = h5py.File(self.path, "r") if self.path.exists() else None
            try:
                with h5py.File(tmp, "w") as new:
                    new.attrs["format"] = FORMAT
                    new.attrs["schema_version"] = SCHEMA_VERSION
                    new.attrs["created"] = old.attrs["created"] if old is not None else utc_now()
                    new.attrs["updated"] = utc_now()
                    cache_id = str(old.attrs.get("cache_id", new_cache_id())) if old is not None else new_cache_id()
                    claim(self.path, cache_id)  # the folder names the id before the file does
                    new.attrs["cache_id"] = cache_id
                    new.attrs["written_as"] = str(self.path.resolve())
                    groups = new.create_group(GROUP)
                    for name in old.get(GROUP, {}) if old is not None else {}:
                        if name not in keys:
                            carry_group(self.path, groups, name, old[GROUP][name])
                    for key in keys:
                        old_group = old[GROUP][key] if old is not None and key in old.get(GROUP, {}) else None
                        folder = self.journal / key
                        merge_group(
                            self.path,
                            groups,
                            key,
                            old_group,
                            json.loads((folder / "provenance.json").read_text()),
                            sorted(folder.glob("*.npz")),
                            self._read_batch,
                        )
            finally:
                if old is not None:
                    old.close()

    def _collect_segments(self) -> None:
        """Delete segment files the cache file does not reference (left by a killed merge, or compacted)."""
        folder = segments_folder(self.path)
        if not folder.is_dir():
            return
        referenced: set[str] = set()
        if self.path.exists():
            with reading(self.path, "reading its list of segments failed"), h5py.File(self.path, "r") as handle:
                for group in handle.get(GROUP, {}).values():
                    if "runs" in group:
                        referenced |= referenced_files(read_runs(group))
        for segment in folder.glob("*/*.h5"):
            if segment.relative_to(folder).as_posix() not in referenced:
                segment.unlink()
        for empty in folder.iterdir():
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()


def _read_failure(exc: OSError) -> bool:
    """Whether HDF5 failed reading (a damaged cache or segment), not writing (full disk, permissions)."""
    message = str(exc).lower()
    return exc.errno is None and "read" in message and "write" not in message


def _reason(exc: OSError, path: Path) -> str:
    """What went wrong writing next to `path`, in words: disk full says so."""
    if exc.errno == errno.ENOSPC or shutil.disk_usage(path.parent).free < 1 << 20:
        return f"no space left on the disk holding it: {shutil.disk_usage(path.parent).free >> 20} MB free"
    return str(exc)
