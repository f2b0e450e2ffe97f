"""Models the fast runtimes run, exported from the backbone's Keras model and checked against it.

fp32: a tf2onnx export, which must match the Keras reference on fixed test images (cosine >=
0.99999, max abs difference <= 1e-4 x max(1, RMS of the reference)) before it is used. int8:
ONNX Runtime's static post-training quantization of that export, calibrated on real images. Both
are cached on disk per backbone key in $EMBEDDER_CACHE_DIR.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.atomic import atomic_path, write_bytes_atomic
from embedder.backbone import Backbone, uint8_function
from embedder.errors import RuntimeUnavailableError
from embedder.runtimes.encoders import KerasEncoder, OnnxEncoder, runtime_cache_dir

if TYPE_CHECKING:
    import keras
    import onnx

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"  # set (to anything, as tf2onnx 1.17 reads it): no graph copy per optimizer pass
PARITY_MAX_ABS = 1e-4
PARITY_MIN_COSINE = 0.99999


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


def keras_to_onnx(model: keras.Model, size: int) -> onnx.ModelProto:
    """A Keras model on uint8 batches (n, size, size, 3) as an ONNX graph (tf2onnx), input `images`.

    The one converter of Keras models to ONNX: the backbone's export and anything stacked on it.
    """
    return _convert(uint8_function(model, size))


def export_onnx(backbone: Backbone, path: Path, reference: KerasEncoder | None = None) -> dict[str, float]:
    """Export the backbone's Keras model to ONNX at `path` (atomically) and check it against Keras.

    A `reference` already in use is converted and checked against as it is (its trace is reused).
    """
    started = time.perf_counter()
    reference = reference or KerasEncoder(backbone)
    proto = _convert(reference.function)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = parity_images(backbone.size)
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        parity = compare(reference(images), OnnxEncoder(tmp, key=backbone.key)(images))
        if not within_parity(parity):
            raise RuntimeUnavailableError(
                f"the ONNX export of {backbone.key} differs from Keras (max abs {parity['max_abs']:.2e}, "
                f"min cosine {parity['min_cosine']:.7f}); use --runtime keras."
            )
    report: dict[str, Any] = {**parity, "export_seconds": time.perf_counter() - started, "backbone_key": backbone.key}
    write_bytes_atomic(path.with_suffix(".json"), json.dumps(report, indent=2).encode())
    logger.info(
        "exported %s to ONNX in %.1fs (max abs diff %.1e)", backbone.key, report["export_seconds"], parity["max_abs"]
    )
    return report


def _convert(function: Any) -> Any:
    """tf2onnx's conversion of a `tf.function`, without the graph copy it makes before each optimizer pass.

    Those copies (to roll back a failing pass) take a third of the conversion; a failing pass is
    rare, so the conversion runs without them and only falls back to tf2onnx's default when one
    fails. The result is checked against the reference either way. A TF2ONNX_CATCH_ERRORS set by
    the user is left as it is.
    """
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    if CATCH_ERRORS not in os.environ:
        os.environ[CATCH_ERRORS] = "FALSE"
        try:
            return tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=ONNX_OPSET)[
                0
            ]
        except Exception:  # a pass failed without its safety net: convert again with it
            logger.info("tf2onnx failed without its optimizer safety net; converting again with it", exc_info=True)
        finally:
            del os.environ[CATCH_ERRORS]
    return tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=ONNX_OPSET)[0]


def onnx_backbone(backbone: Backbone, reference: KerasEncoder | None = None) -> Path:
    """The parity-checked ONNX export of the backbone (input `images`, uint8), exported on first use (from
    `reference`, if given)."""
    path = onnx_path(backbone)
    if not path.is_file():
        export_onnx(backbone, path, reference)
    return path


def digest_files(images: Sequence[Path]) -> str:
    """Identity of a calibration set: sha256 over the sorted sha256 of its files' bytes."""
    hashes = sorted(hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in images)
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def int8_path(backbone: Backbone, digest: str) -> Path:
    return runtime_cache_dir() / "onnx" / f"{backbone.key}-int8-{digest[:16]}.onnx"


def int8_model(backbone: Backbone, calibration: Sequence[Path], digest: str | None = None) -> tuple[Path, str]:
    """The int8 model calibrated on `calibration` (static, per-channel, QDQ), quantized on first use.

    With a known `digest` whose model is cached, the calibration files are not read at all.
    """
    if digest and int8_path(backbone, digest).is_file():
        return int8_path(backbone, digest), digest
    digest = digest_files(calibration)
    path = int8_path(backbone, digest)
    if path.is_file():
        return path, digest
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from embedder.inputs import load_files

    loaded = load_files(calibration, size=backbone.size, resize=backbone.resize, prefetch=32)
    pixels = np.stack([item.pixels for item in loaded if item.pixels is not None])

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(pixels, max(1, len(pixels) // 16)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    started = time.perf_counter()
    prepared = path.with_name(f"{path.name}.prepared-{os.getpid()}")
    try:
        quant_pre_process(str(onnx_backbone(backbone)), str(prepared), skip_symbolic_shape=True)
        with atomic_path(path) as tmp:
            quantize_static(
                str(prepared),
                str(tmp),
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    finally:
        prepared.unlink(missing_ok=True)
    logger.info("quantized %s to int8 on %d images in %.1fs", backbone.key, len(pixels), time.perf_counter() - started)
    return path, digest
