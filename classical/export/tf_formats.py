"""TensorFlow's own formats for neural models: a SavedModel and a TFLite flatbuffer, from the same Keras network.

Both take `images` uint8 (N, S, S, 3) and return `probabilities` float32 (N, C) and `label` int64
(N,) from their serving signature. The metadata the ONNX graph carries as properties goes to
`assets.extra/bottleneck_lab.json` inside the SavedModel, and beside a `.tflite` file as
`<file>.json` (TFLite's converter writes no custom metadata).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from classical.export.onnx_graph import INPUT, LABEL, PROBABILITIES
from embedder import atomic_path

SAVED_MODEL_METADATA = Path("assets.extra") / "bottleneck_lab.json"
SIGNATURE = "serving_default"


def _save(network: Any, size: int, folder: Path) -> None:
    """A SavedModel of `network` at `folder` whose `serving_default` maps uint8 images to {probabilities, label}.

    Keras' ExportArchive tracks every variable the network holds (the augmentation layers' seeds too).
    """
    import keras
    import tensorflow as tf

    def serve(images: Any) -> dict[str, Any]:
        probabilities = network(images, training=False)
        return {PROBABILITIES: probabilities, LABEL: tf.argmax(probabilities, axis=1)}

    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint(SIGNATURE, serve, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT)])
    archive.write_out(str(folder), verbose=False)


def write_saved_model(network: Any, size: int, out: Path, metadata: dict[str, str]) -> None:
    """A SavedModel folder at `out` with its metadata (replaced whole, or left as it was if writing fails)."""
    tmp = out.with_name(f"{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _save(network, size, tmp)
        (tmp / SAVED_MODEL_METADATA).parent.mkdir(exist_ok=True)
        (tmp / SAVED_MODEL_METADATA).write_text(json.dumps(metadata, indent=1))
        if out.is_dir():
            shutil.rmtree(out)
        out.unlink(missing_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_tflite(
    network: Any, size: int, out: Path, metadata: dict[str, str], *, calibration: np.ndarray | None = None
) -> None:
    """A .tflite file at `out` and its metadata beside it; int8 (full integer, calibrated) with `calibration`."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as scratch:
        _save(network, size, Path(scratch) / "saved_model")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(scratch) / "saved_model"), [SIGNATURE])
        if calibration is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
        flatbuffer = converter.convert()
    with atomic_path(out) as tmp:
        tmp.write_bytes(flatbuffer)
    with atomic_path(tflite_metadata_path(out)) as tmp:
        tmp.write_text(json.dumps(metadata, indent=1))


def tflite_metadata_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.json")


def saved_model_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities of uint8 images by a SavedModel's serving signature."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    return lambda images: serve(**{INPUT: tf.constant(images, tf.uint8)})[PROBABILITIES].numpy()


def tflite_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities of uint8 images by a .tflite file's signature (TFLite's interpreter)."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner(SIGNATURE)
    return lambda images: runner(**{INPUT: np.ascontiguousarray(images, np.uint8)})[PROBABILITIES]
