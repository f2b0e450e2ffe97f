"""One-file exports: for every model kind, the exported graph gives `classical predict`'s probabilities."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import NO_TOP_WEIGHTS, ROOT, copy_files, make_dataset, photo
from typer.testing import CliRunner

from classical import predict, sweep
from classical.cli import app
from classical.export import export_model
from classical.finetuning.workflow import finetune
from embedder import Backbone, extract, load_files

TINY = Backbone(size=96, weights=None)
GRIDS = {
    "lr": {"C": [1.0]},
    "svm-linear": {"C": [0.05]},
    "svm-rbf": {"C": [1.0], "gamma": ["scale"]},
    "knn": {"n_neighbors": [3]},
    "rf": {"n_estimators": [20]},
    "dense": {"learning_rate": [1e-2], "dropout": [0.0]},
}
MODELS = {
    "lr": "lr.model",
    "svm-linear": "svm-linear.model",
    "svm-rbf": "svm-rbf.model",
    "knn": "knn.model",
    "rf": "rf.model",
    "dense": "dense.model",
    "finetune": "finetune-a.model",
}
TOLERANCE = 1e-4
EXPORT_GUIDE = (ROOT / "docs" / "guides" / "export.md").read_text()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with a model of every kind the sweep and fine-tuning produce, and new photos to classify."""
    folder = tmp_path_factory.mktemp("export")
    make_dataset(folder / "photos", per_class=8)
    extract(folder / "photos", folder / "c.h5", TINY, progress=False)
    sweep(
        folder / "c.h5",
        folder / "run",
        models=list(GRIDS),
        grids=GRIDS,
        cv=2,
        progress=False,
        audit=False,
        embedding_cost=False,
    )
    finetune(
        folder / "photos",
        folder / "run",
        variant="a",
        head_epochs=1,
        epochs=1,
        size=96,
        weights="none",
        batch_size=8,
        views=1,
        progress=False,
    )
    new = folder / "new"
    new.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 180, 40), (30, 50, 200), (120, 120, 40)]):
        photo(color, seed=700 + i, size=(120, 90)).save(new / f"{i}.jpg")
    return folder


def reference(run: Path, kind: str) -> np.ndarray:
    """`classical predict`'s probabilities of the new photos."""
    results = predict(run / "run" / MODELS[kind], sorted((run / "new").iterdir()))
    return np.array([list(result["probs"].values()) for result in results])


def pixels(run: Path, size: int = 96, resize: str = "crop") -> np.ndarray:
    """The new photos decoded as `classical predict` decodes them."""
    return np.stack([item.pixels for item in load_files(sorted((run / "new").iterdir()), size=size, resize=resize)])


def onnx_probabilities(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(["probabilities", "label"], {"images": images}))


@pytest.mark.parametrize("kind", list(MODELS))
def test_onnx_export_gives_the_models_probabilities(run: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / f"{kind}.onnx"
    result = export_model(run / "run" / MODELS[kind], out)
    assert result.kind == ("classical" if kind in GRIDS and kind != "dense" else kind)
    probabilities, label = onnx_probabilities(out, pixels(run))
    expected = reference(run, kind)
    assert probabilities.shape == expected.shape == (4, 3)
    np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_array_equal(label, expected.argmax(1))
    model = onnx.load(out)
    assert [i.name for i in model.graph.input] == ["images"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == [96, 96, 3]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == ["blue", "green", "red"]
    assert props["backbone_key"] == TINY.key and props["resize"] == "crop" and props["image_size"] == "96"
    assert props["bottleneck_lab_version"] and props["model_kind"] == result.kind
    assert result.max_abs_diff <= TOLERANCE and result.bytes == out.stat().st_size


@pytest.mark.parametrize("kind", ["dense", "finetune"])
@pytest.mark.parametrize("format", ["saved_model", "tflite"])
def test_tensorflow_formats_of_neural_models_give_their_probabilities(
    run: Path, tmp_path: Path, kind: str, format: str
) -> None:
    import tensorflow as tf

    out = tmp_path / (f"{kind}.tflite" if format == "tflite" else kind)
    export_model(run / "run" / MODELS[kind], out, format=format)
    images = pixels(run)
    if format == "saved_model":
        outputs = tf.saved_model.load(str(out)).signatures["serving_default"](images=tf.constant(images))
        outputs = {name: value.numpy() for name, value in outputs.items()}
        meta = json.loads((out / "assets.extra" / "bottleneck_lab.json").read_text())
    else:
        runner = tf.lite.Interpreter(model_path=str(out)).get_signature_runner("serving_default")
        outputs = runner(images=images)
        meta = json.loads(Path(f"{out}.json").read_text())
    expected = reference(run, kind)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_array_equal(outputs["label"], expected.argmax(1))
    assert json.loads(meta["class_names"]) == ["blue", "green", "red"] and meta["backbone_key"] == TINY.key


@pytest.mark.parametrize(("kind", "format", "suffix"), [("lr", "onnx", ".onnx"), ("finetune", "tflite", ".tflite")])
def test_int8_export_is_calibrated_on_photos_and_says_so(
    run: Path, tmp_path: Path, kind: str, format: str, suffix: str
) -> None:
    fp32 = export_model(run / "run" / MODELS[kind], tmp_path / f"fp32{suffix}", format=format)
    int8 = export_model(
        run / "run" / MODELS[kind], tmp_path / f"int8{suffix}", format=format, int8=True, calibration=[run / "photos"]
    )
    assert int8.precision == "int8" and int8.check_images == "24 calibration photos"
    assert int8.bytes < fp32.bytes / 2  # int8 weights
    assert 0 <= int8.agreement <= 1 and np.isfinite(int8.max_abs_diff)
    if format == "onnx":
        props = {p.key: p.value for p in onnx.load(tmp_path / "int8.onnx").metadata_props}
        assert props["precision"] == "int8" and json.loads(props["class_names"]) == ["blue", "green", "red"]
        probabilities, _ = onnx_probabilities(tmp_path / "int8.onnx", pixels(run))
        np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)


def test_cli_exports_and_refuses_what_it_cannot_do_in_one_line(run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(run / "run" / "lr"), "--out", str(tmp_path / "lr.onnx")])
    assert done.exit_code == 0, done.output
    assert "input images: uint8 RGB [N, 96, 96, 3] (crop)" in done.output and (tmp_path / "lr.onnx").is_file()
    cases = [
        (
            ["export", str(run / "run" / "lr.model"), "--out", str(tmp_path / "x.tflite"), "--format", "tflite"],
            "is a classical head: export it as onnx",
        ),
        (
            ["export", str(run / "run" / "lr.model"), "--out", str(tmp_path / "x.onnx"), "--int8"],
            "int8 export needs calibration images",
        ),
        (["export", str(run / "run" / "lr.model"), "--out", str(run / "run" / "lr.model")], "is the model file itself"),
        (["export", str(tmp_path / "missing.model"), "--out", str(tmp_path / "x.onnx")], "does not exist"),
    ]
    for args, message in cases:
        failed = runner.invoke(app, args)
        assert failed.exit_code == 2 and message in failed.output, failed.output
        assert len(failed.output.strip().splitlines()) == 1 and "Traceback" not in failed.output
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.tflite").exists()


