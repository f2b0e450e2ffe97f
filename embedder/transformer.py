"""`Embedder`: the backbone as a scikit-learn transformer, so it composes with Pipelines and searches.

    make_pipeline(Embedder(size=160), LogisticRegression()).fit(paths, labels)

`transform` takes image paths, or RGB arrays in 0..255 (uint8 preferred), and returns
float32 embeddings (n, dim). It does not cache; use `extract` for large image sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from embedder.backbone import Backbone
from embedder.errors import ImageError
from embedder.inputs import as_uint8_batch, encode_files, list_source
from embedder.runtimes import Encoder, load_encoder


class Embedder(TransformerMixin, BaseEstimator):
    """MobileNetV2 bottleneck embeddings as a scikit-learn transformer.

    Parameters
    ----------
    alpha, size, weights, pooling, resize : the backbone, see `embedder.Backbone`.
    runtime : "auto", "keras", "onnx" or "openvino", see `embedder.runtimes`.
    precision : "fp32" (default), or opt-in "bf16" / "int8" (faster; embeddings of their own key).
    calibration : int8 only: a folder or list of images like the ones to embed, to calibrate on.
    batch_size : images per inference call.
    check_range : refuse float images that look already scaled to [0, 1] or [-1, 1].

    Attributes
    ----------
    backbone_ : the fitted `Backbone`.
    backbone_key_ : its key, the identity of the embeddings this transformer produces.
    n_features_out_ : embedding length.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        size: int = 224,
        weights: str | None = "imagenet",
        pooling: str = "avg",
        resize: str = "crop",
        runtime: str = "auto",
        precision: str = "fp32",
        calibration: str | None = None,
        batch_size: int = 32,
        check_range: bool = True,
    ) -> None:
        self.alpha = alpha
        self.size = size
        self.weights = weights
        self.pooling = pooling
        self.resize = resize
        self.runtime = runtime
        self.precision = precision
        self.calibration = calibration
        self.batch_size = batch_size
        self.check_range = check_range

    def fit(self, X: Any = None, y: Any = None) -> Embedder:
        """Build the backbone (the weights are pre-trained: nothing is learned from X)."""
        self.backbone_ = Backbone(
            alpha=self.alpha, size=self.size, weights=self.weights, pooling=self.pooling, resize=self.resize
        )
        self.backbone_key_ = self.backbone_.key if self.precision == "fp32" else self._encoder().key
        self.n_features_out_ = self.backbone_.dim
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Embeddings (n, dim) of image paths or of RGB arrays in 0..255."""
        check_is_fitted(self, "backbone_")
        encode = self._encoder()
        if _is_path_list(X):
            rows = list(
                encode_files(
                    [Path(p) for p in X], encode, size=self.size, resize=self.resize, batch_size=self.batch_size
                )
            )
            failed = next((row for row in rows if row.error is not None), None)
            if failed is not None:
                raise ImageError(failed.error or "", path=str(failed.path))
            outputs = [row.output for row in rows if row.output is not None]
            return np.stack(outputs) if outputs else np.empty((0, self.n_features_out_), np.float32)
        images = X if isinstance(X, np.ndarray) else [np.asarray(image) for image in X]
        if isinstance(images, list):
            images = (
                np.concatenate([self._as_uint8(image) for image in images])
                if images
                else np.empty((0, self.size, self.size, 3), np.uint8)
            )
        else:
            images = self._as_uint8(images)
        parts = [encode(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return np.concatenate(parts) if parts else np.empty((0, self.n_features_out_), np.float32)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "backbone_")
        return np.array([f"embedding{i}" for i in range(self.n_features_out_)], dtype=object)

    def _as_uint8(self, images: np.ndarray) -> np.ndarray:
        return as_uint8_batch(images, size=self.size, resize=self.resize, check_range=self.check_range)

    def _encoder(self) -> Encoder:
        if getattr(self, "encoder_", None) is None:
            calibration = None
            if self.calibration is not None:
                calibration = [Path(item.path) for item in list_source(self.calibration, labels="none").items]
            self.encoder_ = load_encoder(
                self.backbone_, self.runtime, precision=self.precision, calibration=calibration
            )
        return self.encoder_

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the loaded runtime; it is rebuilt on the next transform."""
        state = super().__getstate__()
        state.pop("encoder_", None)
        return state


def _is_path_list(X: Any) -> bool:
    if isinstance(X, np.ndarray):
        return X.dtype.kind in "UO" and X.ndim == 1
    if isinstance(X, (list, tuple)) and X:
        return all(isinstance(x, (str, bytes)) or hasattr(x, "__fspath__") for x in X)
    return False
