"""The HDF5 embeddings cache: layout, lazy reader, and a crash-safe writer.

Layout (schema version 1; any h5py user can read it)::

    /                              attrs: format, schema_version, created, updated
    /backbones/<backbone key>/     attrs: provenance (backbone key, alpha, size, pooling, resize,
                                          weights, weights_sha256, precision, preprocessing,
                                          library versions, created, updated, source),
                                          class_names (list of str)
        embeddings   float32 (N, D), chunked, resizable along N
        sha256       ascii S64 (N,)   sha256 of the image file's bytes
        path         utf-8 str (N,)   path relative to the source root (posix)
        label        int32 (N,)       index into class_names, -1 when unlabeled
        file_size    int64 (N,)       bytes, with mtime_ns: lets a rerun skip unchanged files
        mtime_ns     int64 (N,)
        failures/    path, sha256, reason, file_size, mtime_ns: inputs that could not be embedded

Rows are keyed by path: a changed file replaces its row, a new file appends one.

Crash safety: the file is never modified in place. A writer holds an exclusive lock
(`CACHE.lock`), appends each finished batch to a journal folder (`CACHE.journal/`, one file
per batch, written under a temporary name then renamed), and merges the journal into a new
copy of the file that atomically replaces the old one. Killed at any instant, the file still
opens with its previous content, and the next writer replays the finished batches (replay is
idempotent), so at most the batch in flight is lost and no row is duplicated.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedder.errors import CacheError, CacheLockedError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT = "bottleneck-lab embeddings cache"
GROUP = "backbones"
CHUNK_ROWS = 256
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
STR = h5py.string_dtype("utf-8")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Failure:
    """An input that could not be embedded, and why."""

    path: str
    reason: str
    sha256: str = ""


# --------------------------------------------------------------------------- reading


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
    with h5py.File(path, "r") as handle:
        version = handle.attrs.get("schema_version")
        if handle.attrs.get("format") != FORMAT:
            raise CacheError(f"'{path}' is an HDF5 file but not a bottleneck-lab embeddings cache; pass another path.")
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"cache '{path}' was written with schema version {version}; this embedder reads and writes version "
            f"{SCHEMA_VERSION}. Extract into a new file (images are re-embedded), or use the bottleneck-lab "
            "release that wrote it."
        )


class CachedBackbone:
    """The rows of one backbone key; embeddings stay on disk until sliced or `load()`-ed."""

    def __init__(self, group: h5py.Group) -> None:
        self._group = group
        self.key: str = group.name.rsplit("/", 1)[-1]

    def __len__(self) -> int:
        return int(self._group["embeddings"].shape[0])

    @property
    def dim(self) -> int:
        return int(self._group["embeddings"].shape[1])

    @property
    def embeddings(self) -> h5py.Dataset:
        """(N, D) float32 dataset, read lazily: slice it, or call `load()` for everything."""
        return self._group["embeddings"]

    def load(self) -> np.ndarray:
        return self._group["embeddings"][...]

    @property
    def labels(self) -> np.ndarray:
        return self._group["label"][...]

    @property
    def class_names(self) -> list[str]:
        return [str(name) for name in self._group.attrs.get("class_names", [])]

    @property
    def paths(self) -> np.ndarray:
        return self._group["path"].asstr()[...]

    @property
    def sha256(self) -> np.ndarray:
        return self._group["sha256"].asstr()[...]

    @property
    def provenance(self) -> dict[str, Any]:
        return {name: _attr_value(value) for name, value in self._group.attrs.items() if name != "class_names"}

    @property
    def failures(self) -> list[Failure]:
        table = self._group["failures"]
        return [
            Failure(path=path, reason=reason, sha256=sha)
            for path, reason, sha in zip(
                table["path"].asstr()[...], table["reason"].asstr()[...], table["sha256"].asstr()[...]
            )
        ]

    def class_counts(self) -> dict[str, int]:
        """Rows per class name (unlabeled rows under "")."""
        names = self.class_names
        values, counts = np.unique(self.labels, return_counts=True)
        return {(names[v] if v >= 0 else ""): int(c) for v, c in zip(values, counts)}


def _attr_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


class Cache:
    """A read-only view of a cache file; use `open_cache`."""

    def __init__(self, handle: h5py.File, path: Path) -> None:
        self._handle = handle
        self.path = path

    @property
    def keys(self) -> list[str]:
        return sorted(self._handle.get(GROUP, {}).keys())

    def __getitem__(self, key: str) -> CachedBackbone:
        if key not in self._handle.get(GROUP, {}):
            raise KeyError(f"cache '{self.path}' has no backbone '{key}'; it has: {', '.join(self.keys) or 'none'}")
        return CachedBackbone(self._handle[GROUP][key])

    def backbone(self, key: str | None = None) -> CachedBackbone:
        """The rows of `key`, or of the only backbone in the file when key is None."""
        if key is not None:
            return self[key]
        if len(self.keys) != 1:
            raise CacheError(
                f"cache '{self.path}' holds {len(self.keys)} backbones ({', '.join(self.keys) or 'none'}); "
                "name one with its key."
            )
        return self[self.keys[0]]

    @property
    def attrs(self) -> dict[str, Any]:
        return {name: _attr_value(value) for name, value in self._handle.attrs.items()}

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_cache(path: str | os.PathLike) -> Cache:
    """Open a cache file for reading (lazily); raises CacheError with the fix if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"cache '{path}' does not exist; create it with `embedder extract SOURCE --out {path}`.")
    check_cache_file(path)
    return Cache(h5py.File(path, "r"), path)


