"""The fine-tuning network and its mechanics: layer groups, (un)freezing, discriminative rates, schedules.

The network is the backbone's own recipe: uint8 RGB 0..255 in, augmentation (on 0..255, active
only in training), `mobilenet_v2.preprocess_input` exactly once, the MobileNetV2 base in inference
mode, global average pooling, dropout, and a Dense softmax head.

Inference mode needs care in Keras 3: a functional model passes its own `training` flag to every
layer that takes one, overriding a `base(x, training=False)` written when the graph was built, so
BatchNorm would update its statistics during `fit`. The base is therefore wrapped in
`InferenceMode`, a layer without a `training` argument that always calls it with `training=False`.

Layer groups follow MobileNetV2's stages, numbered from the top: group 1 is block 16 with the
last 1x1 convolution (Conv_1), group 2 blocks 13-15, group 3 blocks 10-12, group 4 blocks 6-9,
group 5 blocks 3-5, group 6 blocks 1-2, group 7 the stem (Conv1 and the first block).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import keras
import numpy as np
from keras.applications import mobilenet_v2

from embedder import Backbone, build_mobilenet_v2

GROUP_OF_BLOCK = {
    **dict.fromkeys(range(16, 17), 1),
    **dict.fromkeys(range(13, 16), 2),
    **dict.fromkeys(range(10, 13), 3),
    **dict.fromkeys(range(6, 10), 4),
    **dict.fromkeys(range(3, 6), 5),
    **dict.fromkeys(range(1, 3), 6),
}
N_GROUPS = 7
HEAD_LEARNING_RATE_FLOOR = 1e-4  # below: too low for training a new head
FINE_TUNE_LEARNING_RATE_CEILING = 1e-4  # above: head-training scale, too high for unfrozen layers


def layer_group(name: str) -> int:
    """Group of a base layer, 1 (top) .. 7 (stem); 0 for layers outside the base's blocks (input)."""
    match = re.match(r"block_(\d+)_", name)
    if match:
        return GROUP_OF_BLOCK[int(match.group(1))]
    if name.startswith(("Conv_1", "out_relu")):
        return 1
    if name.startswith(("Conv1", "bn_Conv1", "expanded_conv")):
        return N_GROUPS
    return 0


