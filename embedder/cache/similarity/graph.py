"""The k-nearest-neighbour graph of a set of normalised rows, and the pairs at or above a threshold in it.

- exact (below `exact_rows`, EXACT_ROWS = 20,000 rows): a transient flat inner-product index
  (`VectorIndex` with the "exact" plan); the pairs are every pair at or above the threshold (faiss
  range search), the neighbours the exact k nearest: the answers of an all-pairs product.
- approximate (from `exact_rows` rows on): a transient faiss `PCA128,HNSW32` index (`index_factory`):
  the rows projected on their 128 principal components (trained on a seeded sample of at most
  TRAIN_ROWS rows), an HNSW graph over the projections, searched by L2 distance, which for unit rows
  orders like the cosine. Each row gets CANDIDATES candidates; they are re-scored exactly on the full
  rows and the best GRAPH_K kept as the row's edges. The pairs are the edges at or above the threshold.
  A photo with more than GRAPH_K near-duplicates would lose some of its pairs there: such rows (all
  GRAPH_K edges at or above the threshold) are counted as `saturated`, and all their pairs come from an
  exact product of those rows with every row. A pair is then missed only when the HNSW search on the
  projections does not return the copy among a row's CANDIDATES candidates (rare for near-duplicates,
  which stay next to each other in projection).

Every similarity returned is exact: the flat index's own (float32 products, as numpy's), or recomputed
from the full rows, so the threshold is applied to exact values. `Graph.method` records how the graph
was built, with its parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from embedder.cache.similarity.vectors_index import EXACT_ROWS, SEARCH_ROWS, Plan, VectorIndex

GRAPH_K = 20  # edges kept per row in the approximate graph (the pairs come from these edges)
CANDIDATES = 40  # rows the HNSW search returns per row, re-scored exactly before the best GRAPH_K are kept
COMPONENTS = 128  # principal components the HNSW graph is built on
HNSW_M = 32  # links per node of the HNSW graph
EF_CONSTRUCTION = 40  # faiss's default
EF_SEARCH = 64  # HNSW search breadth (at least CANDIDATES + 1)
TRAIN_ROWS = 50_000  # at most this many rows (a seeded sample) train the projection
RESCORE_ROWS = 256  # rows whose candidates are re-scored at once (256 x 40 x D floats gathered)
PRODUCT_ROWS, PRODUCT_COLS = 1024, 8192  # tiles of the exact product of saturated rows with every row


@dataclass(frozen=True)
class GraphMethod:
    """How a k-NN graph was built: "exact" (flat inner product) or "hnsw" (see the module), with its parameters."""

    kind: str
    factory: str = "Flat"  # faiss index_factory string of the searched index
    components: int = 0  # principal components searched (0: the full rows)
    trained_on: int = 0  # rows the projection was trained on
    hnsw_m: int = 0
    ef_construction: int = 0
    ef_search: int = 0
    candidates: int = 0  # rows searched per row, re-scored exactly
    graph_k: int = 0  # edges kept per row (0: exact, every pair)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The method in words, for logs and reports."""
        if self.kind == "exact":
            return "exact inner product (faiss IndexFlatIP)"
        return (
            f"approximate: faiss {self.factory} (L2 on {self.components} principal components trained on "
            f"{self.trained_on:,} rows; efConstruction {self.ef_construction}, efSearch {self.ef_search}), "
            f"{self.candidates} candidates per row re-scored exactly, best {self.graph_k} kept"
        )


@dataclass
class Graph:
    """Pairs (i < j) at or above the threshold, descending, and each row's k nearest other rows."""

    i: np.ndarray  # int64
    j: np.ndarray  # int64
    similarity: np.ndarray  # float32, descending
    knn: np.ndarray  # (n, k) float32 similarities, each row descending (-inf: no neighbour)
    neighbours: np.ndarray  # (n, k) int64 rows (-1: none)
    method: GraphMethod
    saturated: int  # rows whose graph_k edges are all at or above the threshold (0 when exact)
    threshold: float | None = None  # the threshold the pairs are at (a callable's answer, see `neighbours`)

    @property
    def exact(self) -> bool:
        return self.method.kind == "exact"

    @property
    def graph_k(self) -> int:
        """Edges per row the pairs come from (0: every pair, exact)."""
        return self.method.graph_k


