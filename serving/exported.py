"""Exported models (`classical export`, NAME.onnx) served with onnxruntime: uint8 images in, probabilities out.

The contract of an export: one graph, input `images` uint8 RGB [N, S, S, 3] at the backbone's size
(resized by the backbone's policy; preprocessing is inside the graph), output `probabilities`
[N, C], and metadata properties `class_names` (a JSON list) and `backbone_key` (`resize` too, when
recorded). An ONNX file is data (a protobuf of operators and tensors): loading it runs no code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from classical import ModelFileError

INPUT, OUTPUT = "images", "probabilities"


class ExportedModel:
    """An ONNX export loaded in onnxruntime; applied, like a fine-tuned network, to decoded images."""

    takes_pixels = True

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own InvalidProtobuf, Fail, ... on bad files
            raise ModelFileError(
                f"'{path}' is not a readable ONNX model ({str(exc).splitlines()[0]}); "
                "export it again with `classical export`."
            ) from exc
        self.path = path
        self.metadata = _metadata(path, self.session)
        self.size = _input_size(path, self.session)

    @property
    def backbone_key(self) -> str:
        return self.metadata["backbone_key"]

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    def check_backbone(self, backbone_key: str, *, size: int, resize: str) -> None:
        """Refuse an export made for another backbone (its size and resize policy are part of the key)."""
        if backbone_key != self.backbone_key:
            raise ModelFileError(
                f"model '{self.path}' was exported for {self.backbone_key}, but this server embeds with {backbone_key}; "
                "start the server with that model's backbone (--alpha/--size/--weights/...), or leave it out."
            )
        if self.size not in (None, size) or self.metadata.get("resize", resize) != resize:
            raise ModelFileError(
                f"model '{self.path}' takes {self.size}x{self.size} images resized by "
                f"'{self.metadata.get('resize')}'; this server decodes {size}x{size} by '{resize}'."
            )

    def predict_proba(self, X: np.ndarray, *, backbone_key: str) -> np.ndarray:
        """Class probabilities (n, n_classes) of uint8 images decoded for `backbone_key`."""
        if backbone_key != self.backbone_key:
            raise ModelFileError(f"model '{self.path}' was exported for {self.backbone_key}, not {backbone_key}.")
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(X, dtype=np.uint8)})[0]


def _metadata(path: Path, session: ort.InferenceSession) -> dict[str, Any]:
    """The export's metadata properties, `class_names` parsed; names the file when one is missing."""
    props = dict(session.get_modelmeta().custom_metadata_map)
    missing = sorted({"class_names", "backbone_key"} - set(props))
    if missing:
        raise ModelFileError(f"ONNX model '{path}' lacks metadata {missing}; export it with `classical export`.")
    try:
        names = json.loads(props["class_names"])
    except ValueError as exc:
        raise ModelFileError(f"ONNX model '{path}': metadata 'class_names' is not a JSON list ({exc}).") from exc
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ModelFileError(f"ONNX model '{path}': metadata 'class_names' is not a JSON list of names.")
    outputs = [output.name for output in session.get_outputs()]
    if OUTPUT not in outputs:
        raise ModelFileError(f"ONNX model '{path}' has no output '{OUTPUT}' (outputs: {', '.join(outputs)}).")
    return {**props, "class_names": names, "kind": props.get("kind", "exported")}


def _input_size(path: Path, session: ort.InferenceSession) -> int | None:
    """The side S of the input `images` [N, S, S, 3] (None when the graph leaves it open)."""
    inputs = {item.name: item for item in session.get_inputs()}
    if INPUT not in inputs:
        raise ModelFileError(f"ONNX model '{path}' has no input '{INPUT}' (inputs: {', '.join(inputs)}).")
    item = inputs[INPUT]
    if item.type != "tensor(uint8)" or len(item.shape) != 4 or item.shape[3] != 3:
        raise ModelFileError(
            f"ONNX model '{path}': input '{INPUT}' must be uint8 [N, S, S, 3]; it is {item.type} {item.shape}."
        )
    side = item.shape[1]
    return side if isinstance(side, int) else None
