"""Model files, a contract like the cache: a fitted model with what it may be applied to.

A model file (NAME.model) is one zip holding the model in a format that runs no code when read
(skops for scikit-learn estimators, Keras' native format in safe mode for networks), its metadata
and the sha256 of each part (see `classical.modelfiles.format`). `model` has `predict_proba(X)`: on
embeddings, or on uint8 pixels for a fine-tuned network (metadata "input": "pixels"); `metadata`
records the backbone key and the provenance of the embeddings (or the network's input), the class
names, the embedding dimension, the split id, the test metrics and library versions. The sweep and
fine-tuning write them; prediction and the HTTP service load them. Applying a model to embeddings of
another backbone is an error naming both keys. Files of earlier releases (joblib pickles) are read
only with `trust_pickle=True` (`--trust-pickle`).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from classical.errors import ModelFileError
from classical.modelfiles.format import (
    encode_payload,
    is_archive,
    is_keras_model,
    is_pickle,
    read_archive,
    read_pickle,
    write_archive,
)
from embedder import Backbone, atomic_path, library_versions, utc_now

logger = logging.getLogger(__name__)

MODEL_FORMAT = 2  # 1: a joblib pickle of {"format", "model", "metadata"} (earlier releases)
MODEL_SUFFIX = ".model"
LEGACY_SUFFIX = ".joblib"
# provenance of the embeddings a model is fitted on: enough to embed new images the same way
EMBEDDING_FIELDS = (
    "alpha",
    "size",
    "weights",
    "pooling",
    "resize",
    "weights_file",
    "weights_sha256",
    "precision",
    "runtime",
    "calibration_digest",
    "calibration_files",
)
VERSIONED_PACKAGES = ("bottleneck-lab", "scikit-learn", "numpy", "skops")
KERAS_PACKAGES = ("bottleneck-lab", "keras", "tensorflow", "numpy")
REQUIRED = {"backbone_key", "backbone", "class_names"}


@dataclass
class SavedModel:
    """A loaded model file: the estimator (or network) and its metadata."""

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
    def takes_pixels(self) -> bool:
        """True for a network applied to uint8 images (a fine-tuned network), False for a head on embeddings."""
        return self.metadata.get("input") == "pixels"

    @property
    def backbone(self) -> Backbone:
        """The backbone of the model's embeddings (or of a network's input), rebuilt from its recorded provenance."""
        return Backbone.from_provenance(self.metadata["backbone"])

    def check_backbone(self, backbone_key: str) -> None:
        """Refuse embeddings of another backbone than the one the model was fitted on."""
        if backbone_key != self.backbone_key:
            raise ModelFileError(
                f"model '{self.path}' was fitted on embeddings of {self.backbone_key}; these embeddings come from "
                f"{backbone_key}. Embed with the model's backbone (`classical predict` does), or fit a model on these."
            )

    def predict_proba(self, X: np.ndarray, *, backbone_key: str) -> np.ndarray:
        """Class probabilities (n, n_classes) of embeddings made by `backbone_key` (of its images, for a network)."""
        self.check_backbone(backbone_key)
        if self.takes_pixels:
            side = self.metadata["backbone"]["size"]
            if X.ndim != 4 or X.shape[1:] != (side, side, 3):
                raise ModelFileError(
                    f"model '{self.path}' expects uint8 images of shape (n, {side}, {side}, 3); got shape {X.shape}."
                )
            return np.asarray(self.model.predict(X, batch_size=32, verbose=0), dtype=np.float64)
        expected = self.metadata["dim"]
        if X.ndim != 2 or X.shape[1] != expected:
            raise ModelFileError(
                f"model '{self.path}' expects embeddings of dimension {expected}; got shape {X.shape}."
            )
        return self.model.predict_proba(X)


def save_model(path: Path, model: Any, metadata: dict[str, Any]) -> int:
    """Write a model file atomically (a Keras network or a scikit-learn estimator); returns its size in bytes."""
    payload = encode_payload(model)
    packages = KERAS_PACKAGES if is_keras_model(model) else VERSIONED_PACKAGES
    record = {**metadata, "format": MODEL_FORMAT, "versions": library_versions(packages), "created": utc_now()}
    with atomic_path(path) as tmp:
        write_archive(tmp, record, payload)
    return path.stat().st_size


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A model file path, or runs/NAME/MODEL meaning runs/NAME/MODEL.model (MODEL.joblib of earlier releases)."""
    path = Path(path)
    if path.suffix not in (MODEL_SUFFIX, LEGACY_SUFFIX) and not path.is_file():
        for suffix in (MODEL_SUFFIX, LEGACY_SUFFIX):
            if path.with_suffix(suffix).is_file():
                return path.with_suffix(suffix)
    return path


def load_model(path: str | os.PathLike, *, trust_pickle: bool = False) -> SavedModel:
    """Load a model file, after checking its digests, that it is one of ours, complete, and fit for these libraries.

    Never runs code from the file; a pickle of an earlier release is read only with `trust_pickle=True`.
    """
    path = resolve_model_path(path)
    if not path.is_file():
        raise ModelFileError(
            f"model file '{path}' does not exist; models of a run are runs/NAME/<model>{MODEL_SUFFIX}."
        )
    if is_archive(path):
        metadata, model = read_archive(path)
    elif is_pickle(path):
        metadata, model = _read_legacy(path, trust_pickle)
    else:
        raise ModelFileError(
            f"'{path}' is not a bottleneck-lab model file (neither a {MODEL_SUFFIX} archive nor a "
            f"{LEGACY_SUFFIX} of an earlier release)."
        )
    required = REQUIRED if metadata.get("input") == "pixels" else REQUIRED | {"dim"}
    missing = required - set(metadata)
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
    return SavedModel(model=model, metadata=metadata, path=path)


def _read_legacy(path: Path, trust_pickle: bool) -> tuple[dict[str, Any], Any]:
    """Metadata and model of a joblib pickle written by an earlier release, only when the caller trusts it."""
    if not trust_pickle:
        raise ModelFileError(
            f"'{path}' is a pickle (a model file of an earlier release): loading it could run any code it holds. "
            f"Pass --trust-pickle (trust_pickle=True) only if you trust where it came from, or re-run the sweep to "
            f"write a safe {MODEL_SUFFIX} file."
        )
    record = read_pickle(path)
    if not isinstance(record, dict) or record.get("format") != 1 or "metadata" not in record:
        raise ModelFileError(f"'{path}' is not a bottleneck-lab model file of an earlier release (format 1).")
    logger.warning("read '%s', a pickle of an earlier release, because it is trusted (--trust-pickle)", path)
    return record["metadata"], record["model"]
