"""Backbone identity, preprocessing inside the model, inference-mode BatchNorm, weights loading."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from embedder import Backbone, WeightsError
from embedder.backbone.weights import file_sha256, resolve_weights

KEY = re.compile(r"^mobilenet_v2-1\.0-96-random-[0-9a-f]{8}-avg-crop-fp32$")


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return Backbone(size=96, weights=None)


def test_key_names_every_part_and_is_stable(tiny: Backbone) -> None:
    assert KEY.match(tiny.key)
    assert Backbone(size=96, weights=None).key == tiny.key  # seeded random weights: same key every run
    assert tiny.key.split("-")[4] == tiny.weights_sha256[:8]


@pytest.mark.parametrize(
    ("change", "part"),
    [({"pooling": "max"}, "-max-"), ({"resize": "squash"}, "-squash-"), ({"size": 128}, "-128-")],
)
def test_key_changes_with_what_changes_embeddings(change: dict, part: str) -> None:
    assert part in Backbone(**{"size": 96, "weights": None, **change}).key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.6}, r"alpha must be one of .* Received: alpha=0.6"),
        ({"size": 100}, r"Received: size=100"),
        ({"pooling": "sum"}, r"Received: pooling='sum'"),
        ({"resize": "pad"}, r"Received: resize='pad'"),
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backbone(**kwargs)


@pytest.mark.parametrize(("alpha", "dim"), [(0.35, 1280), (1.0, 1280), (1.3, 1664), (1.4, 1792)])
def test_embedding_dimension_follows_alpha(alpha: float, dim: int) -> None:
    backbone = Backbone(alpha=alpha, size=96, weights=None)
    assert backbone.dim == dim
    assert backbone.model.output_shape == (None, dim)


def test_preprocessing_is_applied_exactly_once_inside_the_model(tiny: Backbone) -> None:
    from keras.applications import mobilenet_v2

    images = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3)).astype(np.uint8)
    base = next(layer for layer in tiny.model.layers if layer.name.startswith("mobilenetv2"))
    once = np.asarray(base(mobilenet_v2.preprocess_input(images.astype("float32")), training=False))
    twice = np.asarray(
        base(mobilenet_v2.preprocess_input(mobilenet_v2.preprocess_input(images.astype("float32"))), training=False)
    )
    got = np.asarray(tiny.model(images, training=False))
    np.testing.assert_allclose(got, once, atol=1e-5)
    assert np.abs(got - twice).max() > 1e-2  # the check would notice double preprocessing


def test_batchnorm_runs_in_inference_mode(tiny: Backbone) -> None:
    """In training mode BatchNorm uses batch statistics: an image's embedding would depend on its batch."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (1, 96, 96, 3)).astype(np.uint8)
    others = rng.integers(0, 256, (3, 96, 96, 3)).astype(np.uint8)
    alone = np.asarray(tiny.model(image))
    in_batch = np.asarray(tiny.model(np.concatenate([image, others])))[:1]
    np.testing.assert_allclose(alone, in_batch, atol=1e-5)
    assert tiny.model.trainable_weights == []


def test_backbone_pickles_as_its_specification(tiny: Backbone) -> None:
    tiny.model  # noqa: B018 - build it, then make sure it is not pickled
    restored = pickle.loads(pickle.dumps(tiny))
    assert restored == tiny and "model" not in restored.__dict__
    assert restored.key == tiny.key


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"weights file '.*nope.h5' does not exist; pass 'imagenet'"):
        Backbone(size=96, weights=str(tmp_path / "nope.h5")).key  # noqa: B018


def test_weights_file_that_is_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    path.write_text("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5")
    with pytest.raises(WeightsError, match=r"is not an HDF5 weights file \(58 bytes\)"):
        Backbone(size=96, weights=str(path)).model  # noqa: B018


def test_imagenet_without_internet_or_cache_explains_offline_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("embedder.backbone.weights.keras_cache_candidates", lambda name: [tmp_path / "models" / name])
    with pytest.raises(
        WeightsError,
        match=r"set KERAS_HOME to a folder holding models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5",
    ):
        resolve_weights("imagenet", alpha=0.35, size=96)


@pytest.mark.real_data
def test_weights_file_for_another_alpha_is_named(shared: Path) -> None:
    from conftest import NO_TOP_WEIGHTS

    with pytest.raises(
        WeightsError, match=r"first convolution has 32 filters, alpha=0.5 needs 16: it was made for alpha 1.0"
    ):
        Backbone(alpha=0.5, size=96, weights=str(NO_TOP_WEIGHTS)).model  # noqa: B018


@pytest.mark.real_data
def test_imagenet_weights_load_offline_from_keras_home(keras_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import NO_TOP_WEIGHTS

    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    backbone = Backbone(size=128)
    assert (
        backbone.weights_path
        == keras_home / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5"
    )
    assert backbone.weights_sha256 == file_sha256(backbone.weights_path)
    assert backbone.key.startswith(f"mobilenet_v2-1.0-128-imagenet-{backbone.weights_sha256[:8]}-")
    images = np.random.default_rng(2).integers(0, 256, (2, 128, 128, 3)).astype(np.uint8)
    from_file = Backbone(size=128, weights=str(NO_TOP_WEIGHTS))
    np.testing.assert_allclose(backbone.model(images), from_file.model(images), atol=1e-5)
