"""Embeddings -> models: stored splits, the model zoo, sweeps, reports, model files and prediction.

Reads the caches `embedder` writes, through embedder's public names only. Importing it imports
neither TensorFlow nor matplotlib: the Dense head trains with Keras on `fit`, plots are drawn when a
report is written, and `finetune` is imported on first access.
"""

from typing import Any

from classical.audit import audit
from classical.data import LabeledEmbeddings, load_labeled
from classical.errors import ClassicalError, DataError, ModelFileError
from classical.modelfile import SavedModel, load_model
from classical.neural import DenseHead
from classical.predict import predict
from classical.splits import Split, make_split
from classical.sweep import rerender, summary, sweep
from classical.zoo import MODEL_NAMES, ZOO, load_grids

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
    "audit",
    "finetune",
    "load_grids",
    "load_labeled",
    "load_model",
    "make_split",
    "predict",
    "rerender",
    "summary",
    "sweep",
]


def __getattr__(name: str) -> Any:
    if name == "finetune":  # imports Keras: only when asked for
        from classical.neural.finetune import finetune

        globals()["finetune"] = finetune
        return finetune
    raise AttributeError(f"module 'classical' has no attribute {name!r}")
