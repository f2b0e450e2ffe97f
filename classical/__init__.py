"""Embeddings -> models: stored splits, the model zoo, sweeps, reports and prediction.

Reads the caches `embedder` writes (never the other way round). Importing it does not import
TensorFlow; the Dense head and new-image prediction load it when they need it.
"""

from classical.data import LabeledEmbeddings, load_labeled
from classical.dense import DenseHead
from classical.errors import ClassicalError, DataError, ModelFileError
from classical.models import MODEL_NAMES, ZOO, load_grids
from classical.persist import SavedModel, load_model
from classical.predict import predict
from classical.splits import Split, make_split
from classical.sweep import rerender, summary, sweep

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
    "rerender",
    "summary",
    "sweep",
]
