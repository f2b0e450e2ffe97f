"""The k-nearest-neighbour graph of a set of normalised rows, and the pairs at or above a threshold in it.

Built on a transient `VectorIndex` of the rows with `plan_for(len(rows))`:

- exact (below EXACT_ROWS rows): the pairs are every pair at or above the threshold (faiss range
  search on the flat index), the neighbours the exact k nearest: the answers of an all-pairs product.
- approximate (IVF-SQ8): each row's GRAPH_K nearest rows are searched; the pairs are the graph's edges
  at or above the threshold. A photo with more than GRAPH_K near-duplicates would lose some of its
  pairs there: such rows (all GRAPH_K neighbours at or above the threshold) are counted as
  `saturated`, and all their pairs are taken from a range search of the index instead. A pair is
  then missed only when the IVF scan misses it: the two photos fall in cells the `nprobe` cells
  searched do not include (rare for near-duplicates, which sit next to each other), or the 8-bit
  similarity is more than QUANTISATION_MARGIN below the exact one.

Every similarity returned is exact: the flat index's own (float32 products, as numpy's), or, for the
IVF's quantised ones, recomputed from the rows, so the threshold is applied to exact values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from embedder.cache.similarity.vectors_index import SEARCH_ROWS, Plan, VectorIndex, plan_for

GRAPH_K = 20  # neighbours per row in the approximate graph (the pairs come from these edges)
QUANTISATION_MARGIN = 0.01  # below the threshold, on the IVF's 8-bit similarities, before the exact check
RESCORE_ROWS = 256  # rows whose neighbours are re-scored at once (256 x 21 x D floats gathered)


@dataclass
class Graph:
    """Pairs (i < j) at or above the threshold, descending, and each row's k nearest other rows."""

    i: np.ndarray  # int64
    j: np.ndarray  # int64
    similarity: np.ndarray  # float32, descending
    knn: np.ndarray  # (n, k) float32 similarities, each row descending (-inf: no neighbour)
    neighbours: np.ndarray  # (n, k) int64 rows (-1: none)
    plan: Plan
    graph_k: int  # neighbours searched per row for the pairs (0: every pair, exact)
    saturated: int  # rows whose graph_k neighbours are all at or above the threshold (0 when exact)
    threshold: float | None = None  # the threshold the pairs are at (a callable's answer, see `neighbours`)

    @property
    def exact(self) -> bool:
        return self.plan.kind == "exact"


def neighbours(
    Z: np.ndarray,
    *,
    k: int = 10,
    threshold: float | Callable[[np.ndarray], float] | None = None,
    plan: Plan | None = None,
) -> Graph:
    """The k nearest neighbours of every row of normalised `Z` and the pairs at or above `threshold` (None: none).

    `threshold` may be a function of each row's nearest-neighbour similarity ((n,) float32, -inf for a
    row without neighbour) returning the threshold: the graph is searched once, then its pairs are cut
    there (`Graph.threshold` says where).
    """
    Z = np.ascontiguousarray(Z, np.float32)
    n = len(Z)
    plan = plan or plan_for(n)
    k = min(k, max(n - 1, 0))
    if plan.kind != "exact" and n > plan.nlist:
        sample = Z[np.sort(np.random.default_rng(0).permutation(n)[: plan.trained_on])]
        index = VectorIndex.create(plan, Z.shape[1], sample)
        del sample
    else:
        plan = Plan("exact")
        index = VectorIndex.create(plan, Z.shape[1])
    for start in range(0, n, SEARCH_ROWS):
        index.add(Z[start : start + SEARCH_ROWS], np.arange(start, min(n, start + SEARCH_ROWS)))
    graph_k = 0 if plan.kind == "exact" else max(GRAPH_K, k)
    near, sims = _knn(index, Z, max(k, graph_k, int(callable(threshold))))
    if callable(threshold):
        threshold = float(threshold(sims[:, 0]))
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
    saturated = 0
    if threshold is None:
        pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    elif plan.kind == "exact":
        pairs = _range_pairs(index, Z, threshold)
    else:
        edge = sims >= threshold
        full = np.flatnonzero(edge[:, graph_k - 1])  # rows with graph_k neighbours at the threshold: maybe more
        saturated = len(full)
        a = np.repeat(np.arange(n), edge.sum(axis=1))
        b = near[edge]
        if saturated:  # all their pairs, by a range search of the index (quantised: a margin, then exact)
            more = _range_pairs(index, Z, threshold - QUANTISATION_MARGIN, rows=full, upper=False)
            a, b = np.concatenate([a, more[0]]), np.concatenate([b, more[1]])
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        unique = np.unique(lo * n + hi)
        lo, hi = unique // n, unique % n
        similarity = _dots(Z, lo, hi)
        keep = similarity >= threshold
        pairs = (lo[keep], hi[keep], similarity[keep])
    i, j, c = pairs
    order = np.lexsort((j, i, -c))
    return Graph(
        i[order].astype(np.int64),
        j[order].astype(np.int64),
        c[order].astype(np.float32),
        sims[:, :k],
        near[:, :k],
        plan,
        graph_k,
        saturated,
        None if threshold is None else float(threshold),
    )


