"""`classical export`: write a model as one file runnable without this project, and check it against the model.

Every fp32 export is checked before it is kept: on fixed test images its probabilities must equal
the model's own (as `classical predict` computes them) within 1e-4, else it is deleted and the
export fails. An int8 export differs by design; its agreement with the model on the calibration
images is measured and returned instead.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classical.errors import ModelFileError
from classical.export.onnx_graph import (
    INPUT,
    PROBABILITIES,
    float_nodes,
    metadata,
    onnx_graph,
    onnx_session,
    quantize_int8,
)
from classical.export.sources import Exportable, load_exportable
from classical.export.tf_formats import saved_model_runner, tflite_runner, write_saved_model, write_tflite
from embedder import atomic_path, expand_inputs, load_files, parity_images

FORMATS = ("onnx", "saved_model", "tflite")
PARITY_MAX_ABS = 1e-4


@dataclass
class ExportResult:
    """What was written, how long it took, and how closely it reproduces the model."""

    path: str
    format: str
    precision: str
    kind: str
    backbone_key: str
    image_size: int
    resize: str  # the policy images are brought to image_size with
    class_names: list[str]
    seconds: float
    bytes: int
    max_abs_diff: float  # vs the model's probabilities, on the check images
    agreement: float  # fraction of check images given the model's label
    check_images: str  # what they were

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_model(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "onnx",
    int8: bool = False,
    calibration: Sequence[str | os.PathLike] | None = None,
    trust_pickle: bool = False,
) -> ExportResult:
    """Export a model file (a sweep's head or a fine-tuned network) to `out` as ONNX, a SavedModel or TFLite.

    `calibration`: real photos (files or folders) like the ones to classify, needed for int8.
    `trust_pickle`: also read a model file of an earlier release (a pickle: only if you trust it).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}. Received: format={format!r}")
    exportable = load_exportable(model, trust_pickle=trust_pickle)
    out = Path(out)
    if format != "onnx" and not exportable.neural:
        raise ModelFileError(
            f"'{exportable.path}' is a classical head: export it as onnx; saved_model and tflite "
            "are for the Dense head and fine-tuned networks."
        )
    if out.resolve() == exportable.path.resolve():
        raise ModelFileError(f"--out '{out}' is the model file itself; pass another path.")
    if int8 and not calibration:
        raise ValueError("int8 export needs calibration images (--calibration): real photos like the ones to classify.")
    pixels = _calibration_pixels(exportable, calibration) if int8 and calibration else None
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    precision = "int8" if int8 else "fp32"
    _write(exportable, out, format, pixels)
    seconds = time.perf_counter() - started
    images = pixels if pixels is not None else parity_images(exportable.backbone.size)
    try:
        max_abs, agreement = _check(exportable, _runner(out, format), images, strict=not int8)
    except BaseException:
        _remove(out, format)
        raise
    return ExportResult(
        path=str(out),
        format=format,
        precision=precision,
        kind=exportable.kind,
        backbone_key=exportable.backbone_key,
        image_size=exportable.backbone.size,
        resize=exportable.backbone.resize,
        class_names=exportable.class_names,
        seconds=seconds,
        bytes=_size(out),
        max_abs_diff=max_abs,
        agreement=agreement,
        check_images=f"{len(images)} {'calibration photos' if int8 else 'fixed test images'}",
    )


def _write(exportable: Exportable, out: Path, format: str, pixels: np.ndarray | None) -> None:
    import onnx

    precision = "fp32" if pixels is None else "int8"
    if format == "onnx":
        graph = onnx_graph(exportable)
        with atomic_path(out) as tmp:
            onnx.save(graph, tmp)
            if pixels is not None:
                quantize_int8(tmp, tmp, pixels, exclude=float_nodes(graph))
                quantized = onnx.load(tmp)
                onnx.helper.set_model_props(quantized, metadata(exportable, precision=precision))
                onnx.save(quantized, tmp)
    elif format == "saved_model":
        if pixels is not None:
            raise ValueError("TensorFlow has no int8 SavedModel; export int8 as tflite or onnx.")
        write_saved_model(exportable.network(), exportable.backbone.size, out, metadata(exportable))
    else:
        write_tflite(
            exportable.network(),
            exportable.backbone.size,
            out,
            metadata(exportable, precision=precision),
            calibration=pixels,
        )


def _runner(out: Path, format: str) -> Callable[[np.ndarray], np.ndarray]:
    if format == "onnx":
        session = onnx_session(out)
        return lambda images: session.run([PROBABILITIES], {INPUT: images})[0]
    return saved_model_runner(out) if format == "saved_model" else tflite_runner(out)


def _check(
    exportable: Exportable, run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, strict: bool
) -> tuple[float, float]:
    """Max abs difference and label agreement of the export with the model; with `strict`, fail beyond 1e-4."""
    reference = np.concatenate([exportable.reference(images[i : i + 16]) for i in range(0, len(images), 16)])
    exported = np.concatenate([run(images[i : i + 16]) for i in range(0, len(images), 16)])
    if exported.shape != reference.shape:
        raise ModelFileError(
            f"the export of '{exportable.path}' gives probabilities of shape {exported.shape}, "
            f"the model {reference.shape}."
        )
    max_abs = float(np.max(np.abs(exported - reference)))
    agreement = float(np.mean(exported.argmax(1) == reference.argmax(1)))
    if strict and max_abs > PARITY_MAX_ABS:
        raise ModelFileError(
            f"the export of '{exportable.path}' differs from the model by {max_abs:.2e} "
            f"(over {PARITY_MAX_ABS:g}) in probability; it was not kept."
        )
    return max_abs, agreement


def _calibration_pixels(exportable: Exportable, calibration: Sequence[str | os.PathLike]) -> np.ndarray:
    """Decoded calibration photos at the model's input size and resize policy."""
    paths = list(expand_inputs(calibration))
    loaded = load_files(paths, size=exportable.backbone.size, resize=exportable.backbone.resize)
    pixels = [item.pixels for item in loaded if item.pixels is not None]
    if not pixels:
        raise ValueError(f"no readable image among the {len(paths)} calibration inputs; pass real photos.")
    return np.stack(pixels)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def _remove(path: Path, format: str) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    if format == "tflite":
        Path(f"{path}.json").unlink(missing_ok=True)