def neighbours(
    Z: np.ndarray,
    *,
    k: int = 10,
    threshold: float | Callable[[np.ndarray], float] | None = None,
    exact_rows: int = EXACT_ROWS,
    seed: int = 0,
) -> Graph:
    """The k nearest neighbours of every row of normalised `Z` and the pairs at or above `threshold` (None: none).

    Exact below `exact_rows` rows, the approximate graph from there on (see the module). `threshold` may
    be a function of each row's nearest-neighbour similarity ((n,) float32, -inf for a row without
    neighbour) returning the threshold: the graph is searched once, then its pairs are cut there
    (`Graph.threshold` says where).
    """
    Z = np.ascontiguousarray(Z, np.float32)
    n = len(Z)
    k = min(k, max(n - 1, 0))
    if n < max(exact_rows, 2):
        return _exact_graph(Z, k, threshold)
    method, near, sims = _hnsw_knn(Z, max(k, GRAPH_K), seed)
    if callable(threshold):
        threshold = float(threshold(sims[:, 0]))
    saturated = 0
    if threshold is None:
        pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    else:
        edge = sims[:, : method.graph_k] >= threshold
        full = np.flatnonzero(edge[:, -1])  # rows with graph_k edges at the threshold: maybe more
        saturated = len(full)
        a = np.repeat(np.arange(n), edge.sum(axis=1))
        b = near[:, : method.graph_k][edge]
        c = sims[:, : method.graph_k][edge]
        if saturated:  # all their pairs, by an exact product with every row
            more = _product_pairs(Z, full, threshold)
            a, b, c = np.concatenate([a, more[0]]), np.concatenate([b, more[1]]), np.concatenate([c, more[2]])
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        unique, first = np.unique(lo * n + hi, return_index=True)
        pairs = (unique // n, unique % n, c[first])
    return _graph(pairs, sims[:, :k], near[:, :k], method, saturated, threshold)


def _graph(
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    knn: np.ndarray,
    near: np.ndarray,
    method: GraphMethod,
    saturated: int,
    threshold: float | None,
) -> Graph:
    i, j, c = pairs
    order = np.lexsort((j, i, -c))
    return Graph(
        i[order].astype(np.int64),
        j[order].astype(np.int64),
        c[order].astype(np.float32),
        np.ascontiguousarray(knn),
        np.ascontiguousarray(near),
        method,
        saturated,
        None if threshold is None else float(threshold),
    )


def _exact_graph(Z: np.ndarray, k: int, threshold: float | Callable[[np.ndarray], float] | None) -> Graph:
    """The exact graph: a flat inner-product index, every pair at or above the threshold by range search."""
    index = VectorIndex.create(Plan("exact"), Z.shape[1])
    for start in range(0, len(Z), SEARCH_ROWS):
        index.add(Z[start : start + SEARCH_ROWS], np.arange(start, min(len(Z), start + SEARCH_ROWS)))
    near, sims = _exact_knn(index, Z, max(k, int(callable(threshold))))
    if callable(threshold):
        threshold = float(threshold(sims[:, 0]))
    if threshold is None:
        pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    else:
        pairs = _range_pairs(index, Z, threshold)
    return _graph(pairs, sims[:, :k], near[:, :k], GraphMethod("exact"), 0, threshold)


def _exact_knn(index: VectorIndex, Z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows (itself left out) in a flat index, descending."""
    n = len(Z)
    near = np.full((n, k), -1, np.int64)
    sims = np.full((n, k), -np.inf, np.float32)
    if not k:
        return near, sims
    for start in range(0, n, SEARCH_ROWS):
        stop = min(n, start + SEARCH_ROWS)
        found, ids = index.search(Z[start:stop], k + 1)
        ids, found = _without_self(ids, found, start)
        valid = ids >= 0
        exact = np.where(valid, found, -np.inf).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")
        near[start:stop] = np.where(valid, ids, -1)[np.arange(stop - start)[:, None], order]
        sims[start:stop] = np.take_along_axis(exact, order, axis=1)
    return near, sims


def _without_self(ids: np.ndarray, found: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Search results of rows start.. with each row's own id dropped (or, when absent, its last result)."""
    rows, width = ids.shape
    own = ids == np.arange(start, start + rows)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), width - 1)
    keep = np.ones_like(own)
    keep[np.arange(rows), drop] = False
    return ids[keep].reshape(rows, width - 1), found[keep].reshape(rows, width - 1)


