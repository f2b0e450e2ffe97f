"""Embeddings -> models: stored splits, the model zoo, sweeps, reports and prediction.

Reads the caches `embedder` writes (never the other way round). Importing it does not import
TensorFlow; the Dense head, fine-tuning and new-image prediction load it when they need it
(`finetune` is imported on first access for that reason).
"""

from typing import Any

from classical.data import LabeledEmbeddings, load_labeled
from classical.dense import DenseHead
from classical.errors import ClassicalError, DataError
from classical.models import MODEL_NAMES, ZOO, load_grids
from classical.predict import predict
from classical.splits import Split, make_split
from classical.sweep import rerender, summary, sweep
from embedder.errors import ModelFileError
from embedder.modelfile import SavedModel, load_model

__all__ = [
    "MODEL_NAMES",
    "ZOO",
    "ClassicalError",
    "DataError",
    "DenseHead",
    "LabeledEmbeddings",
    "ModelFileError",
    "SavedModel",
    "Split",
    "load_grids",
    "load_labeled",
    "load_model",
    "make_split",
    "predict",
    "finetune",
    "rerender",
    "summary",
    "sweep",
]


def __getattr__(name: str) -> Any:
    if name == "finetune":  # imports Keras: only when asked for
        from classical.finetune import finetune

        globals()["finetune"] = finetune  # the function, not the submodule of the same name
        return finetune
    raise AttributeError(f"module 'classical' has no attribute {name!r}")