def test_a_damaged_model_file_is_not_exported(run: Path, tmp_path: Path) -> None:
    from classical import ModelFileError

    data = bytearray((run / "run" / "finetune-a.model").read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 100):
        data[i] ^= 0xFF
    (tmp_path / "finetune-a.model").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="finetune-a.model"):
        export_model(tmp_path / "finetune-a.model", tmp_path / "f.onnx")
    assert not (tmp_path / "f.onnx").exists()


def test_readme_client_classifies_like_classical_predict(run: Path, tmp_path: Path) -> None:
    """The export guide's onnxruntime + numpy + Pillow client, run as written, on an exported model."""
    export_model(run / "run" / "svm-rbf.model", tmp_path / "model.onnx")
    client = re.search(
        r"```python\n(# client: onnxruntime, numpy and Pillow only.*?)```", EXPORT_GUIDE, flags=re.DOTALL
    )
    client = client.group(1)
    assert len(client.strip().splitlines()) <= 20
    files = sorted((run / "new").iterdir())
    namespace: dict = {"__name__": "client"}
    exec(compile(client, "docs/guides/export.md", "exec"), namespace)
    expected = predict(run / "run" / "svm-rbf.model", files)
    for path, result in zip(files, expected):
        label, probabilities = namespace["classify"](str(tmp_path / "model.onnx"), str(path))
        assert label == result["label"]
        np.testing.assert_allclose(probabilities, list(result["probs"].values()), atol=TOLERANCE, rtol=0)


@pytest.mark.real_data
def test_exports_of_real_models_match_classical_predict_on_real_photos(shared: Path, tmp_path: Path) -> None:
    """Real weights at 224 px, real flowers: a classical head and the Dense head, against `classical predict`."""
    flowers = shared / "data" / "flowers"
    classes = sorted(folder.name for folder in flowers.iterdir() if folder.is_dir())
    new = []
    for name in classes:
        photos = sorted((flowers / name).glob("*.jpg"))
        copy_files(photos[:8], tmp_path / "photos" / name)
        new += photos[8:10]
    backbone = Backbone(weights=str(NO_TOP_WEIGHTS))
    extract(tmp_path / "photos", tmp_path / "c.h5", backbone, progress=False)
    sweep(
        tmp_path / "c.h5",
        tmp_path / "run",
        models=["svm-rbf", "dense"],
        cv=2,
        progress=False,
        audit=False,
        embedding_cost=False,
        grids={"svm-rbf": {"C": [1.0], "gamma": ["scale"]}, "dense": {"dropout": [0.0], "learning_rate": [1e-3]}},
    )
    images = np.stack([item.pixels for item in load_files(new, size=224, resize="crop")])
    for name in ("svm-rbf", "dense"):
        export_model(tmp_path / "run" / f"{name}.model", tmp_path / f"{name}.onnx")
        probabilities, _ = onnx_probabilities(tmp_path / f"{name}.onnx", images)
        expected = np.array([list(r["probs"].values()) for r in predict(tmp_path / "run" / f"{name}.model", new)])
        np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE, rtol=0)
        assert probabilities.shape == (len(new), len(classes))