def _hnsw_knn(Z: np.ndarray, keep: int, seed: int) -> tuple[GraphMethod, np.ndarray, np.ndarray]:
    """Each row's `keep` nearest other rows by the approximate method (see the module), exact similarities."""
    import faiss

    n, dim = Z.shape
    components = min(COMPONENTS, dim)
    candidates = min(max(CANDIDATES, keep), n - 1)
    ef_search = max(EF_SEARCH, candidates + 1)
    factory = f"PCA{components},HNSW{HNSW_M}"
    index: Any = faiss.index_factory(dim, factory, faiss.METRIC_L2)  # IndexPreTransform(PCAMatrix, IndexHNSWFlat)
    sample = np.sort(np.random.default_rng(seed).permutation(n)[:TRAIN_ROWS])
    index.train(Z[sample])
    hnsw: Any = faiss.downcast_index(index.index)
    hnsw.hnsw.efConstruction = EF_CONSTRUCTION
    for start in range(0, n, SEARCH_ROWS * 4):
        index.add(Z[start : start + SEARCH_ROWS * 4])
    hnsw.hnsw.efSearch = ef_search
    keep = min(keep, candidates)
    near = np.full((n, keep), -1, np.int64)
    sims = np.full((n, keep), -np.inf, np.float32)
    for start in range(0, n, SEARCH_ROWS):
        stop = min(n, start + SEARCH_ROWS)
        distances, ids = index.search(Z[start:stop], candidates + 1)
        ids, _ = _without_self(ids, distances, start)
        exact = _rescore(Z, start, ids)
        best = np.argsort(-exact, axis=1, kind="stable")[:, :keep]
        near[start:stop] = np.take_along_axis(np.where(ids >= 0, ids, -1), best, axis=1)
        sims[start:stop] = np.take_along_axis(exact, best, axis=1)
    del index
    method = GraphMethod(
        "hnsw",
        factory=factory,
        components=components,
        trained_on=len(sample),
        hnsw_m=HNSW_M,
        ef_construction=EF_CONSTRUCTION,
        ef_search=ef_search,
        candidates=candidates,
        graph_k=min(GRAPH_K, keep),
    )
    return method, near, sims


def _rescore(Z: np.ndarray, start: int, ids: np.ndarray) -> np.ndarray:
    """Exact similarities of rows start.. with their candidate rows `ids` (-1: none, scored -inf)."""
    out = np.empty(ids.shape, np.float32)
    for s in range(0, len(ids), RESCORE_ROWS):
        part = ids[s : s + RESCORE_ROWS]
        rows = Z[start + s : start + s + len(part)]
        out[s : s + len(part)] = np.matmul(Z[np.maximum(part, 0)], rows[:, :, None])[:, :, 0]
    out[ids < 0] = -np.inf
    return out


def _product_pairs(Z: np.ndarray, rows: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (row, other) of `rows` with every other row at or above `threshold`: an exact blocked product."""
    parts_i, parts_j, parts_c = [], [], []
    for r0 in range(0, len(rows), PRODUCT_ROWS):
        block = rows[r0 : r0 + PRODUCT_ROWS]
        Q = Z[block]
        for c0 in range(0, len(Z), PRODUCT_COLS):
            tile = Q @ Z[c0 : c0 + PRODUCT_COLS].T
            a, b = np.nonzero(tile >= threshold)
            own, other = block[a], b + c0
            keep = own != other
            parts_i.append(own[keep])
            parts_j.append(other[keep])
            parts_c.append(tile[a[keep], b[keep]])
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_c)


def _range_pairs(index: VectorIndex, Z: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (row, other > row) at or above `threshold` in a flat index.

    faiss's range search keeps similarities above its radius: the radius is the float32 just below.
    """
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    parts_i, parts_j, parts_c = [], [], []
    for start in range(0, len(Z), SEARCH_ROWS):
        block = np.arange(start, min(len(Z), start + SEARCH_ROWS))
        limits, sims, ids = index.range_search(Z[block], radius)
        own = np.repeat(block, np.diff(limits).astype(np.int64))
        keep = (ids > own) & (sims >= threshold)
        parts_i.append(own[keep])
        parts_j.append(ids[keep])
        parts_c.append(sims[keep])
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_c)
