"""Cached activations of the frozen lower part of the base, so that an epoch runs only the unfrozen top.

With the lower layers frozen and BatchNorm in inference mode, the lower part of MobileNetV2 is a
fixed function of the pixels. Its output (the input of the lowest unfrozen layer group) is computed
once per image, and once per augmented view of each training image, then every epoch trains the
unfrozen blocks, the pooling and the head on those activations: the same network, the same forward
outputs, a fraction of the work per epoch.

Augmentation stays meaningful: each training image gets `views` cached versions (the image itself
and `views - 1` augmented ones, drawn once with the network's own augmentation layers), and each
epoch sees one of them at random. Validation and test images are cached unaugmented.

The activations live in the run's `activations/` folder, as `<layer>-<views>v.npy` (float32, one row
per image view, a memory map: RAM does not grow with the data set) with a `.json` of their provenance
(backbone key, layer, shape, views, seed, split): any later fine-tuning of the run with the same
backbone, layer, views and seed reuses them, whatever its other settings.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from classical.models.network import base_of
from embedder import atomic_path, utc_now

logger = logging.getLogger(__name__)

# The input of each layer group (numbered from the top, see `network.layer_group`): what the frozen part below it outputs.
BOUNDARY = {
    1: "block_15_add",
    2: "block_12_add",
    3: "block_9_add",
    4: "block_5_add",
    5: "block_2_add",
    6: "expanded_conv_project_BN",
}


def boundary_layer(groups: int) -> str:
    """The layer whose output feeds the top `groups` layer groups; the stem (group 7) has none below it."""
    if groups not in BOUNDARY:
        raise ValueError(
            f"activations can be cached below the top 1 to {max(BOUNDARY)} layer groups. Received: {groups}"
        )
    return BOUNDARY[groups]


def split_base(network: keras.Model, groups: int) -> tuple[keras.Model, keras.Model]:
    """(lower, upper) halves of the network's base at the boundary of the top `groups` groups; weights are shared."""
    base = base_of(network)
    boundary = base.get_layer(boundary_layer(groups)).output
    return keras.Model(base.input, boundary, name="lower"), keras.Model(boundary, base.output, name="upper")


def top_network(network: keras.Model, groups: int) -> keras.Model:
    """Cached activations -> the network's top: upper blocks, pooling, dropout and head, sharing its layers."""
    from classical.models.network import InferenceMode

    _, upper = split_base(network, groups)
    inputs = keras.Input(upper.input.shape[1:], name="activations")
    x = InferenceMode(upper, name="top_base")(inputs)
    x = network.get_layer("pool")(x)
    if any(layer.name == "dropout" for layer in network.layers):
        x = network.get_layer("dropout")(x)
    return keras.Model(inputs, network.get_layer("head")(x), name="finetune_top")


@dataclass
class Activations:
    """Cached lower-part activations: rows of `values`; `views[i]` lists the rows of image i (clean one first)."""

    values: np.ndarray  # (rows, h, w, c) float32 memory map
    views: list[list[int]]
    layer: str
    seconds: float  # time it took to compute them (0 when reused)


def cache_activations(
    network: keras.Model,
    pixels: np.ndarray,
    train: np.ndarray,
    *,
    groups: int,
    views: int,
    folder: Path,
    provenance: dict[str, Any],
    batch_size: int,
    seed: int,
) -> Activations:
    """Compute (or reuse) the lower part's output for every image, and `views - 1` augmented views of `train`."""
    layer = boundary_layer(groups)
    record = {
        **provenance,
        "layer": layer,
        "views": views,
        "seed": seed,
        "images": len(pixels),
        "train": [int(i) for i in np.sort(train)],
    }
    folder.mkdir(parents=True, exist_ok=True)
    meta, values_path = folder / f"{layer}-{views}v.json", folder / f"{layer}-{views}v.npy"
    lower, _ = split_base(network, groups)
    shape = tuple(int(d) for d in lower.output.shape[1:])
    augmented = np.sort(train) if views > 1 else np.empty(0, int)
    rows = len(pixels) + (views - 1) * len(augmented)
    view_rows = [[i] for i in range(len(pixels))]
    for k, i in enumerate(augmented):
        view_rows[i] += [len(pixels) + v * len(augmented) + k for v in range(views - 1)]
    if meta.is_file() and values_path.is_file():
        stored = json.loads(meta.read_text())
        if {key: value for key, value in stored.items() if key != "created"} == {**record, "shape": list(shape)}:
            return Activations(np.load(values_path, mmap_mode="r"), view_rows, layer, 0.0)
    started = time.perf_counter()
    with atomic_path(values_path) as tmp:
        values = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, *shape))
        lower_part = _lower_function(network, lower)
        augment = _augment_function(network, seed)
        for start in range(0, len(pixels), batch_size):
            end = min(start + batch_size, len(pixels))
            values[start:end] = lower_part(np.asarray(pixels[start:end]))
        for v in range(views - 1):
            offset = len(pixels) + v * len(augmented)
            for start in range(0, len(augmented), batch_size):
                chosen = augmented[start : start + batch_size]
                values[offset + start : offset + start + len(chosen)] = lower_part(augment(np.asarray(pixels[chosen])))
        values.flush()
        del values
    seconds = time.perf_counter() - started
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps({**record, "shape": list(shape), "created": utc_now()}, indent=1))
    logger.info("cached %d activations of %s %s in %.1f s", rows, layer, shape, seconds)
    return Activations(np.load(values_path, mmap_mode="r"), view_rows, layer, seconds)


def _lower_function(network: keras.Model, lower: keras.Model) -> Any:
    """uint8 or float pixels (0..255) -> the lower part's output, preprocessing included, in inference mode."""
    import tensorflow as tf
    from keras.applications import mobilenet_v2

    @tf.function(reduce_retracing=True)
    def run(images: Any) -> Any:
        return lower(mobilenet_v2.preprocess_input(tf.cast(images, tf.float32)), training=False)

    return lambda images: np.asarray(run(images))


def _augment_function(network: keras.Model, seed: int) -> Any:
    """The network's own augmentation layers, in training mode, seeded: one augmented copy of a batch."""
    layer = network.get_layer("augmentation")
    keras.utils.set_random_seed(seed + 1)
    return lambda images: np.asarray(layer(images.astype(np.float32), training=True))


def activation_dataset(
    activations: Activations, labels: np.ndarray, indices: np.ndarray, batch_size: int, *, shuffle: bool, seed: int
) -> Any:
    """Batches of (activations, labels) of `indices`; when shuffling, each epoch takes one random view per image."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    shape = activations.values.shape[1:]

    def batches() -> Any:
        order = rng.permutation(indices) if shuffle else indices
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            rows = [
                activations.views[i][rng.integers(len(activations.views[i]))] if shuffle else activations.views[i][0]
                for i in chosen
            ]
            sorted_rows = np.argsort(rows)
            values = activations.values[np.asarray(rows)[sorted_rows]]
            yield values, labels[chosen][sorted_rows]

    signature = (tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(math.ceil(len(indices) / batch_size))).prefetch(2)
