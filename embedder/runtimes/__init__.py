"""Inference runtimes (Keras reference, ONNX Runtime, OpenVINO) at fp32, bf16 or int8, and the choice among them."""

from embedder.runtimes.choice import CANDIDATES, PRECISIONS, RUNTIMES, load_encoder
from embedder.runtimes.encoders import Encoder, KerasEncoder, OnnxEncoder, OpenVinoEncoder, reduced_key, runtime_cache_dir
from embedder.runtimes.exports import compare, export_onnx, fp32_model, keras_to_onnx, onnx_path, parity_images, within_parity

__all__ = [
    "CANDIDATES",
    "PRECISIONS",
    "RUNTIMES",
    "Encoder",
    "KerasEncoder",
    "OnnxEncoder",
    "OpenVinoEncoder",
    "compare",
    "export_onnx",
    "fp32_model",
    "keras_to_onnx",
    "load_encoder",
    "onnx_path",
    "parity_images",
    "reduced_key",
    "runtime_cache_dir",
    "within_parity",
]
