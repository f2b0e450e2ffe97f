"""The input side: listing sources, decoding image files, resampling, and the streaming reading pipeline."""

from embedder.inputs.decoding import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, as_uint8_batch, decode_image
from embedder.inputs.pipeline import (
    Encoded,
    LoadedFile,
    decode_loaded,
    default_workers,
    encode_files,
    load_and_encode,
    load_file,
    load_files,
)
from embedder.inputs.sources import Source, SourceItem, expand_inputs, list_source
from embedder.inputs.uris import is_uri, list_uri, read_bytes

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "Encoded",
    "LoadedFile",
    "Source",
    "SourceItem",
    "as_uint8_batch",
    "decode_image",
    "decode_loaded",
    "default_workers",
    "encode_files",
    "expand_inputs",
    "is_uri",
    "list_source",
    "list_uri",
    "load_and_encode",
    "load_file",
    "load_files",
    "read_bytes",
]
