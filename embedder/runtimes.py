"""Inference runtimes behind one interface: uint8 images (n, size, size, 3) in, float32 embeddings out.

- "keras": the reference, the Keras model in a `tf.function` (inference mode, no per-call leaks);
- "onnx": ONNX Runtime on a model exported from that very Keras model with tf2onnx, about 2.4x
  faster on CPU. The export is cached on disk per backbone key and only used after it matched the
  Keras reference on a fixed set of test images: cosine >= 0.99999 and max abs difference
  <= 1e-4 x max(1, RMS of the reference), i.e. 1e-4 for avg-pooled embeddings (RMS < 1); max
  pooling picks single activations, whose rounding differences are not averaged away;
- "auto": "onnx" when it is installed and passes that check, otherwise "keras".
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from embedder.backbone import Backbone
from embedder.errors import RuntimeUnavailableError

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "keras", "onnx")
PARITY_MAX_ABS = 1e-4
PARITY_MIN_COSINE = 0.99999


class Encoder(Protocol):
    """Turns a uint8 batch (n, size, size, 3) into float32 embeddings (n, dim)."""

    runtime: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class KerasEncoder:
    """The reference runtime: the backbone's Keras model traced once into a `tf.function`."""

    runtime = "keras"

    def __init__(self, backbone: Backbone) -> None:
        import tensorflow as tf

        model = backbone.model
        spec = tf.TensorSpec([None, backbone.size, backbone.size, 3], tf.uint8, name="images")
        self._function = tf.function(lambda images: model(images, training=False), input_signature=[spec])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._function(images), dtype=np.float32)


class OnnxEncoder:
    """ONNX Runtime session on an exported backbone."""

    runtime = "onnx"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: np.ascontiguousarray(images, dtype=np.uint8)})[0]


def runtime_cache_dir() -> Path:
    """Folder for exported models: $EMBEDDER_CACHE_DIR, else $XDG_CACHE_HOME/bottleneck-lab."""
    if "EMBEDDER_CACHE_DIR" in os.environ:
        return Path(os.environ["EMBEDDER_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "bottleneck-lab"


def parity_images(size: int, count: int = 8) -> np.ndarray:
    """Fixed test images for parity checks: smooth gradients, blocks and noise, seeded."""
    rng = np.random.default_rng(1234)
    ramp = np.linspace(0, 255, size)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        gradient = np.stack([np.add.outer(ramp * (c + 1) / 3, ramp * (i % 3) / 2) % 256 for c in range(3)], -1)
        blocks = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
        noise = rng.normal(0, 20, (size, size, 3))
        mix = gradient if i % 2 else blocks
        images[i] = np.clip(mix + noise, 0, 255).astype(np.uint8)
    return images


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute difference, minimum row cosine and the reference's RMS, for parity checks."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)
    return {
        "max_abs": float(np.max(np.abs(reference - candidate))),
        "min_cosine": float(np.min(cosine)),
        "reference_rms": float(np.sqrt(np.mean(reference**2))),
    }


def within_parity(parity: dict[str, float]) -> bool:
    """True when a runtime's embeddings are interchangeable with the Keras reference."""
    tolerance = PARITY_MAX_ABS * max(1.0, parity["reference_rms"])
    return parity["max_abs"] <= tolerance and parity["min_cosine"] >= PARITY_MIN_COSINE


def onnx_path(backbone: Backbone) -> Path:
    return runtime_cache_dir() / "onnx" / f"{backbone.key}.onnx"


def export_onnx(backbone: Backbone, path: Path) -> dict[str, float]:
    """Export the backbone's Keras model to ONNX at `path` (atomically) and check it against Keras."""
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    started = time.perf_counter()
    model = backbone.model
    spec = tf.TensorSpec([None, backbone.size, backbone.size, 3], tf.uint8, name="images")
    function = tf.function(lambda images: model(images, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=17)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(proto.SerializeToString())
    images = parity_images(backbone.size)
    parity = compare(KerasEncoder(backbone)(images), OnnxEncoder(tmp)(images))
    report = {**parity, "export_seconds": time.perf_counter() - started, "backbone_key": backbone.key}
    if not within_parity(parity):
        tmp.unlink()
        raise RuntimeUnavailableError(
            f"the ONNX export of {backbone.key} differs from Keras (max abs {parity['max_abs']:.2e}, "
            f"min cosine {parity['min_cosine']:.7f}); use --runtime keras."
        )
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    logger.info("exported %s to ONNX in %.1fs (max abs diff %.1e)", backbone.key, report["export_seconds"], parity["max_abs"])
    return report


def load_encoder(backbone: Backbone, runtime: str = "auto", *, threads: int | None = None) -> Encoder:
    """The encoder for `runtime`; "auto" falls back to Keras (with a warning) if ONNX is unusable."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}. Received: runtime={runtime!r}")
    if runtime == "keras":
        return KerasEncoder(backbone)
    path = onnx_path(backbone)
    try:
        if not path.is_file():
            export_onnx(backbone, path)
        return OnnxEncoder(path, threads=threads)
    except ImportError as exc:
        problem: Exception = RuntimeUnavailableError(f"runtime 'onnx' needs onnxruntime and tf2onnx ({exc}); pip install them.")
    except RuntimeUnavailableError as exc:
        problem = exc
    if runtime == "onnx":
        raise problem
    logger.warning("%s Using the slower Keras runtime.", problem)
    return KerasEncoder(backbone)
