"""Model files and prediction: a fitted model with its backbone key, saved safely, applied to new images.

`saved` is the model file (SavedModel, load_model), `format` its bytes (a zip, skops or Keras safe
mode, a sha256 digest), `predict` runs new images through the model's own backbone.
"""

from classical.modelfiles.predict import predict
from classical.modelfiles.saved import SavedModel, load_model

__all__ = ["SavedModel", "load_model", "predict"]
