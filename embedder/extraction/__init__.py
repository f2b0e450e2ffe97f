"""Extraction: images -> rows of the cache, computing only what is not cached, locally or on a Ray cluster."""

from typing import Any

from embedder.extraction.local import extract
from embedder.extraction.ray_cluster import connect, require_ray
from embedder.extraction.rows import ExtractSummary

__all__ = ["ExtractSummary", "connect", "extract", "extract_ray", "require_ray"]


def __getattr__(name: str) -> Any:
    if name == "extract_ray":  # imports Ray's machinery only when asked for
        from embedder.extraction.ray_engine import extract_ray

        return extract_ray
    raise AttributeError(f"module 'embedder.extraction' has no attribute {name!r}")
