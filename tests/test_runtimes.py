"""Runtimes: ONNX matches Keras, exports are cached per backbone key, a mismatch is never used."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from embedder import Backbone, RuntimeUnavailableError
from embedder.runtimes import KerasEncoder, OnnxEncoder, load_encoder, onnx_path, parity_images

TINY = Backbone(size=96, weights=None)


def test_onnx_matches_keras_and_is_cached_per_key() -> None:
    encoder = load_encoder(TINY, "onnx")
    assert isinstance(encoder, OnnxEncoder)
    path = onnx_path(TINY)
    assert path.is_file() and TINY.key in path.name
    images = np.random.default_rng(3).integers(0, 256, (5, 96, 96, 3)).astype(np.uint8)
    reference = KerasEncoder(TINY)(images)
    assert np.abs(encoder(images) - reference).max() <= 1e-4
    stamp = path.stat().st_mtime_ns
    load_encoder(TINY, "auto")
    assert path.stat().st_mtime_ns == stamp  # reused, not exported again
    other = Backbone(size=96, weights=None, pooling="max")
    load_encoder(other, "onnx")
    assert onnx_path(other) != path and onnx_path(other).is_file()


def test_export_that_differs_from_keras_is_never_used(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    backbone = Backbone(size=96, weights=None, resize="squash")
    monkeypatch.setattr("embedder.runtimes.compare", lambda a, b: {"max_abs": 0.5, "min_cosine": 0.9, "reference_rms": 1.0})
    with pytest.raises(RuntimeUnavailableError, match="differs from Keras"):
        load_encoder(backbone, "onnx")
    assert not onnx_path(backbone).exists()
    with caplog.at_level(logging.WARNING):
        assert isinstance(load_encoder(backbone, "auto"), KerasEncoder)
    assert "Using the slower Keras runtime" in caplog.text


def test_parity_images_are_fixed_and_varied() -> None:
    images = parity_images(96)
    assert np.array_equal(images, parity_images(96))
    assert images.dtype == np.uint8 and images.std() > 40


def test_unknown_runtime() -> None:
    with pytest.raises(ValueError, match="Received: runtime='gpu'"):
        load_encoder(TINY, "gpu")
