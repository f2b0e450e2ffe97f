"""The HDF5 embeddings cache: its layout, a lazy reader, and the crash-safe single writer."""

from embedder.cache.batch import NUMERIC, Batch, Failure, Row, limits_text
from embedder.cache.labels import LabelUpdate, set_labels
from embedder.cache.layout import SCHEMA_VERSION, STR
from embedder.cache.pack import PackSummary, pack
from embedder.cache.reader import Cache, CachedBackbone, info, open_cache
from embedder.cache.verify import verify
from embedder.cache.writer import CacheIndex, CacheWriter

__all__ = [
    "NUMERIC",
    "SCHEMA_VERSION",
    "STR",
    "Batch",
    "Cache",
    "CacheIndex",
    "CacheWriter",
    "CachedBackbone",
    "Failure",
    "LabelUpdate",
    "PackSummary",
    "Row",
    "info",
    "limits_text",
    "open_cache",
    "pack",
    "set_labels",
    "verify",
]
