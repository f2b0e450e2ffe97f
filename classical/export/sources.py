"""What an export starts from: a model file of the sweep or of fine-tuning, with its classes and input policy.

Every model file is read through `classical.modelfiles.saved.load_model` (no code from the file runs): a
classical head is the scikit-learn pipeline on embeddings, the Dense head a `DenseHead`, a fine-tuned
network a Keras model on uint8 pixels whose backbone (size, resize policy) the file records.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from classical.modelfiles.saved import SavedModel, load_model
from classical.models.dense import DenseHead
from embedder import Backbone

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
    saved: SavedModel
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
        from classical.modelfiles.predict import model_encoder

        _, encoder = model_encoder(self.saved)
        return self.saved.predict_proba(np.asarray(encoder(pixels)), backbone_key=encoder.key)


def load_exportable(path: str | os.PathLike, *, trust_pickle: bool = False) -> Exportable:
    """A model file (runs/NAME/MODEL[.model]) of any kind, ready to export."""
    saved = load_model(path, trust_pickle=trust_pickle)
    if saved.takes_pixels:
        return Exportable(
            name=saved.path.stem,
            kind="finetune",
            path=saved.path,
            class_names=saved.class_names,
            backbone=saved.backbone,
            backbone_key=saved.backbone_key,
            saved=saved,
            finetuned=saved.model,
        )
    kind = "dense" if isinstance(saved.model, DenseHead) else "classical"
    return Exportable(
        name=saved.path.stem,
        kind=kind,
        path=saved.path,
        class_names=saved.class_names,
        backbone=saved.backbone,
        backbone_key=saved.backbone_key,
        saved=saved,
    )
