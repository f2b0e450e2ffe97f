"""Choosing and loading an encoder: a runtime at a precision, the fastest measured one for "auto".

Runtimes, all running models exported from the backbone's own Keras model:
- "keras": the reference, the Keras model in a `tf.function` (inference mode, no per-call leaks);
- "onnx": ONNX Runtime on the model exported with tf2onnx (cached on disk per backbone key);
- "openvino": OpenVINO on that same ONNX model.

The fast runtimes run a batch as chunks of a few images on one single-threaded stream per core.

Precisions:
- "fp32" (default): every fp32 runtime must match the Keras reference on fixed test images
  (cosine >= 0.99999, max abs difference <= 1e-4 x max(1, RMS of the reference): 1e-4 for
  avg-pooled embeddings), so fp32 embeddings of any runtime share one cache key;
- "bf16" (OpenVINO's bf16 inference) and "int8" (ONNX Runtime's static post-training
  quantization, calibrated on real images, run by OpenVINO or ONNX Runtime): only when asked. Their
  embeddings differ from fp32, so their cache key names the precision and the runtime (and, for
  int8, the calibration images' digest), and they never mix with fp32 rows.

"auto" picks, for the precision asked, the fastest runtime that is installed and (for fp32)
passes the parity check; throughputs are measured once per backbone key and remembered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedder.atomic import write_bytes_atomic
from embedder.backbone import Backbone
from embedder.errors import RuntimeUnavailableError
from embedder.runtimes.encoders import (
    Encoder,
    KerasEncoder,
    OnnxEncoder,
    OpenVinoEncoder,
    reduced_key,
    runtime_cache_dir,
)
from embedder.runtimes.exports import compare, int8_model, int8_path, onnx_backbone, parity_images, within_parity

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "keras", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
CANDIDATES = {"fp32": ("onnx", "openvino", "keras"), "bf16": ("openvino",), "int8": ("openvino", "onnx")}


def _installed(runtime: str) -> bool:
    module = {"keras": "tensorflow", "onnx": "onnxruntime", "openvino": "openvino"}[runtime]
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def build(
    backbone: Backbone,
    runtime: str,
    precision: str,
    calibration: Sequence[Path] | None,
    digest: str | None,
    threads: int | None,
) -> Encoder:
    """One encoder, exactly the runtime asked; fp32 fast runtimes are checked against the Keras reference once per key."""
    if precision not in CANDIDATES or runtime not in CANDIDATES[precision]:
        supported = ", ".join(f"{p}: {'/'.join(r)}" for p, r in CANDIDATES.items())
        raise RuntimeUnavailableError(
            f"runtime '{runtime}' does not run precision '{precision}' (supported: {supported})."
        )
    if not _installed(runtime):
        raise RuntimeUnavailableError(
            f"runtime '{runtime}' is not installed; pip install it, or choose another --runtime."
        )
    if runtime == "keras":
        return KerasEncoder(backbone)
    encoder_class = OnnxEncoder if runtime == "onnx" else OpenVinoEncoder
    if precision == "int8":
        if not calibration and not (digest and int8_path(backbone, digest).is_file()):
            raise RuntimeUnavailableError(
                "precision 'int8' needs calibration images (real photos like the ones to embed)."
            )
        path, digest = int8_model(backbone, calibration or [], digest)
        return encoder_class(
            path,
            key=reduced_key(backbone, precision, runtime, digest),
            precision=precision,
            calibration=digest,
            threads=threads,
        )
    path = onnx_backbone(backbone)
    if precision == "bf16":
        return encoder_class(path, key=reduced_key(backbone, precision, runtime), precision=precision, threads=threads)
    encoder = encoder_class(path, key=backbone.key, threads=threads)
    if runtime != "onnx":  # the ONNX export itself was checked when exported
        images = parity_images(backbone.size)
        parity = compare(np.asarray(OnnxEncoder(path, key=backbone.key)(images)), encoder(images))
        if not within_parity(parity):
            raise RuntimeUnavailableError(
                f"runtime '{runtime}' differs from the reference on {backbone.key} "
                f"(max abs {parity['max_abs']:.2e}); choose another --runtime."
            )
    return encoder


def throughput(encoder: Encoder, size: int) -> float:
    """Images per second of an encoder on a batch of 32 test images (after a warm-up call)."""
    batch = np.concatenate([parity_images(size)] * 4)
    encoder(batch)
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < 1.5 or calls < 2:
        encoder(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - started)


def _choice_path(backbone: Backbone, precision: str) -> Path:
    return runtime_cache_dir() / "auto" / f"{backbone.key}-{precision}.json"


def remembered(backbone: Backbone, precision: str = "fp32") -> str | None:
    """The runtime "auto" chose on this machine for this backbone and precision, or None before it has chosen."""
    path = _choice_path(backbone, precision)
    return json.loads(path.read_text())["runtime"] if path.is_file() else None


def remember(backbone: Backbone, precision: str, measured: dict[str, float], *, on: str = "test images") -> str:
    """Keep the fastest of the `measured` runtimes (images/s) as "auto"'s choice from now on; returns its name."""
    best = max(measured, key=lambda name: measured[name])
    path = _choice_path(backbone, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(
        path, json.dumps({"runtime": best, "images_per_second": measured, "measured_on": on}, indent=2).encode()
    )
    logger.info(
        "runtime for %s %s: %s (images/s measured on %s: %s)",
        backbone.key,
        precision,
        best,
        on,
        {name: round(rate) for name, rate in measured.items()},
    )
    return best


def load_encoder(
    backbone: Backbone,
    runtime: str = "auto",
    *,
    precision: str = "fp32",
    calibration: Sequence[Path] | None = None,
    calibration_digest: str | None = None,
    threads: int | None = None,
) -> Encoder:
    """The encoder for `runtime` and `precision`; "auto" measures the candidates once and keeps the fastest.

    int8 needs `calibration` images, or the `calibration_digest` of an int8 model already quantized.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}. Received: runtime={runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}. Received: precision={precision!r}")
    if runtime != "auto":
        return build(backbone, runtime, precision, calibration, calibration_digest, threads)
    choice = remembered(backbone, precision)
    if choice is not None:
        return build(backbone, choice, precision, calibration, calibration_digest, threads)
    measured: dict[str, float] = {}
    problems: list[str] = []
    for candidate in CANDIDATES[precision]:
        if candidate == "keras" and measured:
            continue  # the reference is the slowest; it is only the fallback
        try:  # one candidate in memory at a time: peak memory is that of one runtime
            measured[candidate] = throughput(
                build(backbone, candidate, precision, calibration, calibration_digest, threads), backbone.size
            )
        except (RuntimeUnavailableError, ImportError) as exc:
            problems.append(str(exc))
    if not measured:
        raise RuntimeUnavailableError(f"no runtime can run precision '{precision}': {' '.join(problems)}")
    if problems and precision == "fp32":
        logger.warning("%s", " ".join(problems))
    best = remember(backbone, precision, measured)
    return build(backbone, best, precision, calibration, calibration_digest, threads)
