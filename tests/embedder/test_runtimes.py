"""Runtimes: ONNX matches Keras, exports are cached per backbone key, a mismatch is never used."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from embedder import Backbone, RuntimeUnavailableError
from embedder.runtimes import (
    KerasEncoder,
    OnnxEncoder,
    OpenVinoEncoder,
    compare,
    load_encoder,
    onnx_path,
    parity_images,
    runtime_cache_dir,
)

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


def test_export_that_differs_from_keras_is_never_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backbone = Backbone(size=96, weights=None, resize="squash")
    monkeypatch.setattr(
        "embedder.runtimes.exports.compare", lambda a, b: {"max_abs": 0.5, "min_cosine": 0.9, "reference_rms": 1.0}
    )
    with pytest.raises(RuntimeUnavailableError, match="differs from Keras"):
        load_encoder(backbone, "onnx")
    assert not onnx_path(backbone).exists()
    with caplog.at_level(logging.WARNING):
        assert isinstance(load_encoder(backbone, "auto"), KerasEncoder)
    assert "differs from Keras" in caplog.text


def test_parity_images_are_fixed_and_varied() -> None:
    images = parity_images(96)
    assert np.array_equal(images, parity_images(96))
    assert images.dtype == np.uint8 and images.std() > 40


def test_unknown_runtime() -> None:
    with pytest.raises(ValueError, match="Received: runtime='gpu'"):
        load_encoder(TINY, "gpu")


def test_openvino_fp32_matches_the_reference_and_shares_the_key() -> None:
    encoder = load_encoder(TINY, "openvino")
    assert isinstance(encoder, OpenVinoEncoder) and encoder.key == TINY.key
    images = np.random.default_rng(4).integers(0, 256, (5, 96, 96, 3)).astype(np.uint8)
    parity = compare(KerasEncoder(TINY)(images), encoder(images))
    assert parity["max_abs"] <= 1e-4 * max(1, parity["reference_rms"]) and parity["min_cosine"] >= 0.99999


def test_auto_measures_once_and_remembers_the_fastest() -> None:
    backbone = Backbone(size=96, weights=None, pooling="max", resize="squash")
    encoder = load_encoder(backbone, "auto")
    choice = json.loads((runtime_cache_dir() / "auto" / f"{backbone.key}-fp32.json").read_text())
    assert choice["runtime"] == encoder.runtime == max(choice["images_per_second"], key=choice["images_per_second"].get)
    assert set(choice["images_per_second"]) == {"onnx", "openvino"}  # the Keras reference is only the fallback


@pytest.mark.parametrize(("precision", "runtime", "suffix"), [("bf16", "openvino", "-bf16-openvino")])
def test_reduced_precision_gets_its_own_key(precision: str, runtime: str, suffix: str) -> None:
    encoder = load_encoder(TINY, runtime, precision=precision)
    assert encoder.key == TINY.key.removesuffix("-fp32") + suffix and encoder.precision == precision


def test_int8_needs_calibration_and_names_it_in_the_key(tmp_path) -> None:
    with pytest.raises(RuntimeUnavailableError, match="needs calibration images"):
        load_encoder(TINY, "onnx", precision="int8")
    from conftest import make_dataset

    photos = make_dataset(tmp_path, per_class=4)
    encoder = load_encoder(TINY, "onnx", precision="int8", calibration=photos)
    assert encoder.key.startswith(TINY.key.removesuffix("-fp32") + "-int8-") and encoder.key.endswith("-onnx")
    assert encoder.calibration[:8] in encoder.key
    again = load_encoder(TINY, "openvino", precision="int8", calibration_digest=encoder.calibration)  # cached model
    assert again.calibration == encoder.calibration and again.key.endswith("-openvino")


@pytest.mark.parametrize(("runtime", "precision"), [("keras", "int8"), ("onnx", "bf16")])
def test_unsupported_combinations(runtime: str, precision: str) -> None:
    with pytest.raises(RuntimeUnavailableError, match=f"does not run precision '{precision}'"):
        load_encoder(TINY, runtime, precision=precision)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_streams_split_a_batch_into_chunks_and_keep_the_order(runtime: str) -> None:
    encoder = load_encoder(TINY, runtime, threads=2)
    images = np.random.default_rng(5).integers(0, 256, (11, 96, 96, 3)).astype(np.uint8)
    whole = np.concatenate([encoder(images[i : i + 1]) for i in range(len(images))])  # one image per call
    streamed = encoder(images)  # chunks of at most CHUNK images on two streams
    assert streamed.shape == (11, TINY.dim)
    assert np.abs(streamed - whole).max() <= 1e-5
    assert np.abs(encoder(images[:1]) - whole[:1]).max() <= 1e-5


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_concurrent_callers_each_get_their_own_embeddings(runtime: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    encoder = load_encoder(TINY, runtime, threads=2)
    batches = [np.full((3, 96, 96, 3), 40 * k, np.uint8) for k in range(6)]
    alone = [encoder(batch) for batch in batches]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(encoder, batches))
    for one, other in zip(alone, together):
        assert np.abs(one - other).max() <= 1e-5
    assert not np.allclose(alone[0], alone[5])  # different inputs really give different rows
