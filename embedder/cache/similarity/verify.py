"""`embedder verify`'s checks of a backbone's similarity index: readable, bound to the rows, finding them."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from embedder.cache.similarity.cache_index import fingerprint, read_index, row_blocks, row_keys
from embedder.cache.similarity.storage import key_dir
from embedder.cache.similarity.vectors import normalise

SAMPLE = 256  # rows searched for themselves
FIX = "delete the folder and it is rebuilt from the cache on the next search (or run `embedder index CACHE`)"


def verify_index(cache: Path, group: h5py.Group) -> list[str]:
    """Problems of the group's saved index (none when there is no index: it is built on first use).

    A stale index (the cache changed since it was saved) is not a problem: it is refreshed before any
    search. An index that cannot be read, is of another backbone, does not hold the rows its ids say,
    or does not find sampled rows as their own nearest neighbours is.
    """
    key = group.name.rsplit("/", 1)[-1]
    folder = key_dir(cache, key)
    if not (folder / "meta.json").is_file():
        return []
    index = read_index(cache, key)
    if index is None:
        return [f"similarity index {folder} cannot be read; {FIX}."]
    if index.key != key or index.dim != group["embeddings"].shape[1]:
        return [f"similarity index {folder} is of backbone {index.key} ({index.dim}-d), not {key}; {FIX}."]
    if index.fingerprint != fingerprint(row_keys(group)):
        return []  # stale: refreshed on first use
    problems = []
    n = int(group["embeddings"].shape[0])
    if index.row_count != n or index.vectors.ntotal > n:
        problems.append(
            f"similarity index {folder} maps {index.row_count} rows and holds {index.vectors.ntotal} vectors, "
            f"the cache has {n} rows; {FIX}."
        )
    sample = np.unique(np.linspace(0, n - 1, min(SAMPLE, n)).astype(np.int64)) if n else np.zeros(0, np.int64)
    finite: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    for rows, block in row_blocks(group["embeddings"], sample):
        finite.append(rows)
        blocks.append(block)
    if finite and index.vectors.ntotal:
        rows, Z = np.concatenate(finite), np.concatenate(blocks)
        _, found = index.search(Z, min(10, index.vectors.ntotal))
        top = sorted({int(h[0]) for h in found if h[0] >= 0})
        stored = dict(zip(top, normalise(group["embeddings"][top]))) if top else {}
        lost = [  # a row is found as itself, or its top hit holds the same embedding (an exact duplicate)
            int(r)
            for r, z, hits in zip(rows, Z, found)
            if r not in hits and not (hits[0] >= 0 and float(stored[int(hits[0])] @ z) >= 0.999)
        ]
        if len(lost) > 0.01 * len(rows):
            problems.append(
                f"similarity index {folder} does not find {len(lost)} of {len(rows)} sampled rows (first: row "
                f"{lost[0]}) as their own neighbours: its vectors are not the cache's; {FIX}."
            )
    return problems
