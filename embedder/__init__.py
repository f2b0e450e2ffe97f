"""Images -> MobileNetV2 bottleneck embeddings, cached in HDF5.

Importing this package does not import TensorFlow; the backbone is built on first use.
"""

from embedder.backbone import Backbone
from embedder.cache import Cache, CachedBackbone, Failure, info, open_cache
from embedder.errors import (
    CacheError,
    CacheLockedError,
    EmbedderError,
    ImageError,
    InputRangeError,
    RuntimeUnavailableError,
    SourceError,
    WeightsError,
)
from embedder.extract import ExtractSummary, extract
from embedder.imagenet import predict_imagenet
from embedder.transformer import Embedder

__all__ = [
    "Backbone",
    "Cache",
    "CacheError",
    "CacheLockedError",
    "CachedBackbone",
    "Embedder",
    "EmbedderError",
    "ExtractSummary",
    "Failure",
    "ImageError",
    "InputRangeError",
    "RuntimeUnavailableError",
    "SourceError",
    "WeightsError",
    "extract",
    "info",
    "open_cache",
    "predict_imagenet",
]