@keras.saving.register_keras_serializable(package="bottleneck_lab")
class InferenceMode(keras.layers.Layer):
    """Calls the wrapped model with training=False whatever the enclosing model's mode.

    Its `call` has no `training` argument, so Keras cannot pass one down: BatchNorm keeps its
    moving statistics while the wrapped layers' weights (kernels, gamma, beta) still train.
    """

    def __init__(self, model: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model

    def call(self, inputs: Any) -> Any:
        return self.model(inputs, training=False)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.model.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> InferenceMode:
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def build_network(backbone: Backbone, n_classes: int, *, augment: bool = True, dropout: float = 0.2) -> keras.Model:
    """The fine-tuning network on the backbone's weights, base frozen (call `set_trainable` to unfreeze)."""
    loaded = build_mobilenet_v2(
        alpha=backbone.alpha, size=backbone.size, weights_path=backbone.weights_path, pooling=None, include_top=False
    )
    base = next(layer for layer in loaded.layers if layer.name.startswith("mobilenetv2"))
    base.trainable = False
    images = keras.Input((backbone.size, backbone.size, 3), dtype="uint8", name="images")
    x = keras.ops.cast(images, "float32")
    if augment:  # on raw 0..255 pixels, before preprocessing; inactive at inference
        x = keras.Sequential(
            [
                keras.layers.RandomFlip("horizontal"),
                keras.layers.RandomRotation(0.1, fill_mode="reflect"),
                keras.layers.RandomZoom(0.1, fill_mode="reflect"),
                keras.layers.RandomContrast(0.1, value_range=(0, 255)),
            ],
            name="augmentation",
        )(x)
    x = mobilenet_v2.preprocess_input(x)
    x = InferenceMode(base, name="base")(x)  # BatchNorm in inference mode, frozen or not
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(x)
    return keras.Model(images, outputs, name="finetune")


def base_of(network: keras.Model) -> keras.Model:
    """The MobileNetV2 base inside the network."""
    return network.get_layer("base").model


def set_trainable(network: keras.Model, *, groups: int = 0, layers: int | None = None) -> None:
    """Freeze the base, then unfreeze its top `groups` layer groups, or its top `layers` layers.

    The head is always trainable. Recompile afterwards: Keras only sees the change then.
    """
    base = base_of(network)
    base.trainable = True
    for index, layer in enumerate(base.layers):
        if layers is not None:
            layer.trainable = index >= len(base.layers) - layers
        else:
            layer.trainable = 0 < layer_group(layer.name) <= groups
    if (layers == 0) or (layers is None and groups == 0):
        base.trainable = False


def parameter_counts(network: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts, as `model.summary()` shows them."""
    trainable = sum(int(np.prod(v.shape)) for v in network.trainable_weights)
    non_trainable = sum(int(np.prod(v.shape)) for v in network.non_trainable_weights)
    return trainable, non_trainable


def learning_rate_multipliers(network: keras.Model, decay: float) -> dict[str, float]:
    """Per-variable multipliers: 1 for the head, decay**g for a variable of base layer group g."""
    base = base_of(network)
    multipliers = {}
    for layer in base.layers:
        group = layer_group(layer.name)
        for variable in layer.weights:
            multipliers[variable.path] = decay**group if group else 1.0
    return multipliers


def discriminative_adam(learning_rate: Any, multipliers: dict[str, float]) -> keras.optimizers.Optimizer:
    """Adam whose step for each variable uses learning_rate x that variable's multiplier.

    Adam is invariant to the scale of gradients, so scaling gradients would not do it: the
    multiplier is applied to the learning rate inside Adam's own update step.
    """

    class DiscriminativeAdam(keras.optimizers.Adam):
        def build(self, variables: list) -> None:
            super().build(variables)
            self.multipliers = [multipliers.get(variable.path, 1.0) for variable in variables]

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            scale = self.multipliers[self._get_variable_index(variable)]
            super().update_step(gradient, variable, keras.ops.multiply(learning_rate, scale))

    return DiscriminativeAdam(learning_rate=learning_rate)


def learning_rate_schedule(learning_rate: float, schedule: str, *, steps: int, warmup_steps: int) -> Any:
    """The optimizer's learning rate: constant, plateau (a variable ReduceLROnPlateau lowers) or cosine with warm-up."""
    if schedule in ("constant", "plateau"):
        return learning_rate
    if schedule == "cosine":
        warmup = min(warmup_steps, max(steps - 1, 0))
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 10 if warmup else learning_rate,
            decay_steps=max(steps - warmup, 1),
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
            alpha=0.01,
        )
    raise ValueError(f"schedule must be 'constant', 'plateau' or 'cosine'. Received: schedule={schedule!r}")


def check_learning_rate(learning_rate: float, *, unfrozen: bool) -> None:
    """Warn about the two classic mistakes: a tiny rate for a new head, a head-scale rate for unfrozen layers."""
    if unfrozen and learning_rate > FINE_TUNE_LEARNING_RATE_CEILING:
        warnings.warn(
            f"fine-tuning learning rate {learning_rate:g} is at head-training scale with base layers unfrozen; "
            "it can wreck the pre-trained features: use about 1e-5.",
            UserWarning,
            stacklevel=3,
        )
    if not unfrozen and learning_rate < HEAD_LEARNING_RATE_FLOOR:
        warnings.warn(
            f"head-training learning rate {learning_rate:g} is tiny for a new head on frozen features; use about 1e-3.",
            UserWarning,
            stacklevel=3,
        )


def predict_proba(network: keras.Model, pixels: np.ndarray, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities of the images `rows` of `pixels`, in inference mode, a batch at a time (memory maps stay on disk)."""
    return np.concatenate(
        [np.asarray(network(pixels[rows[i : i + batch_size]], training=False)) for i in range(0, len(rows), batch_size)]
    )