# --------------------------------------------------------------------------- writing


@dataclass
class CacheIndex:
    """What a backbone group already holds, for planning a run without reading embeddings."""

    rows: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # path -> (sha, size, mtime)
    failures: dict[str, tuple[str, int, int, str]] = field(default_factory=dict)  # path -> (sha, size, mtime, reason)
    hashes: set[str] = field(default_factory=set)
    failed_hashes: dict[str, str] = field(default_factory=dict)  # sha -> reason


@dataclass
class Batch:
    """One journal entry: embedded rows, rows reusing an embedding by hash, and failures."""

    embeddings: np.ndarray
    rows: list[tuple[str, str, str, int, int]] = field(default_factory=list)  # path, sha, label, size, mtime
    aliases: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    failures: list[tuple[str, str, str, int, int]] = field(default_factory=list)  # path, sha, reason, size, mtime


def _columns(records: list[tuple], prefix: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    columns = list(zip(*records)) if records else [()] * len(names)
    arrays = {}
    for name, values in zip(names, columns):
        arrays[f"{prefix}_{name}"] = np.array(values, dtype=np.int64 if name in ("size", "mtime") else str)
    return arrays


ROW_FIELDS = ("path", "sha", "label", "size", "mtime")
FAILURE_FIELDS = ("path", "sha", "reason", "size", "mtime")


def _records(arrays: Any, prefix: str, names: tuple[str, ...]) -> list[tuple]:
    columns = [arrays[f"{prefix}_{name}"].tolist() for name in names]
    return list(zip(*columns))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Any) -> None:
    """Write a file under a temporary name, then rename it into place: whole or absent after a kill.

    No fsync: a killed process loses nothing the kernel has; after a power cut a journal batch
    may be unreadable, and the merge then skips it (its images are embedded again).
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        write(handle)
    os.replace(tmp, path)


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
            shas = group["sha256"].asstr()[...]
            for path, sha, size, mtime in zip(group["path"].asstr()[...], shas, group["file_size"][...], group["mtime_ns"][...]):
                index.rows[path] = (sha, int(size), int(mtime))
            index.hashes = set(shas.tolist())
            table = group["failures"]
            for path, sha, reason, size, mtime in zip(
                table["path"].asstr()[...], table["sha256"].asstr()[...], table["reason"].asstr()[...],
                table["file_size"][...], table["mtime_ns"][...],
            ):
                index.failures[path] = (sha, int(size), int(mtime), reason)
                if sha:
                    index.failed_hashes[sha] = reason
        return index

    # ---- journal

    def begin(self, key: str, provenance: dict[str, Any]) -> None:
        """Start journaling batches for `key`, recording the backbone's provenance first."""
        folder = self.journal / key
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / "provenance.json", lambda h: h.write(json.dumps(provenance).encode()))
        self._seq = max((int(p.name.split(".")[0]) for p in folder.glob("*.npz")), default=0)

    def write_batch(self, key: str, batch: Batch) -> None:
        """Make a finished batch durable: after this returns, a crash cannot lose it."""
        self._seq += 1
        arrays = {
            "embeddings": np.asarray(batch.embeddings, dtype=np.float32),
            **_columns(batch.rows, "rows", ROW_FIELDS),
            **_columns(batch.aliases, "aliases", ROW_FIELDS),
            **_columns(batch.failures, "failures", FAILURE_FIELDS),
        }
        _write_atomic(self.journal / key / f"{self._seq:08d}.npz", lambda h: np.savez(h, **arrays))

    def _journal_batches(self, key: str) -> list[Path]:
        return sorted((self.journal / key).glob("*.npz"))

    # ---- merge

    def commit(self) -> None:
        """Merge every journaled batch into a new copy of the file and swap it in atomically."""
        if not self.journal.is_dir():
            return
        keys = sorted(p.name for p in self.journal.iterdir() if p.is_dir() and any(p.glob("*.npz")))
        if keys:
            tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
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
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        for folder in list(self.journal.iterdir()):
            for entry in folder.iterdir():
                entry.unlink()
            folder.rmdir()
        self.journal.rmdir()

    def _merge_group(self, groups: h5py.Group, key: str, old: h5py.Group | None) -> None:
        provenance = json.loads((self.journal / key / "provenance.json").read_text())
        batches = self._journal_batches(key)
        # Final rows, keyed by path: (sha, label name, size, mtime, source); source is
        # ("old", row) for a kept row, ("new", batch, row) for an embedded row, ("sha", sha) for a reuse.
        rows: dict[str, tuple[str, str, int, int, tuple]] = {}
        failures: dict[str, tuple[str, str, int, int]] = {}
        by_sha: dict[str, tuple] = {}
        class_names: list[str] = []
        old_order: list[str] = []
        if old is not None:
            class_names = [str(name) for name in old.attrs.get("class_names", [])]
            labels = old["label"][...]
            for i, (path, sha, size, mtime) in enumerate(zip(
                old["path"].asstr()[...], old["sha256"].asstr()[...], old["file_size"][...], old["mtime_ns"][...]
            )):
                label = class_names[labels[i]] if labels[i] >= 0 else ""
                rows[path] = (sha, label, int(size), int(mtime), ("old", i))
                by_sha.setdefault(sha, ("old", i))
                old_order.append(path)
            table = old["failures"]
            for record in zip(
                table["path"].asstr()[...], table["sha256"].asstr()[...], table["reason"].asstr()[...],
                table["file_size"][...], table["mtime_ns"][...],
            ):
                failures[record[0]] = tuple(record[1:3]) + (int(record[3]), int(record[4]))
        for b, batch_path in enumerate(batches):
            try:
                with np.load(batch_path, allow_pickle=False) as arrays:
                    embedded = _records(arrays, "rows", ROW_FIELDS)
                    reused = _records(arrays, "aliases", ROW_FIELDS)
                    failed = _records(arrays, "failures", FAILURE_FIELDS)
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("skipping unreadable journal batch %s (%s); its images will be re-embedded", batch_path, exc)
                batches[b] = None
                continue
            for r, (path, sha, label, size, mtime) in enumerate(embedded):
                rows[path] = (sha, label, size, mtime, ("new", b, r))
                by_sha[sha] = ("new", b, r)
                failures.pop(path, None)
            for path, sha, label, size, mtime in reused:
                rows[path] = (sha, label, size, mtime, ("sha", sha))
                failures.pop(path, None)
            for path, sha, reason, size, mtime in failed:
                rows.pop(path, None)
                failures[path] = (sha, reason, size, mtime)
        for path, (sha, label, size, mtime, source) in list(rows.items()):
            if source[0] == "sha":
                if sha not in by_sha:
                    rows.pop(path)
                    failures[path] = (sha, "same bytes as an image that could not be embedded", size, mtime)
                else:
                    rows[path] = (sha, label, size, mtime, by_sha[sha])
        kept = [path for path in old_order if path in rows]
        order = kept + sorted(set(rows) - set(kept))
        for label in sorted({rows[path][1] for path in order} - set(class_names) - {""}):
            class_names.append(label)
        class_index = {name: i for i, name in enumerate(class_names)}

        group = groups.create_group(key)
        for name, value in provenance.items():
            group.attrs[name] = value
        group.attrs["created"] = old.attrs["created"] if old is not None else utc_now()
        group.attrs["updated"] = utc_now()
        group.attrs["class_names"] = np.array(class_names, dtype=STR)
        n, dim = len(order), int(provenance["dim"])
        group.create_dataset("path", data=np.array(order, dtype=object), dtype=STR)
        group.create_dataset("sha256", data=np.array([rows[p][0] for p in order], dtype="S64"))
        group.create_dataset("label", data=np.array([class_index.get(rows[p][1], -1) for p in order], dtype=np.int32))
        group.create_dataset("file_size", data=np.array([rows[p][2] for p in order], dtype=np.int64))
        group.create_dataset("mtime_ns", data=np.array([rows[p][3] for p in order], dtype=np.int64))
        embeddings = group.create_dataset(
            "embeddings", shape=(n, dim), maxshape=(None, dim), dtype=np.float32,
            chunks=(max(1, min(CHUNK_ROWS, n)), dim),
        )
        sources = [rows[path][4] for path in order]
        if old is not None:
            _copy_rows(embeddings, old["embeddings"], [(i, s[1]) for i, s in enumerate(sources) if s[0] == "old"])
        for b, batch_path in enumerate(batches):
            pairs = [(i, s[2]) for i, s in enumerate(sources) if s[0] == "new" and s[1] == b]
            if pairs:
                with np.load(batch_path, allow_pickle=False) as arrays:
                    _copy_rows(embeddings, arrays["embeddings"], pairs)
        table = group.create_group("failures")
        failed_paths = sorted(failures)
        table.create_dataset("path", data=np.array(failed_paths, dtype=object), dtype=STR)
        table.create_dataset("sha256", data=np.array([failures[p][0] for p in failed_paths], dtype="S64"))
        table.create_dataset("reason", data=np.array([failures[p][1] for p in failed_paths], dtype=object), dtype=STR)
        table.create_dataset("file_size", data=np.array([failures[p][2] for p in failed_paths], dtype=np.int64))
        table.create_dataset("mtime_ns", data=np.array([failures[p][3] for p in failed_paths], dtype=np.int64))


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


def info(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready description of a cache: backbones, rows per class, failures, provenance."""
    path = Path(path)
    with open_cache(path) as cache:
        backbones = []
        for key in cache.keys:
            rows = cache[key]
            counts = rows.class_counts()
            backbones.append({
                "key": key,
                "rows": len(rows),
                "dim": rows.dim,
                "classes": {name: counts.get(name, 0) for name in rows.class_names},
                "unlabeled": counts.get("", 0),
                "failures": [{"path": f.path, "reason": f.reason, "sha256": f.sha256} for f in rows.failures],
                "provenance": rows.provenance,
            })
        return {"path": str(path), "bytes": path.stat().st_size, **cache.attrs, "backbones": backbones}
