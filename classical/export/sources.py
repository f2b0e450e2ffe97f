"""What an export starts from: a sweep's model file or a fine-tuned network, with its classes and input policy.

Model files (`*.joblib`) are read through `classical.modelfile.load_model`; a classical head is the
scikit-learn pipeline on embeddings, the Dense head a `DenseHead`. A fine-tuned network
(`finetune-<variant>.keras`) is read with Keras in safe mode; its class names and input size come
from the row of its run's `report.json`, the backbone (weights, resize policy) from the run's cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from classical.errors import ModelFileError
from classical.modelfile import SavedModel, load_model, resolve_model_path
from classical.neural import DenseHead
from embedder import Backbone, open_cache

if TYPE_CHECKING:
    import keras

KINDS = ("classical", "dense", "finetune")


@dataclass
class Exportable:
    """A model to export: its kind, classes, the backbone whose input it takes, and how it predicts."""

    name: str
    kind: str  # one of KINDS
    path: Path
    class_names: list[str]
    backbone: Backbone  # input side: size and resize policy; its key names the embeddings
    backbone_key: str
    saved: SavedModel | None = None  # model files (classical and Dense heads)
    finetuned: Any = None  # the fine-tuned Keras network

    @property
    def neural(self) -> bool:
        return self.kind != "classical"

    @cached_property
    def sha256(self) -> str:
        """Digest of the file the export was made from, recorded in the export's metadata."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def head(self) -> Any:
        """A classical head: the fitted scikit-learn pipeline without its 'passthrough' steps."""
        from sklearn.pipeline import Pipeline

        model = self.saved.model
        if not isinstance(model, Pipeline):
            return model
        return Pipeline([(name, step) for name, step in model.steps if step not in (None, "passthrough")])

    def network(self) -> keras.Model:
        """A neural model as one Keras network from uint8 pixels to probabilities."""
        if self.kind == "finetune":
            return self.finetuned
        import keras

        return keras.Sequential([self.backbone.model, self.saved.model.to_keras()], name="dense_network")

    def reference(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities of decoded pixels as `classical predict` computes them (the network itself if fine-tuned)."""
        if self.kind == "finetune":
            return np.asarray(self.finetuned(pixels, training=False))
        from classical.predict import model_encoder

        _, encoder = model_encoder(self.saved)
        return self.saved.predict_proba(np.asarray(encoder(pixels)), backbone_key=encoder.key)


def load_exportable(path: str | os.PathLike) -> Exportable:
    """A model file (runs/NAME/MODEL[.joblib]) or a fine-tuned network (runs/NAME/finetune-X.keras), ready to export."""
    path = Path(path)
    if path.suffix == ".keras" or (path.suffix != ".joblib" and path.with_suffix(".keras").is_file()
                                   and not resolve_model_path(path).is_file()):
        return _finetuned(path.with_suffix(".keras"))
    saved = load_model(path)
    kind = "dense" if isinstance(saved.model, DenseHead) else "classical"
    return Exportable(name=saved.path.stem, kind=kind, path=saved.path, class_names=saved.class_names,
                      backbone=saved.backbone, backbone_key=saved.backbone_key, saved=saved)


def _finetuned(path: Path) -> Exportable:
    """A fine-tuned network with the class names, input size and backbone its run recorded."""
    if not path.is_file():
        raise ModelFileError(f"fine-tuned network '{path}' does not exist; `classical finetune` writes "
                             "runs/NAME/finetune-<variant>.keras.")
    report_path = path.parent / "report.json"
    if not report_path.is_file():
        raise ModelFileError(f"fine-tuned network '{path}' has no report.json beside it (its class names and input "
                             "size are there); export it from the run folder `classical finetune` wrote.")
    report = json.loads(report_path.read_text())
    row = next((row for row in report.get("models", []) if row.get("name") == path.stem), None)
    if row is None:
        raise ModelFileError(f"'{report_path}' has no row '{path.stem}'; re-run `classical finetune` on this run.")
    backbone = _run_backbone(report, row)
    network = _load_network(path)
    return Exportable(name=path.stem, kind="finetune", path=path, class_names=list(report["class_names"]),
                      backbone=backbone, backbone_key=backbone.key, finetuned=network)


def _run_backbone(report: dict[str, Any], row: dict[str, Any]) -> Backbone:
    """The backbone a fine-tuning started from: the run cache's weights and resize policy at the row's input size."""
    size = int(row.get("input_size") or row["params"]["size"])
    cache = Path(report.get("cache", ""))
    if cache.suffix == ".h5" and cache.is_file():
        with open_cache(cache) as opened:
            provenance = opened.backbone(report["backbone"]).provenance
        return Backbone.from_provenance(provenance, size=size, pooling="avg")
    return Backbone(alpha=row["params"].get("alpha", 1.0), size=size, weights="imagenet")


def _load_network(path: Path) -> keras.Model:
    """The Keras network, loaded in safe mode (no code from the file runs)."""
    import keras

    import classical.neural.network  # noqa: F401  (registers the InferenceMode layer the network uses)

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # a damaged or foreign file fails in many ways
        raise ModelFileError(f"'{path}' is not a readable fine-tuned network ({exc}).") from exc
