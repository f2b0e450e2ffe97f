"""The crash-safe writer of a cache file: one writer at a time, a journal of finished batches, atomic merges.

The file is never modified in place. A writer holds an exclusive lock (`CACHE.lock`), appends each
finished batch to a journal folder (`CACHE.journal/`, one file per batch, written under a temporary
name then renamed), and merges the journal into a new copy of the file that atomically replaces the
old one. Killed at any instant, the file still opens with its previous content, and the next writer
replays the finished batches (replay is idempotent), so at most the batch in flight is lost and no
row is duplicated. Rows are keyed by path: a changed file replaces its row, a new file appends one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedder.atomic import atomic_path, write_bytes_atomic
from embedder.cache.batch import NUMERIC, Batch, Failure, Row
from embedder.cache.layout import CHUNK_ROWS, FORMAT, GROUP, SCHEMA_VERSION, STR, check_cache_file, read_failures
from embedder.cache.layout import write_failures
from embedder.errors import CacheError, CacheLockedError
from embedder.provenance import utc_now

logger = logging.getLogger(__name__)


@dataclass
class CacheIndex:
    """What a backbone group already holds, for planning a run without reading embeddings."""

    rows: dict[str, Row] = field(default_factory=dict)  # by path
    failures: dict[str, Failure] = field(default_factory=dict)  # by path
    hashes: set[str] = field(default_factory=set)
    failed_hashes: dict[str, str] = field(default_factory=dict)  # sha256 -> reason


def read_rows(group: h5py.Group) -> list[Row]:
    """Every row of a backbone group, in file order (labels as class names)."""
    names = [str(name) for name in group.attrs.get("class_names", [])]
    return [
        Row(path, sha, names[label] if label >= 0 else "", int(size), int(mtime))
        for path, sha, label, size, mtime in zip(
            group["path"].asstr()[...], group["sha256"].asstr()[...], group["label"][...],
            group["file_size"][...], group["mtime_ns"][...],
        )
    ]


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
        if not self.path.parent.is_dir():
            raise CacheError(f"folder '{self.path.parent}' of cache '{self.path}' does not exist; create it first.")
        self._lock()
        try:
            for stale in self.path.parent.glob(self.path.name + ".tmp-*"):
                stale.unlink()
            self.commit()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.commit()
        except Exception:
            if exc is None:
                raise
            logger.exception("could not merge finished batches into %s; they stay in %s", self.path, self.journal)
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

    def index(self, key: str) -> CacheIndex:
        """Paths, hashes and stats already cached for `key` (journal merged, so complete)."""
        index = CacheIndex()
        if not self.path.exists():
            return index
        with h5py.File(self.path, "r") as handle:
            if key not in handle.get(GROUP, {}):
                return index
            group = handle[GROUP][key]
            index.rows = {row.path: row for row in read_rows(group)}
            index.hashes = {row.sha256 for row in index.rows.values()}
            index.failures = {failure.path: failure for failure in read_failures(group)}
            index.failed_hashes = {f.sha256: f.reason for f in index.failures.values() if f.sha256}
        return index

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
        with atomic_path(self.journal / key / f"{self._seq:08d}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    @staticmethod
    def _read_batch(path: Path) -> Batch:
        with np.load(path, allow_pickle=False) as arrays:
            return Batch.from_columns(arrays["embeddings"], lambda table, name: arrays[f"{table}.{name}"].tolist())

    # ---- merge

    def commit(self) -> None:
        """Merge every journaled batch into a new copy of the file and swap it in atomically."""
        if not self.journal.is_dir():
            return
        keys = sorted(p.name for p in self.journal.iterdir() if p.is_dir() and any(p.glob("*.npz")))
        if keys:
            with atomic_path(self.path, durable=True) as tmp:
                old = h5py.File(self.path, "r") if self.path.exists() else None
                try:
                    with h5py.File(tmp, "w") as new:
                        new.attrs["format"] = FORMAT
                        new.attrs["schema_version"] = SCHEMA_VERSION
                        new.attrs["created"] = old.attrs["created"] if old is not None else utc_now()
                        new.attrs["updated"] = utc_now()
                        groups = new.create_group(GROUP)
                        for name in (old.get(GROUP, {}) if old is not None else {}):
                            if name not in keys:
                                old.copy(old[GROUP][name], groups, name=name)
                        for key in keys:
                            old_group = old[GROUP][key] if old is not None and key in old.get(GROUP, {}) else None
                            self._merge_group(groups, key, old_group)
                finally:
                    if old is not None:
                        old.close()
        for folder in list(self.journal.iterdir()):
            for entry in folder.iterdir():
                entry.unlink()
            folder.rmdir()
        self.journal.rmdir()

    def _merge_group(self, groups: h5py.Group, key: str, old: h5py.Group | None) -> None:
        provenance = json.loads((self.journal / key / "provenance.json").read_text())
        batches: list[Path | None] = sorted((self.journal / key).glob("*.npz"))
        # Final rows by path, each with the source of its embedding: ("old", row) for a kept row,
        # ("new", batch, row) for an embedded row, ("sha", sha256) for a reuse.
        rows: dict[str, tuple[Row, tuple]] = {}
        failures: dict[str, Failure] = {}
        by_sha: dict[str, tuple] = {}
        class_names: list[str] = []
        old_order: list[str] = []
        if old is not None:
            class_names = [str(name) for name in old.attrs.get("class_names", [])]
            for i, row in enumerate(read_rows(old)):
                rows[row.path] = (row, ("old", i))
                by_sha.setdefault(row.sha256, ("old", i))
                old_order.append(row.path)
            failures = {failure.path: failure for failure in read_failures(old)}
        for b, batch_path in enumerate(batches):
            try:
                batch = self._read_batch(batch_path)
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("skipping unreadable journal batch %s (%s); its images will be re-embedded", batch_path, exc)
                batches[b] = None
                continue
            for r, row in enumerate(batch.rows):
                rows[row.path] = (row, ("new", b, r))
                by_sha[row.sha256] = ("new", b, r)
                failures.pop(row.path, None)
            for row in batch.aliases:
                rows[row.path] = (row, ("sha", row.sha256))
                failures.pop(row.path, None)
            for failure in batch.failures:
                rows.pop(failure.path, None)
                failures[failure.path] = failure
        for path, (row, source) in list(rows.items()):
            if source[0] == "sha":
                if row.sha256 not in by_sha:
                    rows.pop(path)
                    failures[path] = Failure(path, row.sha256, "same bytes as an image that could not be embedded",
                                             row.file_size, row.mtime_ns)
                else:
                    rows[path] = (row, by_sha[row.sha256])
        kept = [path for path in old_order if path in rows]
        order = kept + sorted(set(rows) - set(kept))
        for label in sorted({rows[path][0].label for path in order} - set(class_names) - {""}):
            class_names.append(label)
        class_index = {name: i for i, name in enumerate(class_names)}

        group = groups.create_group(key)
        for name, value in provenance.items():
            group.attrs[name] = value
        group.attrs["created"] = old.attrs["created"] if old is not None else utc_now()
        group.attrs["updated"] = utc_now()
        group.attrs["class_names"] = np.array(class_names, dtype=STR)
        final = [rows[path][0] for path in order]
        n, dim = len(order), int(provenance["dim"])
        group.create_dataset("path", data=np.array(order, dtype=object), dtype=STR)
        group.create_dataset("sha256", data=np.array([row.sha256 for row in final], dtype="S64"))
        group.create_dataset("label", data=np.array([class_index.get(row.label, -1) for row in final], dtype=np.int32))
        group.create_dataset("file_size", data=np.array([row.file_size for row in final], dtype=np.int64))
        group.create_dataset("mtime_ns", data=np.array([row.mtime_ns for row in final], dtype=np.int64))
        embeddings = group.create_dataset(
            "embeddings", shape=(n, dim), maxshape=(None, dim), dtype=np.float32,
            chunks=(max(1, min(CHUNK_ROWS, n)), dim),
        )
        sources = [rows[path][1] for path in order]
        if old is not None:
            _copy_rows(embeddings, old["embeddings"], [(i, s[1]) for i, s in enumerate(sources) if s[0] == "old"])
        for b, batch_path in enumerate(batches):
            pairs = [(i, s[2]) for i, s in enumerate(sources) if s[0] == "new" and s[1] == b]
            if pairs:
                with np.load(batch_path, allow_pickle=False) as arrays:
                    _copy_rows(embeddings, arrays["embeddings"], pairs)
        write_failures(group, list(failures.values()))


def _copy_rows(target: h5py.Dataset, source: Any, pairs: list[tuple[int, int]]) -> None:
    """target[dst] = source[src] for (dst, src) pairs sorted by dst, as contiguous slice copies."""
    start = 0
    while start < len(pairs):
        end = start + 1
        while end < len(pairs) and pairs[end][0] == pairs[end - 1][0] + 1 and pairs[end][1] == pairs[end - 1][1] + 1:
            end += 1
        (dst, src), length = pairs[start], end - start
        target[dst : dst + length] = source[src : src + length]
        start = end