def _knn(index: VectorIndex, Z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows (itself left out) with exact similarities, descending."""
    n = len(Z)
    near = np.full((n, k), -1, np.int64)
    sims = np.full((n, k), -np.inf, np.float32)
    if not k:
        return near, sims
    for start in range(0, n, SEARCH_ROWS):
        stop = min(n, start + SEARCH_ROWS)
        found, ids = index.search(Z[start:stop], k + 1)
        own = ids == np.arange(start, stop)[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)  # itself, else the last
        keep = np.ones_like(own)
        keep[np.arange(stop - start), drop] = False
        ids, found = ids[keep].reshape(stop - start, k), found[keep].reshape(stop - start, k)
        valid = ids >= 0
        if index.plan.kind != "exact":  # the quantised similarities, recomputed from the rows
            found = np.concatenate(
                [
                    np.einsum("ij,ikj->ik", Z[start + s : start + s + RESCORE_ROWS], Z[np.maximum(part, 0)])
                    for s, part in ((s, ids[s : s + RESCORE_ROWS]) for s in range(0, stop - start, RESCORE_ROWS))
                ]
            )
        exact = np.where(valid, found, -np.inf).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")
        near[start:stop] = np.where(valid, ids, -1)[np.arange(stop - start)[:, None], order]
        sims[start:stop] = np.take_along_axis(exact, order, axis=1)
    return near, sims


def _range_pairs(
    index: VectorIndex, Z: np.ndarray, threshold: float, *, rows: np.ndarray | None = None, upper: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (row, other) at or above `threshold` of `rows` (None: all), other > row when `upper`, itself left out.

    faiss's range search keeps similarities above its radius: the radius is the float32 just below.
    """
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    rows = np.arange(len(Z)) if rows is None else np.asarray(rows, np.int64)
    parts_i, parts_j, parts_c = [], [], []
    for start in range(0, len(rows), SEARCH_ROWS):
        block = rows[start : start + SEARCH_ROWS]
        limits, sims, ids = index.range_search(Z[block], radius)
        own = np.repeat(block, np.diff(limits).astype(np.int64))
        keep = ((ids > own) if upper else (ids != own)) & (sims >= threshold)
        parts_i.append(own[keep])
        parts_j.append(ids[keep])
        parts_c.append(sims[keep])
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_c)


def _dots(Z: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact similarities of pairs (i, j), SEARCH_ROWS pairs at a time."""
    out = np.empty(len(i), np.float32)
    for start in range(0, len(i), SEARCH_ROWS):
        a, b = i[start : start + SEARCH_ROWS], j[start : start + SEARCH_ROWS]
        out[start : start + len(a)] = np.einsum("ij,ij->i", Z[a], Z[b])
    return out
