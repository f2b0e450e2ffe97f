"""A model row logged as an MLflow ONNX model: the one-file export, uint8 RGB images in, probabilities out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from classical.export import export_model
from embedder import parity_images

MODEL_NAME = "model"  # the logged model's name inside its run
EXAMPLE_IMAGES = 1  # images in the input example (one image of S x S x 3 bytes, as JSON)


def model_file(row: dict[str, Any], run: Path) -> Path:
    """The row's model file: its recorded path, or the file of that name in the run folder (a moved run)."""
    recorded = Path(row["model_path"])
    return recorded if recorded.is_file() else run / recorded.name


def log_onnx_model(row: dict[str, Any], run: Path, workdir: Path) -> tuple[Any, int]:
    """Export the row's model to ONNX and log it to the active MLflow run; returns (ModelInfo, ONNX bytes).

    The logged model takes `images`, uint8 RGB [N, S, S, 3] brought to S x S by the export's resize
    policy, and returns `probabilities` float32 [N, C] and `label` int64 [N]; its metadata holds
    the export's properties (class names as a list, backbone key, image size, resize policy).
    """
    import mlflow.onnx
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    exported = export_model(model_file(row, run), workdir / f"{row['name']}.onnx")
    graph = onnx.load(exported.path)
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    metadata["class_names"] = json.loads(metadata.get("class_names", json.dumps(exported.class_names)))
    size, classes = exported.image_size, len(exported.class_names)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3), "images")]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, classes), "probabilities"),
                TensorSpec(np.dtype(np.int64), (-1,), "label"),
            ]
        ),
    )
    info = mlflow.onnx.log_model(
        graph,
        name=MODEL_NAME,
        signature=signature,
        input_example=parity_images(size, EXAMPLE_IMAGES),
        metadata=metadata,
        save_as_external_data=False,
    )
    return info, exported.bytes
