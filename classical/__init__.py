"""Embeddings -> models: stored splits, the model zoo, sweeps, reports, model files and prediction.

Reads the caches `embedder` writes, through embedder's public names only. Importing it imports
neither TensorFlow nor matplotlib: the Dense head trains with Keras on `fit`, plots are drawn when a
report is written, and `finetune` is imported on first access.
"""

from typing import Any

from classical.audit import audit
from classical.data import LabeledEmbeddings, Split, load_labeled, make_split
from classical.errors import ClassicalError, DataError, ModelFileError
from classical.experiments import rerender, summary, sweep
from classical.modelfiles import SavedModel, load_model, predict
from classical.models import MODEL_NAMES, ZOO, DenseHead, load_grids

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
        from classical.finetuning.workflow import finetune

        globals()["finetune"] = finetune
        return finetune
    raise AttributeError(f"module 'classical' has no attribute {name!r}")
