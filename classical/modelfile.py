"""Model files, a contract like the cache: a fitted model with what it may be applied to.

A model file is a joblib dump of {"format": 1, "model", "metadata"}: `model` has
`predict_proba(X)` on embeddings; `metadata` records the backbone key and the provenance of the
embeddings it was fitted on, the class names, the embedding dimension, the split id, the test
metrics and library versions. The sweep writes them; prediction and the HTTP service load them.
Applying a model to embeddings of another backbone is an error naming both keys. joblib files are
pickles: load only files you trust.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from classical.errors import ModelFileError
from embedder import Backbone, atomic_path, library_versions, utc_now

logger = logging.getLogger(__name__)

MODEL_FORMAT = 1
# provenance of the embeddings a model is fitted on: enough to embed new images the same way
EMBEDDING_FIELDS = ("alpha", "size", "weights", "pooling", "resize", "weights_file", "weights_sha256",
                    "precision", "runtime", "calibration_digest", "calibration_files")


VERSIONED_PACKAGES = ("bottleneck-lab", "scikit-learn", "numpy", "joblib")


@dataclass
class SavedModel:
    """A loaded model file: the estimator and its metadata."""

    model: Any
    metadata: dict[str, Any]
    path: Path

    @property
    def backbone_key(self) -> str:
        return self.metadata["backbone_key"]

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def backbone(self) -> Backbone:
        """The backbone whose embeddings the model was fitted on, rebuilt from its recorded provenance."""
        return Backbone.from_provenance(self.metadata["backbone"])

    def check_backbone(self, backbone_key: str) -> None:
        """Refuse embeddings of another backbone than the one the model was fitted on."""
        if backbone_key != self.backbone_key:
            raise ModelFileError(
                f"model '{self.path}' was fitted on embeddings of {self.backbone_key}; these embeddings come from "
                f"{backbone_key}. Embed with the model's backbone (`classical predict` does), or fit a model on these."
            )

    def predict_proba(self, X: np.ndarray, *, backbone_key: str) -> np.ndarray:
        """Class probabilities (n, n_classes) of embeddings made by `backbone_key`."""
        self.check_backbone(backbone_key)
        expected = self.metadata["dim"]
        if X.ndim != 2 or X.shape[1] != expected:
            raise ModelFileError(f"model '{self.path}' expects embeddings of dimension {expected}; got shape {X.shape}.")
        return self.model.predict_proba(X)


def save_model(path: Path, model: Any, metadata: dict[str, Any]) -> int:
    """Write a model file atomically; returns its size in bytes."""
    record = {
        "format": MODEL_FORMAT,
        "model": model,
        "metadata": {**metadata, "versions": library_versions(VERSIONED_PACKAGES), "created": utc_now()},
    }
    with atomic_path(path) as tmp:
        joblib.dump(record, tmp)
    return path.stat().st_size


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A model file path, or runs/NAME/MODEL meaning runs/NAME/MODEL.joblib."""
    path = Path(path)
    if path.suffix != ".joblib" and path.with_suffix(".joblib").is_file():
        return path.with_suffix(".joblib")
    return path


def load_model(path: str | os.PathLike) -> SavedModel:
    """Load a model file and check that it is one of ours, complete, and fit for these libraries."""
    path = resolve_model_path(path)
    if not path.is_file():
        raise ModelFileError(f"model file '{path}' does not exist; models of a run are runs/NAME/<model>.joblib.")
    try:
        record = joblib.load(path)
    except Exception as exc:  # unpickling fails in many ways
        raise ModelFileError(f"'{path}' is not a readable model file ({exc}).") from exc
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT or "metadata" not in record:
        raise ModelFileError(f"'{path}' is not a bottleneck-lab model file of format {MODEL_FORMAT}.")
    metadata = record["metadata"]
    missing = {"backbone_key", "backbone", "class_names", "dim"} - set(metadata)
    if missing:
        raise ModelFileError(f"model file '{path}' lacks metadata {sorted(missing)}; re-run the sweep that made it.")
    saved_with = metadata.get("versions", {}).get("scikit-learn")
    if saved_with and saved_with != version("scikit-learn"):
        warnings.warn(
            f"model '{path}' was saved with scikit-learn {saved_with}, this is {version('scikit-learn')}; "
            "predictions may differ or fail.",
            UserWarning,
            stacklevel=2,
        )
    return SavedModel(model=record["model"], metadata=metadata, path=path)
