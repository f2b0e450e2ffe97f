"""The service's model files: exported ONNX graphs and fine-tuned networks on decoded images, and refusals at start-up."""

from __future__ import annotations

import io
import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import make_dataset, photo
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from classical import ModelFileError, load_model, sweep
from classical.modelfiles.saved import save_model
from embedder import Backbone, CacheError, decode_image, extract
from serving import ServiceSettings, create_app
from serving.cli import embedder_app

TINY = Backbone(size=96, weights=None)
CLASSES = ["blue", "green", "red"]


def export_graph(path: Path, *, backbone_key: str, size: int = 96, resize: str = "crop") -> None:
    """A real ONNX graph honouring the export contract: uint8 images -> mean colour -> softmax over the classes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = 20.0 * np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32)  # r -> red, g -> green, b -> blue
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "export",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(
        model,
        {
            "class_names": json.dumps(CLASSES),
            "backbone_key": backbone_key,
            "resize": resize,
            "bottleneck_lab_version": "0.1.0",
        },
    )
    onnx.checker.check_model(model)
    onnx.save(model, path)


def tiny_network():
    """A network on pixels, saved like a fine-tuned one: uint8 images in, class probabilities out."""
    import keras

    inputs = keras.Input((96, 96, 3), dtype="uint8")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(3, activation="softmax")
    network = keras.Model(inputs, dense(x))
    dense.set_weights([20.0 * np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32), np.zeros(3, np.float32)])
    return network


def jpeg(color: tuple[int, int, int], seed: int) -> bytes:
    buffer = io.BytesIO()
    photo(color, seed=seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    export_graph(folder / "exported.onnx", backbone_key=TINY.key)
    provenance = TINY.provenance()
    save_model(
        folder / "finetune-a.model",
        tiny_network(),
        {
            "name": "finetune-a",
            "kind": "neural",
            "input": "pixels",
            "backbone_key": TINY.key,
            "class_names": CLASSES,
            "backbone": {k: provenance[k] for k in ("alpha", "size", "weights", "pooling", "resize", "weights_sha256")},
        },
    )
    return folder


def test_exported_and_pixel_models_are_served_on_decoded_images(models: Path) -> None:
    import onnxruntime as ort

    blobs = [jpeg((200, 30, 30), 1), jpeg((30, 50, 200), 2)]
    pixels = np.stack([decode_image(blob, size=96) for blob in blobs])
    expected = ort.InferenceSession(str(models / "exported.onnx")).run(["probabilities"], {"images": pixels})[0]
    with TestClient(create_app(ServiceSettings(backbone=TINY, model_dirs=[models]))) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        answers = {
            name: client.post(
                f"/v1/predict/{name}", files=[("images", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)]
            ).json()
            for name in ("exported", "finetune-a")
        }
    assert listed["exported"]["kind"] == "exported" and listed["exported"]["classes"] == CLASSES
    assert listed["finetune-a"]["kind"] == "neural" and listed["exported"]["backbone_key"] == TINY.key
    got = np.array([[r["probs"][c] for c in CLASSES] for r in answers["exported"]["results"]])
    assert np.abs(got - expected).max() <= 1e-6
    for answer in answers.values():
        assert [r["label"] for r in answer["results"]] == ["red", "blue"]


@pytest.mark.parametrize(
    ("export", "message"),
    [
        (
            {"backbone_key": Backbone(size=96, weights=None, pooling="max").key},
            "was exported for .*-max-.*, but this server",
        ),
        ({"backbone_key": TINY.key, "size": 128}, "takes 128x128 images"),
        ({"backbone_key": TINY.key, "resize": "squash"}, "resized by 'squash'"),
    ],
    ids=["other-backbone", "other-size", "other-resize"],
)
def test_an_export_for_other_images_is_refused_at_start(tmp_path: Path, export: dict, message: str) -> None:
    export_graph(tmp_path / "m.onnx", **export)
    with (
        pytest.raises(ModelFileError, match=message),
        TestClient(create_app(ServiceSettings(backbone=TINY, model_dirs=[tmp_path]))),
    ):
        pass


def test_a_file_that_is_no_onnx_model_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ModelFileError, match=rf"'{tmp_path / 'm.onnx'}' is not a readable ONNX model"):
        with TestClient(create_app(ServiceSettings(backbone=TINY, model_dirs=[tmp_path]))):
            pass


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    make_dataset(folder / "photos", per_class=8)
    extract(folder / "photos", folder / "c.h5", TINY, progress=False)
    sweep(folder / "c.h5", folder / "run", models=["lr"], grids={"lr": {"C": [1.0]}}, cv=3, progress=False, audit=False)
    return folder


def test_pickles_of_earlier_releases_are_served_only_when_trusted(run: Path, tmp_path: Path) -> None:
    saved = load_model(run / "run" / "lr.model")
    joblib.dump({"format": 1, "model": saved.model, "metadata": saved.metadata}, tmp_path / "old.joblib")
    with pytest.raises(ModelFileError, match=rf"'{tmp_path / 'old.joblib'}' is a pickle .*--trust-pickle"):
        with TestClient(create_app(ServiceSettings(backbone=TINY, model_dirs=[tmp_path]))):
            pass
    with TestClient(create_app(ServiceSettings(backbone=TINY, model_dirs=[tmp_path], trust_pickle=True))) as client:
        answer = client.post("/v1/predict/old", files=[("images", ("a.jpg", jpeg((200, 30, 30), 3), "image/jpeg"))])
    assert answer.status_code == 200 and answer.json()["results"][0]["label"] == "red"


def serve(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(embedder_app, ["serve", "--size", "96", "--weights", "none", *args])
    return result.exit_code, result.output.strip().splitlines()


def test_serve_refuses_a_damaged_model_with_one_line(run: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "lr.model"
    data = bytearray((run / "run" / "lr.model").read_bytes())
    for position in range(len(data) // 3, len(data) // 3 + 100):  # 100 flipped bytes inside the model
        data[position] ^= 0xFF
    damaged.write_bytes(bytes(data))
    status, lines = serve("--models", str(tmp_path))
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: model file '{damaged}' is damaged")


@pytest.mark.parametrize(("content", "message"), [(None, "does not exist"), (b"my notes", "is not an HDF5 file")])
def test_serve_cache_errors_speak_of_its_own_option(tmp_path: Path, content: bytes | None, message: str) -> None:
    notes = tmp_path / "notes.h5"
    if content is not None:
        notes.write_bytes(content)
    with (
        pytest.raises(CacheError, match=f"--cache '{notes}' {message}") as refused,
        TestClient(create_app(ServiceSettings(backbone=TINY, cache=notes))),
    ):
        pass
    assert "--out" not in str(refused.value)
    status, lines = serve("--cache", str(notes))
    assert status == 2 and len(lines) == 1 and lines[0] == f"error: {refused.value}"


def test_serve_refuses_a_damaged_cache_with_one_line(tmp_path: Path) -> None:
    from conftest import blobs, write_cache

    cache = tmp_path / "cache.h5"
    write_cache(cache, *blobs(per_class=4, dim=8))
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated
    status, lines = serve("--cache", str(cache))
    assert status == 2 and len(lines) == 1 and f"cache '{cache}' is damaged" in lines[0], lines
