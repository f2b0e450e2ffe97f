"""The MobileNetV2 backbone: its identity (the backbone key) and its Keras model.

Preprocessing belongs to the backbone. The model takes RGB 0..255 (uint8) and applies
`keras.applications.mobilenet_v2.preprocess_input` inside, exactly once; the base always
runs with `training=False`, so BatchNorm stays in inference mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.backbone.weights import ALPHAS, file_sha256, make_divisible, resolve_weights, weights_sha256
from embedder.provenance import library_versions

if TYPE_CHECKING:
    import keras

SIZES = (96, 128, 160, 192, 224)
POOLINGS = ("avg", "max")
RESIZE_POLICIES = ("crop", "squash")
PRECISION = "fp32"
PREPROCESSING = (
    "keras.applications.mobilenet_v2.preprocess_input (mode 'tf': x / 127.5 - 1) applied inside the "
    "model to RGB 0..255; base called with training=False"
)
RANDOM_WEIGHTS_SEED = 0
VERSIONED_PACKAGES = ("bottleneck-lab", "tensorflow", "keras", "numpy", "pillow", "h5py", "onnxruntime")


def _weights_label(weights: str | None) -> str:
    if weights is None:
        return "random"
    return "imagenet" if weights == "imagenet" else "file"


@dataclass(frozen=True)
class Backbone:
    """A MobileNetV2 feature extractor, named by a key that pins everything its embeddings depend on.

    Parameters
    ----------
    alpha : width multiplier, one of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.
    size : input side in pixels, one of 96, 128, 160, 192, 224.
    weights : "imagenet" (Keras' download or its KERAS_HOME cache), a weights file path, or None
        (also "none": deterministic random weights, for plumbing only).
    pooling : "avg" (default) or "max" global pooling of the last feature map.
    resize : how images are brought to size x size: "crop" resizes the shorter side then
        center-crops (ImageNet evaluation), "squash" resizes both sides ignoring the aspect ratio.
    """

    alpha: float = 1.0
    size: int = 224
    weights: str | None = "imagenet"
    pooling: str = "avg"
    resize: str = "crop"

    def __post_init__(self) -> None:
        if float(self.alpha) not in ALPHAS:
            raise ValueError(f"alpha must be one of {ALPHAS}. Received: alpha={self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}. Received: size={self.size!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}. Received: pooling={self.pooling!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}. Received: resize={self.resize!r}")
        if self.weights is not None:
            weights = str(self.weights)
            object.__setattr__(self, "weights", None if weights.lower() == "none" else weights)

    @classmethod
    def from_provenance(cls, provenance: dict[str, Any], **overrides: Any) -> Backbone:
        """The backbone that made embeddings with this provenance (a cache group's, or any record that copied it).

        The weights come back as recorded: "imagenet", the weights file used, or random ("none").
        `overrides` change fields, e.g. `size=160` for the same weights at another input size.
        """
        weights = provenance["weights"]
        if weights not in ("none", "imagenet"):
            weights = provenance.get("weights_file") or weights
        spec = {
            "alpha": provenance["alpha"],
            "size": provenance["size"],
            "weights": weights,
            "pooling": provenance["pooling"],
            "resize": provenance["resize"],
        }
        return cls(**{**spec, **overrides})

    def __getstate__(self) -> dict[str, Any]:
        """Pickle only the specification; models and hashes are rebuilt lazily."""
        return {field: getattr(self, field) for field in ("alpha", "size", "weights", "pooling", "resize")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def dim(self) -> int:
        """Length of one embedding: channels of MobileNetV2's last convolution."""
        return make_divisible(1280 * self.alpha) if self.alpha > 1.0 else 1280

    @cached_property
    def weights_path(self) -> Path | None:
        """The weights file that will be loaded (None for random weights)."""
        return resolve_weights(self.weights, alpha=self.alpha, size=self.size)

    @cached_property
    def weights_sha256(self) -> str:
        """sha256 of the weights file, or of the seeded random weights themselves."""
        if self.weights_path is None:
            return weights_sha256(self.model)
        return file_sha256(self.weights_path)

    @property
    def key(self) -> str:
        """Stable name of this embedding function, e.g. mobilenet_v2-1.0-224-imagenet-e266c19c-avg-crop-fp32."""
        return (
            f"mobilenet_v2-{self.alpha}-{self.size}-{_weights_label(self.weights)}-"
            f"{self.weights_sha256[:8]}-{self.pooling}-{self.resize}-{PRECISION}"
        )

    @cached_property
    def model(self) -> keras.Model:
        """Keras model: uint8 RGB (n, size, size, 3) in, float32 (n, dim) embeddings out."""
        return build_mobilenet_v2(
            alpha=self.alpha, size=self.size, weights_path=self.weights_path, pooling=self.pooling, include_top=False
        )

    def provenance(self) -> dict[str, Any]:
        """Everything needed to reproduce these embeddings, for the cache's attributes."""
        return {
            "backbone_key": self.key,
            "architecture": "mobilenet_v2",
            **asdict(self),
            "weights": "none" if self.weights is None else self.weights,
            "weights_file": str(self.weights_path.resolve()) if self.weights_path else "",
            "weights_sha256": self.weights_sha256,
            "precision": PRECISION,
            "dim": self.dim,
            "preprocessing": PREPROCESSING,
            **{
                name if name == "python" else f"version_{name}": value
                for name, value in library_versions(VERSIONED_PACKAGES).items()
            },
        }


def build_mobilenet_v2(
    *, alpha: float, size: int, weights_path: Path | None, pooling: str | None, include_top: bool
) -> keras.Model:
    """MobileNetV2 with preprocessing inside and the base frozen in inference mode."""
    import keras
    from keras.applications import mobilenet_v2

    from embedder.backbone.weights import load_weights_file, seed_weights

    base = mobilenet_v2.MobileNetV2(
        input_shape=(size, size, 3),
        alpha=alpha,
        include_top=include_top,
        weights=None,
        pooling=None if include_top else pooling,
    )
    if weights_path is None:
        seed_weights(base, RANDOM_WEIGHTS_SEED)
    else:
        load_weights_file(base, weights_path, alpha=alpha)
    base.trainable = False
    images = keras.Input((size, size, 3), dtype="uint8", name="images")
    scaled = mobilenet_v2.preprocess_input(keras.ops.cast(images, "float32"))
    outputs = base(scaled, training=False)
    name = "mobilenet_v2_classifier" if include_top else "mobilenet_v2_embedder"
    return keras.Model(images, outputs, name=name)


def uint8_function(model: keras.Model, size: int) -> Callable[[np.ndarray], Any]:
    """`model` in inference mode as a `tf.function` on uint8 batches (n, size, size, 3), traced once.

    The one wrapper every Keras runner uses (reference runtime, ONNX export, ImageNet top-k): a fixed
    input signature means one trace whatever the batch size, and no per-call graph growth.
    """
    import tensorflow as tf

    spec = tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")
    return tf.function(lambda images: model(images, training=False), input_signature=[spec])
