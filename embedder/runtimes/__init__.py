"""Inference runtimes (Keras reference, ONNX Runtime, OpenVINO) at fp32, bf16 or int8, the choice among them, and the handover."""

from embedder.runtimes.choice import CANDIDATES, PRECISIONS, RUNTIMES, load_encoder
from embedder.runtimes.encoders import (
    Encoder,
    KerasEncoder,
    OnnxEncoder,
    OpenVinoEncoder,
    reduced_key,
    runtime_cache_dir,
)
from embedder.runtimes.exports import (
    compare,
    export_onnx,
    keras_to_onnx,
    onnx_backbone,
    onnx_path,
    parity_images,
    within_parity,
)
from embedder.runtimes.handover import Handover, start_encoder

__all__ = [
    "CANDIDATES",
    "PRECISIONS",
    "RUNTIMES",
    "Encoder",
    "Handover",
    "KerasEncoder",
    "OnnxEncoder",
    "OpenVinoEncoder",
    "compare",
    "export_onnx",
    "keras_to_onnx",
    "load_encoder",
    "onnx_backbone",
    "onnx_path",
    "parity_images",
    "reduced_key",
    "runtime_cache_dir",
    "start_encoder",
    "within_parity",
]
