"""Near-duplicates and nearest neighbours of embeddings: the similarity index's k-NN graph, or an exact product.

Similarity is the cosine of power-normalised embeddings (`embedder.normalise`): each component is
replaced by its signed square root, then rows are L2-normalised (float32). On MobileNetV2's pooled
ReLU6 features this is the Hellinger kernel; it separates edited copies of a photo from distinct
photos of the same class better than the plain cosine (measured with `benchmarks/audit_threshold.py`
on the flowers, see README "Audit").

`find_near_duplicates` (the audit, split grouping, semi-supervised models) takes its pairs and
nearest neighbours from the embedder's k-NN graph (`embedder.neighbours`): below `embedder.EXACT_ROWS`
rows it is exact (a flat faiss index: every pair at or above the threshold, the exact k nearest, the
answers of `search`); from there on each row gets 40 candidates from an HNSW graph of the rows' 128
principal components, re-scored exactly, and keeps the best 20 as its edges; the pairs are the edges at
or above the threshold. A pair can be missed there in two ways: a photo with more than 20
near-duplicates (its 20th edge still at or above the threshold: such rows are counted as `saturated`,
and all their pairs are taken from an exact product of those rows with every row instead, so the count
says where the graph alone would have been short), or the HNSW search of the projections not returning
the copy among a row's 40 candidates (rare for near-duplicates, which stay next to each other).

`search` is the exact blocked matrix product (`block_rows` x `block_cols` similarities at a time,
32 MB by default, memory O(N * D + N * k), time O(N^2)): the reference the graph is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder import EXACT_ROWS, SIMILARITY, Graph, neighbours, normalise

__all__ = [
    "DEFAULT_THRESHOLD",
    "SIMILARITY",
    "Neighbours",
    "components",
    "effective_threshold",
    "exact_pairs",
    "find_near_duplicates",
    "normalise",
    "search",
]

DEFAULT_THRESHOLD = 0.90
NEAREST_FRACTION = 0.6  # of the typical nearest-neighbour distance, see `effective_threshold`
BLOCK_ROWS, BLOCK_COLS = 1024, 8192


@dataclass
class Neighbours:
    """Pairs (i < j) at or above the threshold, and each row's k highest similarities to other rows."""

    i: np.ndarray  # int64
    j: np.ndarray  # int64
    cosine: np.ndarray  # float32, descending
    knn: np.ndarray  # (N, k) float32, each row descending (empty when k = 0)
    search: str = "exact, blocked matrix products"  # how the pairs were found, in words
    graph_k: int = 0  # neighbours per row the pairs come from (0: every pair, exact)
    saturated: int = 0  # rows whose graph_k neighbours are all at or above the threshold (see the module)
    method: dict[str, Any] = field(default_factory=dict)  # the graph's method and parameters (`embedder.GraphMethod`)

    @classmethod
    def from_graph(cls, graph: Graph) -> Neighbours:
        """The pairs and neighbour similarities of an `embedder.neighbours` graph."""
        return cls(
            graph.i,
            graph.j,
            graph.similarity,
            graph.knn,
            graph.method.describe(),
            graph.graph_k,
            graph.saturated,
            graph.method.as_dict(),
        )


