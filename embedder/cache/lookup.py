"""Sorted lookup tables of a backbone group: which row holds a path, and which row holds a content hash.

Stored in the cache file (`index/path_hash`, `index/path_row`, `index/sha`, `index/sha_row`) so that
planning a run and merging its rows read 48 bytes per cached row, not every path as a Python string.
A path is looked up by a 64-bit hash and confirmed against the stored path (hash collisions are
harmless); a content hash by its 32 raw bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import h5py
import numpy as np

DIGEST = np.dtype("S32")


def path_hashes(paths: Iterable[str]) -> np.ndarray:
    """A 64-bit hash of each path (blake2b), as uint64."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little") for p in paths], dtype=np.uint64
    )


def digests(hexes: Iterable[str | bytes]) -> np.ndarray:
    """The raw 32 bytes of each hex sha256, as S32 (comparable and sortable)."""
    return np.array([bytes.fromhex(h.decode() if isinstance(h, bytes) else h) for h in hexes], dtype=DIGEST)


@dataclass
class RowLookup:
    """Both sorted tables; row numbers refer to the joined datasets of the group."""

    path_hash: np.ndarray  # uint64, sorted
    path_row: np.ndarray  # int64
    sha: np.ndarray  # S32, sorted
    sha_row: np.ndarray  # int64

    @classmethod
    def build(cls, paths: Iterable[str], shas: Iterable[str | bytes], rows: np.ndarray) -> RowLookup:
        """Tables for rows `rows` with these paths and hashes."""
        return cls.from_entries(path_hashes(paths), rows, digests(shas), rows)

    @classmethod
    def from_entries(
        cls, path_hash: np.ndarray, path_row: np.ndarray, sha: np.ndarray, sha_row: np.ndarray
    ) -> RowLookup:
        """Both tables from unsorted entries."""
        by_path, by_sha = np.argsort(path_hash, kind="stable"), np.argsort(sha, kind="stable")
        return cls(path_hash[by_path], path_row[by_path], sha[by_sha], sha_row[by_sha])

    @classmethod
    def read(cls, group: h5py.Group) -> RowLookup:
        table = group["index"]
        return cls(table["path_hash"][...], table["path_row"][...], table["sha"][...], table["sha_row"][...])

    def write(self, group: h5py.Group) -> None:
        table = group.create_group("index")
        for name in ("path_hash", "path_row", "sha", "sha_row"):
            table.create_dataset(
                name,
                data=getattr(self, name),
                fletcher32=len(getattr(self, name)) > 0,
                chunks=True if len(getattr(self, name)) else None,
            )

    def path_candidates(self, paths: list[str]) -> dict[str, list[int]]:
        """Rows whose path hash equals each path's (to be confirmed against the stored paths)."""
        hashes = path_hashes(paths)
        left = np.searchsorted(self.path_hash, hashes, side="left")
        right = np.searchsorted(self.path_hash, hashes, side="right")
        return {path: self.path_row[lo:hi].tolist() for path, lo, hi in zip(paths, left, right) if hi > lo}

    def sha_row_of(self, sha: str) -> int | None:
        """A row holding content hash `sha`, or None."""
        at = find_digest(self.sha, sha)
        return None if at is None else int(self.sha_row[at])

    def without(self, forget: np.ndarray, removed: np.ndarray) -> RowLookup:
        """The tables without the entries of rows `forget`; rows after each of `removed` (sorted) move up."""
        keep_path, keep_sha = ~np.isin(self.path_row, forget), ~np.isin(self.sha_row, forget)
        path_row, sha_row = self.path_row[keep_path], self.sha_row[keep_sha]
        return RowLookup(
            self.path_hash[keep_path],
            path_row - np.searchsorted(removed, path_row),
            self.sha[keep_sha],
            sha_row - np.searchsorted(removed, sha_row),
        )

    def plus(self, other: RowLookup) -> RowLookup:
        """Both tables merged (their rows must not overlap)."""
        return RowLookup.from_entries(
            *(
                np.concatenate([getattr(self, name), getattr(other, name)])
                for name in ("path_hash", "path_row", "sha", "sha_row")
            )
        )


def find_digest(sorted_sha: np.ndarray, sha: str) -> int | None:
    """The position of hex content hash `sha` in a sorted S32 table, or None (binary search)."""
    key = digests([sha])[0]
    at = int(np.searchsorted(sorted_sha, key))
    return at if at < len(sorted_sha) and sorted_sha[at] == key else None


class KnownHashes:
    """The content hashes a backbone already has embeddings for: a sorted array, `in` by binary search.

    Compact (32 bytes per row) so it can travel to Ray actors.
    """

    def __init__(self, sha: np.ndarray) -> None:
        self._sha = sha

    def __contains__(self, sha: object) -> bool:
        return isinstance(sha, str) and len(sha) == 64 and find_digest(self._sha, sha) is not None
