"""Images -> MobileNetV2 bottleneck embeddings, cached in HDF5.

The names below are the package's face: code built on the embeddings uses only these. Importing
this package does not import TensorFlow; the backbone is built on first use.
"""

from typing import Any

from embedder import native_logs

native_logs.quiet()  # before anything can load TensorFlow

from embedder.atomic import atomic_path
from embedder.backbone import (
    Backbone,
    build_classifier,
    build_mobilenet_v2,
    load_class_names,
    predict_imagenet,
    top_classes,
    uint8_function,
)
from embedder.cache import (
    Cache,
    CachedBackbone,
    Failure,
    LabelUpdate,
    PackSummary,
    info,
    open_cache,
    pack,
    set_labels,
)
from embedder.cache.similarity import (
    EXACT_ROWS,
    GRAPH_K,
    SIMILARITY,
    Graph,
    SimilarityIndex,
    index_dir,
    neighbours,
    normalise,
)
from embedder.cache.similarity.query import Match
from embedder.errors import (
    CacheError,
    CacheLockedError,
    EmbedderError,
    ImageError,
    ImageTooLargeError,
    InputRangeError,
    RuntimeUnavailableError,
    SourceError,
    WeightsError,
)
from embedder.extraction import ExtractSummary, connect, extract
from embedder.inputs import DEFAULT_MAX_PIXELS, decode_image, encode_files, expand_inputs, list_source, load_files
from embedder.provenance import library_versions, utc_now
from embedder.runtimes import Encoder, keras_to_onnx, load_encoder, onnx_backbone, parity_images

__all__ = [  # the library's face; the CLI's building blocks live in embedder.cli
    "DEFAULT_MAX_PIXELS",
    "EXACT_ROWS",
    "GRAPH_K",
    "SIMILARITY",
    "Backbone",
    "Cache",
    "CacheError",
    "CacheLockedError",
    "CachedBackbone",
    "Embedder",
    "EmbedderError",
    "Encoder",
    "ExtractSummary",
    "Failure",
    "Graph",
    "ImageError",
    "ImageTooLargeError",
    "InputRangeError",
    "LabelUpdate",
    "Match",
    "PackSummary",
    "RuntimeUnavailableError",
    "SimilarityIndex",
    "SourceError",
    "WeightsError",
    "atomic_path",
    "build_classifier",
    "build_mobilenet_v2",
    "connect",
    "decode_image",
    "encode_files",
    "expand_inputs",
    "extract",
    "extract_ray",
    "index_dir",
    "info",
    "keras_to_onnx",
    "library_versions",
    "list_source",
    "load_class_names",
    "load_encoder",
    "load_files",
    "neighbours",
    "normalise",
    "onnx_backbone",
    "open_cache",
    "pack",
    "parity_images",
    "predict_imagenet",
    "set_labels",
    "top_classes",
    "uint8_function",
    "utc_now",
]


def __getattr__(name: str) -> Any:
    if name == "extract_ray":  # imports the Ray engine only when asked for
        from embedder.extraction import extract_ray

        return extract_ray
    if name == "Embedder":  # imports scikit-learn (about a second) only when asked for
        from embedder.transformer import Embedder

        return Embedder
    raise AttributeError(f"module 'embedder' has no attribute {name!r}")
