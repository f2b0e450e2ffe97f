"""The similarity index of one backbone of a cache: persisted beside it, bound to its rows, kept fresh.

Every row has an identity, 40 bytes: the 64-bit hash of its path then its content's sha256 (from the
cache's lookup tables; a row's embedding is a function of its bytes and the backbone key). The
index stores the identity of every id it gave out and the fingerprint (blake2b) of the cache's
identities in row order. Opening it compares the fingerprint with the cache's: equal, it is used as
it is; different, it is refreshed: ids whose identity left the cache (a removed or changed photo)
are removed from the faiss index, rows with a new identity (an added or changed photo) are read
(only those rows) and added, and every id is pointed at its row's current position. A refresh
costs O(k) faiss work for k changed rows; the whole index is rebuilt (and this is logged) only when
it is outgrown (see `vectors_index.outgrown`). A stale index is never searched.

Files, in `storage.key_dir(cache, key)`: `meta.json` (written last, atomically: it names the other
two), `ids-<uuid>.npz` (identity and current row of each id) and `index-<uuid>.faiss`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedder.atomic import atomic_path
from embedder.cache.damage import damaged, reading
from embedder.cache.lookup import RowLookup
from embedder.cache.similarity.storage import key_dir
from embedder.cache.similarity.vectors import SIMILARITY, normalise
from embedder.cache.similarity.vectors_index import Plan, VectorIndex, outgrown, plan_for
from embedder.errors import CacheError
from embedder.provenance import utc_now

logger = logging.getLogger(__name__)

FORMAT = "bottleneck-lab similarity index"
VERSION = 1
BLOCK_ROWS = 8192  # embeddings are read, normalised and indexed this many rows at a time
SAMPLE_BLOCK = 2048  # an IVF is trained on random blocks of this many consecutive rows
HISTORY = 20  # builds and refreshes remembered in meta.json


def row_keys(group: h5py.Group) -> np.ndarray:
    """Each row's identity (S40): the 8 bytes of its path's hash, then the 32 bytes of its content hash."""
    n = int(group["path"].shape[0])
    if "index" in group:
        lookup = RowLookup.read(group)
    else:  # a file of the layout before lookup tables
        lookup = RowLookup.build(group["path"].asstr()[...], group["sha256"][...], np.arange(n, dtype=np.int64))
    keys = np.zeros((n, 40), np.uint8)
    path_hash = np.zeros(n, np.uint64)
    path_hash[lookup.path_row] = lookup.path_hash
    sha = np.zeros(n, "S32")
    sha[lookup.sha_row] = lookup.sha
    keys[:, :8] = path_hash.view(np.uint8).reshape(n, 8)
    keys[:, 8:] = np.frombuffer(sha.tobytes(), np.uint8).reshape(n, 32)
    return keys.view("S40").ravel()


def fingerprint(keys: np.ndarray) -> str:
    """The fingerprint of a cache's rows: blake2b of their identities in row order."""
    return hashlib.blake2b(np.ascontiguousarray(keys).tobytes(), digest_size=16).hexdigest()