def search(
    X: np.ndarray,
    *,
    threshold: float | None = DEFAULT_THRESHOLD,
    k: int = 0,
    normalised: bool = False,
    block_rows: int = BLOCK_ROWS,
    block_cols: int = BLOCK_COLS,
) -> Neighbours:
    """All pairs with similarity >= `threshold` (None: no pairs) and the k nearest neighbours' similarities.

    Exact: every pair is compared once per tile of `block_rows` x `block_cols` similarities.
    """
    Z = X if normalised else normalise(X)
    n = len(Z)
    k = min(k, max(n - 1, 0))
    pairs_i, pairs_j, pairs_c = [], [], []
    knn = np.full((n, k), -np.inf, dtype=np.float32)
    for r0 in range(0, n, block_rows):
        r1 = min(r0 + block_rows, n)
        rows = Z[r0:r1]
        best = np.full((r1 - r0, k), -np.inf, dtype=np.float32)
        # without k, only the upper triangle (columns from r0 on) is needed
        for c0 in range(0 if k else r0, n, block_cols):
            c1 = min(c0 + block_cols, n)
            tile = rows @ Z[c0:c1].T
            overlap = max(r0, c0), min(r1, c1)
            if overlap[0] < overlap[1]:  # the diagonal: a row is not its own neighbour
                d = np.arange(*overlap)
                tile[d - r0, d - c0] = -np.inf
            if threshold is not None and c1 > r0:
                a, b = np.nonzero(tile >= threshold)
                a, b = a + r0, b + c0
                keep = b > a
                pairs_i.append(a[keep])
                pairs_j.append(b[keep])
                pairs_c.append(tile[a[keep] - r0, b[keep] - c0])
            if k:
                merged = np.concatenate([best, tile], axis=1)
                top = np.argpartition(merged, merged.shape[1] - k, axis=1)[:, -k:]
                best = np.take_along_axis(merged, top, axis=1)
        if k:
            knn[r0:r1] = -np.sort(-best, axis=1)
    i = np.concatenate(pairs_i) if pairs_i else np.zeros(0, np.int64)
    j = np.concatenate(pairs_j) if pairs_j else np.zeros(0, np.int64)
    c = np.concatenate(pairs_c) if pairs_c else np.zeros(0, np.float32)
    order = np.lexsort((j, i, -c))
    return Neighbours(i=i[order].astype(np.int64), j=j[order].astype(np.int64), cosine=c[order], knn=knn)


def effective_threshold(threshold: float, nearest: np.ndarray) -> float:
    """`threshold`, raised in a domain where every photo is close to its nearest neighbour.

    A near-duplicate must be closer (in cosine distance) than 0.6 x the typical distance of a photo to
    its nearest neighbour (the median over the data set): on the flowers the median nearest similarity
    is 0.80 and 0.90 stands; on the blood-cell micrographs it is 0.91 (every cell looks like the next
    one in ImageNet features) and 0.90 would flag 24,475 pairs of distinct cells: there it becomes 0.949.
    """
    nearest = np.asarray(nearest, dtype=np.float64)
    nearest = nearest[np.isfinite(nearest)]
    if not len(nearest):
        return float(threshold)
    return max(float(threshold), 1 - NEAREST_FRACTION * (1 - float(np.median(nearest))))


def find_near_duplicates(
    X: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    k: int = 0,
    normalised: bool = False,
    exact_rows: int = EXACT_ROWS,
) -> tuple[Neighbours, float]:
    """Pairs at the domain's threshold (`effective_threshold`), each row's k nearest similarities, and that threshold.

    One k-NN graph of the rows (`embedder.neighbours`, see the module): the nearest neighbours decide
    the threshold, then the graph's pairs are cut there. Below `embedder.EXACT_ROWS` rows the answer is
    that of the exact all-pairs product (`search`); `exact_rows` moves that limit.
    """
    Z = X if normalised else normalise(X)
    graph = neighbours(Z, k=k, threshold=lambda nearest: effective_threshold(threshold, nearest), exact_rows=exact_rows)
    if graph.threshold is None:  # (a threshold was given, so the graph has one)
        raise ValueError("the k-NN graph was built without a threshold")
    return Neighbours.from_graph(graph), float(graph.threshold)


def exact_pairs(sha256: np.ndarray, limit: int = 50) -> set[tuple[int, int]]:
    """Pairs of rows with identical bytes (all pairs of a group up to `limit` rows, else each with its first)."""
    groups: dict[str, list[int]] = {}
    for row, sha in enumerate(sha256):
        groups.setdefault(str(sha), []).append(row)
    pairs = set()
    for rows in groups.values():
        if len(rows) > 1:
            pairs |= (
                {(a, b) for n, a in enumerate(rows) for b in rows[n + 1 :]}
                if len(rows) <= limit
                else {(rows[0], b) for b in rows[1:]}
            )
    return pairs


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges (i, j): each row's root (union-find, path halving)."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(np.asarray(i).tolist(), np.asarray(j).tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(n)], dtype=np.int64)
