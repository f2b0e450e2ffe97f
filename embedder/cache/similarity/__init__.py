"""Similarity search over cached embeddings: one similarity, a faiss index per backbone, kept fresh with the cache.

`normalise` and `SIMILARITY` define the similarity (the cosine of power-normalised rows);
`open_index` gives a cache backbone's persisted index (built or refreshed as needed);
`neighbours` the k-NN graph and the near pairs of rows in memory. Importing this package does not
import faiss.
"""

from embedder.cache.similarity.cache_index import SimilarityIndex, fingerprint, open_index, row_keys
from embedder.cache.similarity.graph import GRAPH_K, Graph, GraphMethod, neighbours
from embedder.cache.similarity.storage import index_dir, key_dir
from embedder.cache.similarity.vectors import SIMILARITY, normalise
from embedder.cache.similarity.vectors_index import EXACT_ROWS, OUTGROWN, Plan, VectorIndex, outgrown, plan_for

__all__ = [
    "EXACT_ROWS",
    "GRAPH_K",
    "OUTGROWN",
    "SIMILARITY",
    "Graph",
    "GraphMethod",
    "Plan",
    "SimilarityIndex",
    "VectorIndex",
    "fingerprint",
    "index_dir",
    "key_dir",
    "neighbours",
    "normalise",
    "open_index",
    "outgrown",
    "plan_for",
    "row_keys",
]