def row_blocks(embeddings: h5py.Dataset, rows: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row numbers, normalised finite rows) of `rows` (sorted; None: all), BLOCK_ROWS at a time; NaN rows skipped."""
    n = int(embeddings.shape[0])
    if rows is None:
        spans = [(s, min(n, s + BLOCK_ROWS)) for s in range(0, n, BLOCK_ROWS)]
    else:  # runs of consecutive rows, each read as one slice
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        spans = []
        for run in np.split(rows, breaks):
            spans += [(int(s), int(min(run[-1] + 1, s + BLOCK_ROWS))) for s in range(run[0], run[-1] + 1, BLOCK_ROWS)]
    for start, stop in spans:
        try:
            X = embeddings[start:stop]
        except OSError as exc:
            raise damaged(
                Path(embeddings.file.filename), f"reading its rows {start}-{stop - 1} failed ({exc})"
            ) from None
        finite = np.isfinite(X).all(axis=1)
        yield np.arange(start, stop)[finite], normalise(X[finite])


@dataclass
class SimilarityIndex:
    """A backbone's index, bound to the cache rows it was opened against (see the module docstring)."""

    cache: Path
    key: str
    dim: int
    vectors: VectorIndex
    keys: np.ndarray  # S40, the identity of each id
    rows: np.ndarray  # int64, the current row of each id (-1: gone from the cache)
    fingerprint: str
    created: str = field(default_factory=utc_now)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def plan(self) -> Plan:
        return self.vectors.plan

    @property
    def row_count(self) -> int:
        """Rows of the cache it is bound to."""
        return int((self.rows >= 0).sum())

    def search(self, Z: np.ndarray, k: int = 10, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar cache rows to each normalised query: similarities (n, k) and row numbers (-1: none)."""
        if Z.ndim != 2 or Z.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}) rows of backbone {self.key}; got shape {Z.shape}")
        k = max(0, min(int(k), self.vectors.ntotal))
        if not len(Z) or not k:
            return np.zeros((len(Z), k), np.float32), np.full((len(Z), k), -1, np.int64)
        similarity, ids = self.vectors.search(Z, k, nprobe=nprobe)
        rows = np.where(ids >= 0, self.rows[np.maximum(ids, 0)], -1)
        similarity = np.where(rows >= 0, similarity, -np.inf).astype(np.float32)
        return similarity, rows

    def describe(self) -> dict[str, Any]:
        """JSON-ready: what the index holds and how it searches."""
        return {
            "backbone": self.key,
            "rows": self.row_count,
            "indexed": self.vectors.ntotal,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "similarity": SIMILARITY,
            "plan": self.plan.as_dict(),
            "method": self.plan.describe(),
            "folder": str(key_dir(self.cache, self.key)),
            "created": self.created,
            "history": self.history,
        }


def open_index(cache: Path, group: h5py.Group, *, refresh: bool = True) -> SimilarityIndex:
    """The index of backbone group `group` of cache file `cache`, built or refreshed as needed (and saved).

    With `refresh=False` a missing or stale index raises CacheError instead. A saved index of another
    backbone key, or of other dimensions, is refused naming both.
    """
    key = group.name.rsplit("/", 1)[-1]
    with reading(cache, f"reading the lookup tables of backbone {key} failed"):
        keys = row_keys(group)
    current = fingerprint(keys)
    folder = key_dir(cache, key)
    with _locked(folder):
        stored = read_index(cache, key)
        if stored is not None and (stored.key != key or stored.dim != int(group["embeddings"].shape[1])):
            raise CacheError(
                f"the similarity index in '{folder}' is of backbone {stored.key} ({stored.dim}-d), but it sits under "
                f"backbone {key} ({int(group['embeddings'].shape[1])}-d) of cache '{cache}'; delete '{folder}' and it "
                "is rebuilt from the cache."
            )
        if stored is not None and stored.fingerprint == current:
            return stored
        if not refresh:
            what = "no similarity index" if stored is None else "a stale similarity index"
            raise CacheError(
                f"backbone {key} of cache '{cache}' has {what} (the cache has {len(keys):,} rows"
                + (f", the index was made for {stored.row_count:,}" if stored is not None else "")
                + f"); build it with `embedder index {cache}`."
            )
        reason = None if stored is None else outgrown(stored.plan, len(keys))
        if stored is None or reason:
            if reason:
                logger.warning("rebuilding the similarity index of %s: %s", key, reason)
            index = build(cache, group, keys, current)
        else:
            index = update(stored, group, keys, current)
        save(index)
        return index


def build(cache: Path, group: h5py.Group, keys: np.ndarray, current: str) -> SimilarityIndex:
    """A new index of every (finite) row of the group, read BLOCK_ROWS at a time."""
    embeddings = group["embeddings"]
    n, dim = int(embeddings.shape[0]), int(embeddings.shape[1])
    plan = plan_for(n)
    sample = training_sample(embeddings, plan.trained_on) if plan.kind != "exact" else None
    vectors = VectorIndex.create(plan, dim, sample)
    del sample
    for rows, Z in row_blocks(embeddings):
        vectors.add(Z, rows)
    key = group.name.rsplit("/", 1)[-1]
    logger.info("built the similarity index of %s: %d rows, %s", key, vectors.ntotal, vectors.plan.describe())
    history = [{"at": utc_now(), "event": "built", "rows": n, "plan": vectors.plan.as_dict()}]
    return SimilarityIndex(
        cache, key, dim, vectors, keys.copy(), np.arange(n, dtype=np.int64), current, history=history
    )


def training_sample(embeddings: h5py.Dataset, rows: int, seed: int = 0) -> np.ndarray:
    """About `rows` normalised rows for training an IVF: random blocks of SAMPLE_BLOCK consecutive rows."""
    n = int(embeddings.shape[0])
    blocks = np.arange(0, n, SAMPLE_BLOCK)
    chosen = np.sort(np.random.default_rng(seed).permutation(blocks)[: -(-rows // SAMPLE_BLOCK)])
    parts = []
    for start in chosen.tolist():
        X = embeddings[start : min(n, start + SAMPLE_BLOCK)]
        parts.append(normalise(X[np.isfinite(X).all(axis=1)]))
    return np.concatenate(parts)[:rows]


def update(stored: SimilarityIndex, group: h5py.Group, keys: np.ndarray, current: str) -> SimilarityIndex:
    """`stored` brought up to the group's rows: gone identities removed, new ones added, ids re-pointed."""
    alive = np.flatnonzero(stored.rows >= 0)
    order = np.argsort(stored.keys[alive], kind="stable")
    known = stored.keys[alive][order]
    at = np.minimum(np.searchsorted(known, keys), max(len(known) - 1, 0))
    hit = (known[at] == keys) if len(known) else np.zeros(len(keys), bool)
    id_of_row = np.where(hit, alive[order][at] if len(known) else -1, -1)
    still = np.zeros(len(stored.rows), bool)
    still[id_of_row[hit]] = True
    gone = alive[~still[alive]]
    removed = stored.vectors.remove(gone)
    new_rows = np.flatnonzero(~hit)
    first = len(stored.rows)
    rows = np.full(first + len(new_rows), -1, np.int64)
    rows[id_of_row[hit]] = np.flatnonzero(hit)
    rows[first:] = new_rows
    id_for = dict(zip(new_rows.tolist(), range(first, first + len(new_rows))))
    added = 0
    for block_rows, Z in row_blocks(group["embeddings"], new_rows):
        stored.vectors.add(Z, np.array([id_for[r] for r in block_rows.tolist()], np.int64))
        added += len(block_rows)
    logger.info(
        "refreshed the similarity index of %s: %d rows added, %d removed (%d rows)",
        stored.key,
        added,
        removed,
        len(keys),
    )
    history = [
        *stored.history,
        {"at": utc_now(), "event": "refreshed", "rows": len(keys), "added": added, "removed": len(gone)},
    ][-HISTORY:]
    return SimilarityIndex(
        stored.cache,
        stored.key,
        stored.dim,
        stored.vectors,
        np.concatenate([stored.keys, keys[new_rows]]),
        rows,
        current,
        stored.created,
        history,
    )


def read_index(cache: Path, key: str) -> SimilarityIndex | None:
    """The saved index of backbone `key` of `cache`, or None when there is none (or it is unreadable: rebuilt)."""
    folder = key_dir(cache, key)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            return None
        plan = Plan(**meta["plan"])
        with np.load(folder / meta["ids_file"], allow_pickle=False) as arrays:
            keys, rows = arrays["keys"], arrays["rows"]
        vectors = VectorIndex.read(folder / meta["faiss_file"], plan)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        logger.warning("the similarity index in %s cannot be read (%s); it is rebuilt", folder, exc)
        return None
    return SimilarityIndex(
        cache, meta["key"], int(meta["dim"]), vectors, keys, rows, meta["fingerprint"], meta["created"], meta["history"]
    )


def save(index: SimilarityIndex) -> None:
    """Write the index's files, then its meta.json naming them (atomic); older files are deleted."""
    folder = key_dir(index.cache, index.key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex
        faiss_file, ids_file = f"index-{tag}.faiss", f"ids-{tag}.npz"
        with atomic_path(folder / faiss_file) as tmp:
            index.vectors.write(tmp)
        with atomic_path(folder / ids_file) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, keys=index.keys, rows=index.rows)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "key": index.key,
            "dim": index.dim,
            "rows": index.row_count,
            "indexed": index.vectors.ntotal,
            "fingerprint": index.fingerprint,
            "similarity": SIMILARITY,
            "plan": index.plan.as_dict(),
            "method": index.plan.describe(),
            "faiss_file": faiss_file,
            "ids_file": ids_file,
            "created": index.created,
            "updated": utc_now(),
            "history": index.history,
        }
        with atomic_path(folder / "meta.json", durable=True) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
        for old in [*folder.glob("index-*.faiss"), *folder.glob("ids-*.npz")]:
            if old.name not in (faiss_file, ids_file):
                old.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not save the similarity index in %s (%s); it is used from memory", folder, exc)


class _locked:
    """An exclusive lock on a key's index folder while it is read, refreshed and saved (waits for another)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.handle: Any = None

    def __enter__(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.folder / "lock", "a+")
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        except OSError:  # a read-only place: nothing is saved there, so no lock is needed
            self.handle = None

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
