"""Reading a cache: a lazy view of its backbones' rows, and a JSON-ready description."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import h5py
import numpy as np

from embedder.cache.batch import Failure
from embedder.cache.damage import bad_segments, check_group_tables, damaged
from embedder.cache.layout import GROUP, attr_value, check_cache_file, read_failures
from embedder.cache.segments import COLUMNS, segment_file, segments_folder
from embedder.cache.storage import check_storage
from embedder.errors import CacheError

if TYPE_CHECKING:
    from embedder.cache.similarity import SimilarityIndex
    from embedder.cache.similarity.query import Match


class NormalisedRows(NamedTuple):
    """Normalised rows of a backbone (`CachedBackbone.load_normalised`) and the row number of each."""

    Z: np.ndarray  # (m, D) float32, unit rows
    rows: np.ndarray  # (m,) int64, ascending: the finite rows


class CachedBackbone:
    """The rows of one backbone key; embeddings stay on disk until sliced or `load()`-ed.

    A read that fails its checksum, or rows whose segment file is missing, raise CacheError naming the file.
    """

    def __init__(self, group: h5py.Group, path: Path) -> None:
        self._group = group
        self._path = path
        self.key: str = group.name.rsplit("/", 1)[-1]

    def _read(self, name: str, strings: bool = False) -> np.ndarray:
        try:
            dataset = self._group[name]
            return dataset.asstr()[...] if strings else dataset[...]
        except OSError as exc:
            raise damaged(self._path, f"reading '{name}' of backbone {self.key} failed ({exc})") from None

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
        return self._present(self._read("embeddings"))

    def _present(self, X: np.ndarray) -> np.ndarray:
        """`X`, unless a row is all NaN (what a missing segment file reads as): then CacheError."""
        if np.isnan(X).all(axis=1).any():
            raise damaged(
                self._path,
                f"rows of backbone {self.key} are missing (a segment file in "
                f"'{segments_folder(self._path)}' is gone or was moved without the cache)",
            )
        return X

    def load_normalised(self, *, block_rows: int = 8192) -> NormalisedRows:
        """The rows as the similarity sees them (`normalise`), read and normalised `block_rows` at a time.

        Holds the rows once (N x D float32) plus one block, where `normalise(load())` holds them twice.
        Rows with a NaN or infinite component are left out (`NormalisedRows.rows` names the rows kept);
        rows that are all NaN (a missing segment file) raise CacheError, as `load()` does.
        """
        n, dim = len(self), self.dim
        Z = np.empty((n, dim), np.float32)
        kept = np.empty(n, np.int64)
        filled = 0
        for block in self.normalised_blocks(block_rows=block_rows):
            count = len(block.rows)
            Z[filled : filled + count], kept[filled : filled + count] = block.Z, block.rows
            filled += count
        return NormalisedRows(Z[:filled], kept[:filled])

    def normalised_blocks(self, *, block_rows: int = 8192, where: np.ndarray | None = None) -> Iterator[NormalisedRows]:
        """The rows (those where the bool mask `where` is true, default all) normalised one block at a time.

        Holds one block: for searching all rows without a copy of them. Rows that are not finite are
        left out; rows that are all NaN (a missing segment file) raise CacheError, as `load()` does.
        """
        from embedder.cache.similarity import normalise

        n = len(self)
        for start in range(0, n, block_rows):
            stop = min(n, start + block_rows)
            keep = np.ones(stop - start, bool) if where is None else np.asarray(where[start:stop], bool)
            if not keep.any():
                continue
            try:
                X = self.embeddings[start:stop]
            except OSError as exc:
                raise damaged(
                    self._path, f"reading rows {start}-{stop - 1} of backbone {self.key} failed ({exc})"
                ) from None
            X = self._present(X[keep] if not keep.all() else X)
            finite = np.isfinite(X).all(axis=1)
            yield NormalisedRows(normalise(X if finite.all() else X[finite]), (np.flatnonzero(keep) + start)[finite])

    @property
    def labels(self) -> np.ndarray:
        return self._read("label")

    @property
    def class_names(self) -> list[str]:
        return [str(name) for name in self._group.attrs.get("class_names", [])]

    @property
    def paths(self) -> np.ndarray:
        return self._read("path", strings=True)

    @property
    def sha256(self) -> np.ndarray:
        return self._read("sha256", strings=True)

    @property
    def provenance(self) -> dict[str, Any]:
        return {name: attr_value(value) for name, value in self._group.attrs.items() if name != "class_names"}

    @property
    def failures(self) -> list[Failure]:
        return read_failures(self._group)

    def index(self, *, refresh: bool = True) -> SimilarityIndex:
        """This backbone's similarity index (faiss), built or refreshed as needed and saved with the cache.

        With `refresh=False` a missing or stale index raises CacheError instead of being (re)built.
        """
        from embedder.cache.similarity import open_index

        return open_index(self._path, self._group, refresh=refresh)

    def search(self, X: np.ndarray, k: int = 10, *, index: SimilarityIndex | None = None) -> list[list[Match]]:
        """The k cached photos most similar to each embedding of `X` (raw embeddings of this backbone), best first.

        `index`: this backbone's index as `index()` returned it, for callers that keep it loaded between queries.
        """
        from embedder.cache.similarity import normalise
        from embedder.cache.similarity.query import matches

        X = np.atleast_2d(np.asarray(X, np.float32))
        if X.shape[1] != self.dim:
            raise ValueError(f"backbone {self.key} has {self.dim}-d embeddings; the queries are {X.shape[1]}-d")
        return matches(self._group, *(index or self.index()).search(normalise(X), k))

    def similar(self, paths: list[str], k: int = 10) -> list[list[Match]]:
        """The k cached photos most similar to each cached photo of `paths` (itself left out), best first.

        Raises KeyError naming the paths that are not in the cache.
        """
        from embedder.cache.similarity import normalise
        from embedder.cache.similarity.query import cached_rows, matches

        found = cached_rows(self._group, list(paths))
        missing = [p for p in paths if p not in found]
        if missing:
            raise KeyError(f"backbone {self.key} of cache '{self._path}' has no row for {', '.join(missing[:5])}")
        rows = [found[p] for p in paths]
        order = sorted(set(rows))
        X = dict(zip(order, self.embeddings[order])) if order else {}
        Z = normalise(np.stack([X[r] for r in rows])) if rows else np.zeros((0, self.dim), np.float32)
        similarity, near = self.index().search(Z, k + 1)
        results = []
        for row, sims, hits in zip(rows, similarity, near):
            keep = hits != row
            results.append((sims[keep][:k], hits[keep][:k]))
        if not results:
            return []
        return matches(self._group, np.stack([s for s, _ in results]), np.stack([h for _, h in results]))

    def search_files(
        self, files: Sequence[str | os.PathLike], k: int = 10, *, runtime: str = "auto"
    ) -> list[list[Match]]:
        """The k cached photos most similar to each image file, embedded with this backbone (its preprocessing inside).

        Raises ImageError naming a file that cannot be decoded.
        """
        from embedder.cache.similarity.query import embed_files

        return self.search(embed_files(self.provenance, self.key, [Path(f) for f in files], runtime=runtime), k)

    def class_counts(self) -> dict[str, int]:
        """Rows per class name (unlabeled rows under "")."""
        names = self.class_names
        values, counts = np.unique(self.labels, return_counts=True)
        return {(names[v] if v >= 0 else ""): int(c) for v, c in zip(values, counts)}


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
        group = self._handle[GROUP][key]
        missing = [name for name in (*COLUMNS, "failures") if name not in group]
        if missing:
            raise damaged(self.path, f"backbone {key} has no dataset {', '.join(missing)}")
        if "runs" in group:
            _check_segments(self.path, key, group)
        check_group_tables(self.path, group)  # checksummed lookup tables: damage there is said on open too
        return CachedBackbone(group, self.path)

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
        return {name: attr_value(value) for name, value in self._handle.attrs.items()}

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_segments(path: Path, key: str, group: h5py.Group) -> None:
    """Raise the one damage line when a segment file of backbone `key` is missing or cannot be opened (truncated)."""
    bad = sorted(segment_file(path, file) for file in bad_segments(path, group))
    if not bad:
        return
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    if not bad[0].is_file():
        what = f"is missing{more}; a cache must be moved together with its .segments folder"
    else:
        what = f"cannot be opened{more} (truncated or overwritten)"
    raise damaged(path, f"segment file {bad[0]} of backbone {key} {what}")


def open_cache(path: str | os.PathLike) -> Cache:
    """Open a cache file for reading (lazily); raises CacheError with the fix if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"cache '{path}' does not exist; create it with `embedder extract SOURCE --out {path}`.")
    check_cache_file(path)
    check_storage(path)
    try:
        return Cache(h5py.File(path, "r"), path)
    except OSError as exc:
        raise damaged(path, f"it cannot be opened ({exc})") from None


def info(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready description of a cache: backbones, rows per class, failures, provenance."""
    path = Path(path)
    with open_cache(path) as cache:
        backbones = []
        for key in cache.keys:
            rows = cache[key]
            counts = rows.class_counts()
            backbones.append(
                {
                    "key": key,
                    "rows": len(rows),
                    "dim": rows.dim,
                    "classes": {name: counts.get(name, 0) for name in rows.class_names},
                    "unlabeled": counts.get("", 0),
                    "failures": [
                        {"path": f.path, "reason": f.reason, "sha256": f.sha256, "limits": f.limit_values}
                        for f in rows.failures
                    ],
                    "provenance": rows.provenance,
                }
            )
        return {"path": str(path), "bytes": path.stat().st_size, **cache.attrs, "backbones": backbones}
