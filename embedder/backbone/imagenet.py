"""Off-the-shelf recipe: ImageNet top-k predictions of the full MobileNetV2, offline-capable.

Class names come from a file the user gives (`labels=` / $EMBEDDER_IMAGENET_LABELS): a text
file with 1000 names in Keras index order (or 1001 with a leading "background" line, as
TF-slim label files have), or Keras' `imagenet_class_index.json`. Without one, Keras' index is
used from its cache (KERAS_HOME/models) or downloaded once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedder.backbone.model import build_mobilenet_v2, uint8_function
from embedder.backbone.weights import keras_cache_candidates, resolve_weights
from embedder.errors import EmbedderError
from embedder.inputs import DEFAULT_MAX_PIXELS, encode_files, expand_inputs

CLASS_INDEX_URL = "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"
CLASS_INDEX_FILE = "imagenet_class_index.json"


@dataclass
class Prediction:
    """Top-k ImageNet classes of one image, or the reason it could not be read."""

    path: str
    top: list[dict[str, Any]] = field(default_factory=list)  # {"index", "name", "prob"}
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "top": self.top} if self.error is None else {"path": self.path, "error": self.error}


def load_class_names(labels: str | os.PathLike | None = None) -> list[str]:
    """The 1000 ImageNet class names in Keras index order."""
    labels = labels or os.environ.get("EMBEDDER_IMAGENET_LABELS")
    path = Path(labels) if labels else _keras_class_index()
    if not path.is_file():
        raise EmbedderError(
            f"ImageNet labels file '{path}' does not exist; pass a 1000/1001-line text file or Keras' {CLASS_INDEX_FILE}."
        )
    if path.suffix.lower() == ".json":
        index = json.loads(path.read_text())
        names = [index[str(i)][1] for i in range(len(index))]
    else:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) == 1001:
            names = names[1:]  # TF-slim files start with "background"
    if len(names) != 1000:
        raise EmbedderError(
            f"ImageNet labels file '{path}' has {len(names)} names; expected 1000 (or 1001 with 'background' first)."
        )
    return names


def _keras_class_index() -> Path:
    for candidate in keras_cache_candidates(CLASS_INDEX_FILE):
        if candidate.is_file():
            return candidate
    import keras

    try:
        return Path(keras.utils.get_file(CLASS_INDEX_FILE, CLASS_INDEX_URL, cache_subdir="models"))
    except Exception as exc:  # network errors come in many types
        raise EmbedderError(
            f"ImageNet class names are not available offline ({exc}); pass --labels PATH (a 1000- or 1001-line "
            f"text file of class names, or Keras' {CLASS_INDEX_FILE}) or set EMBEDDER_IMAGENET_LABELS."
        ) from exc


def build_classifier(
    *, alpha: float = 1.0, size: int = 224, weights: str | None = "imagenet"
) -> Callable[[np.ndarray], np.ndarray]:
    """The full MobileNetV2 (1000-class top): uint8 RGB batch in, class probabilities out."""
    model = build_mobilenet_v2(
        alpha=alpha,
        size=size,
        weights_path=resolve_weights(weights, alpha=alpha, size=size, include_top=True),
        pooling=None,
        include_top=True,
    )
    function = uint8_function(model, size)
    return lambda images: np.asarray(function(images))


def top_classes(probs: np.ndarray, names: list[str], k: int) -> list[dict[str, Any]]:
    """The k most probable classes of one probability row: [{"index", "name", "prob"}, ...]."""
    best = np.argsort(probs)[::-1][:k]
    return [{"index": int(i), "name": names[i], "prob": float(probs[i])} for i in best]


def predict_imagenet(
    inputs: Iterable[str | os.PathLike],
    *,
    top: int = 5,
    alpha: float = 1.0,
    size: int = 224,
    weights: str | None = "imagenet",
    resize: str = "crop",
    labels: str | os.PathLike | None = None,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Prediction]:
    """ImageNet top-`top` classes for images and folders of images, in input order."""
    if not 1 <= top <= 1000:
        raise ValueError(f"top must be between 1 and 1000. Received: top={top}")
    names = load_class_names(labels)
    paths = expand_inputs(inputs)
    classify = build_classifier(alpha=alpha, size=size, weights=weights)
    predictions = []
    for row in encode_files(paths, classify, size=size, resize=resize, batch_size=batch_size, max_pixels=max_pixels):
        prediction = Prediction(path=str(row.path), error=row.error)
        if row.output is not None:
            prediction.top = top_classes(row.output, names, top)
        predictions.append(prediction)
    return predictions
