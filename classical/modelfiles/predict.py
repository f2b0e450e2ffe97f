"""Predicting new images with a saved model, embedded by exactly the backbone it was fitted on."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from classical.errors import ModelFileError
from classical.modelfiles.saved import SavedModel, load_model
from embedder import Backbone, Encoder, encode_files, expand_inputs, load_encoder


def model_encoder(saved: SavedModel, runtime: str = "auto") -> tuple[Backbone, Encoder]:
    """The backbone and runtime that produce exactly the embeddings the model was fitted on (same key)."""
    spec, backbone = saved.metadata["backbone"], saved.backbone
    precision = spec.get("precision", "fp32")
    if precision == "fp32":
        encoder = load_encoder(backbone, runtime) if backbone.key == saved.backbone_key else None
    else:  # reduced precision: its own runtime and calibration, named in its key
        encoder = load_encoder(
            backbone,
            spec["runtime"],
            precision=precision,
            calibration=[Path(f) for f in json.loads(spec.get("calibration_files", "[]"))],
            calibration_digest=spec.get("calibration_digest"),
        )
    key = encoder.key if encoder is not None else backbone.key
    if encoder is None or key != saved.backbone_key:
        raise ModelFileError(
            f"model '{saved.path}' was fitted on embeddings of {saved.backbone_key}, but its backbone now resolves to "
            f"{key} (the weights file changed?); restore the weights with sha256 {spec.get('weights_sha256', '?')}."
        )
    return backbone, encoder


def predict(
    model: str | os.PathLike | SavedModel,
    inputs: Iterable[str | os.PathLike],
    *,
    runtime: str = "auto",
    batch_size: int = 32,
    trust_pickle: bool = False,
) -> list[dict[str, Any]]:
    """Class and probabilities for images and folders of images, in input order.

    Each result is {"path", "label", "prob", "probs": {class: p}}, or {"path", "error"} for an
    image that cannot be read. `trust_pickle` reads a model file of an earlier release (a pickle).
    """
    saved = model if isinstance(model, SavedModel) else load_model(model, trust_pickle=trust_pickle)
    if saved.takes_pixels:  # a fine-tuned network: the images at its input size, no separate backbone
        backbone, key = saved.backbone, saved.backbone_key
        encode: Callable[[np.ndarray], np.ndarray] = np.asarray  # the decoded pixels themselves go to the network
    else:
        backbone, encode = model_encoder(saved, runtime)
        key = encode.key
    rows = list(
        encode_files(expand_inputs(inputs), encode, size=backbone.size, resize=backbone.resize, batch_size=batch_size)
    )
    embedded = [row for row in rows if row.error is None]
    outputs = [row.output for row in embedded if row.output is not None]
    probs: Any = saved.predict_proba(np.stack(outputs), backbone_key=key) if embedded else []
    row_probs = iter(probs)
    names = saved.class_names
    results: list[dict[str, Any]] = []
    for row in rows:
        if row.error is not None:
            results.append({"path": str(row.path), "error": row.error})
            continue
        p = next(row_probs)
        best = int(p.argmax())
        results.append(
            {
                "path": str(row.path),
                "label": names[best],
                "prob": float(p[best]),
                "probs": {name: float(value) for name, value in zip(names, p)},
            }
        )
    return results
