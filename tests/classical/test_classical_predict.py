"""Model files and prediction of new images through the model's own backbone."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import make_dataset, photo
from typer.testing import CliRunner

from classical import ModelFileError, load_model, predict, sweep
from classical.cli import app
from classical.modelfiles.saved import save_model
from embedder import Backbone, extract

TINY = Backbone(size=96, weights=None)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("predict")
    make_dataset(folder / "photos", per_class=12)
    extract(folder / "photos", folder / "c.h5", TINY, progress=False)
    sweep(
        folder / "c.h5",
        folder / "run",
        models=["lr", "knn"],
        grids={"lr": {"C": [1.0]}, "knn": {"n_neighbors": [3]}},
        cv=3,
        progress=False,
    )
    new = folder / "new"
    new.mkdir()
    photo((200, 30, 30), seed=501).save(new / "a_red.jpg")
    photo((30, 50, 200), seed=502).save(new / "b_blue.png")
    (new / "c_broken.jpg").write_bytes(b"\xff\xd8 broken")
    return folder


def test_predict_new_images_with_the_models_backbone(run: Path) -> None:
    results = predict(run / "run" / "lr", [run / "new"])
    assert [Path(r["path"]).name for r in results] == ["a_red.jpg", "b_blue.png", "c_broken.jpg"]
    assert (results[0]["label"], results[1]["label"]) == ("red", "blue")
    assert set(results[0]["probs"]) == {"blue", "green", "red"} and abs(sum(results[0]["probs"].values()) - 1) < 1e-6
    assert results[0]["prob"] == max(results[0]["probs"].values())
    assert results[2] == {
        "path": str(run / "new" / "c_broken.jpg"),
        "error": "not an image: the content is not a format Pillow can decode",
    }


def test_model_refuses_embeddings_of_another_backbone(run: Path) -> None:
    saved = load_model(run / "run" / "lr.model")
    other = Backbone(size=96, weights=None, pooling="max").key
    with pytest.raises(
        ModelFileError, match=rf"fitted on embeddings of {saved.backbone_key}; these embeddings come from {other}"
    ):
        saved.predict_proba(np.zeros((1, 1280), np.float32), backbone_key=other)
    with pytest.raises(ModelFileError, match="expects embeddings of dimension 1280"):
        saved.predict_proba(np.zeros((1, 5), np.float32), backbone_key=saved.backbone_key)


def test_model_whose_backbone_no_longer_resolves_names_both_keys(run: Path, tmp_path: Path) -> None:
    saved = load_model(run / "run" / "lr.model")
    saved.metadata["backbone"]["pooling"] = "max"  # as if the backbone changed under the model
    save_model(tmp_path / "moved.model", saved.model, saved.metadata)
    with pytest.raises(
        ModelFileError, match=r"fitted on embeddings of mobilenet_v2-1.0-96-random-.*-avg-.* resolves to .*-max-"
    ):
        predict(tmp_path / "moved.model", [run / "new" / "a_red.jpg"])


@pytest.mark.parametrize(
    ("content", "trust", "message"),
    [
        (None, False, "does not exist"),
        (b"not a pickle", False, "is not a bottleneck-lab model file \\(neither"),
        ({"a": 1}, False, "is a pickle .* --trust-pickle"),
        ({"a": 1}, True, "is not a bottleneck-lab model file of an earlier release"),
    ],
    ids=["missing", "not-a-model", "pickle-untrusted", "pickle-not-ours"],
)
def test_bad_model_files(tmp_path: Path, content: object, trust: bool, message: str) -> None:
    path = tmp_path / "m.joblib"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        joblib.dump(content, path)
    with pytest.raises(ModelFileError, match=message):
        load_model(path, trust_pickle=trust)


def test_cli_predict_formats(run: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["predict", str(run / "run" / "knn"), str(run / "new" / "a_red.jpg"), "--format", "json"]
    )
    assert result.exit_code == 0
    row = json.loads(result.output)
    assert set(row) == {"path", "label", "prob", "probs"} and row["label"] == "red"
    result = runner.invoke(app, ["predict", str(run / "run" / "knn"), str(run / "new"), "--format", "csv"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1  # one image could not be read
    assert lines[0] == "path,label,prob,blue,green,red,error" and lines[1].split(",")[1] == "red"
    assert lines[3].startswith(f"{run / 'new' / 'c_broken.jpg'},,,,,,") and len(lines[3].split(",")[-1]) > 10
    result = runner.invoke(app, ["predict", str(run / "run" / "lr"), str(run / "new" / "b_blue.png")])
    assert result.exit_code == 0 and result.output.startswith(f"{run / 'new' / 'b_blue.png'}: blue ")


def test_model_on_int8_embeddings_predicts_through_the_same_int8_runtime(run: Path) -> None:
    summary = extract(run / "photos", run / "c.h5", TINY, precision="int8", runtime="onnx", progress=False)
    report = sweep(
        run / "c.h5",
        run / "run-int8",
        backbone=summary.backbone_key,
        models=["lr"],
        grids={"lr": {"C": [1.0]}},
        cv=3,
        progress=False,
    )
    saved = load_model(report["models"][0]["model_path"])
    assert saved.backbone_key == summary.backbone_key and saved.metadata["backbone"]["precision"] == "int8"
    results = predict(saved, [run / "new" / "a_red.jpg"])
    assert results[0]["label"] == "red"


def test_cli_reads_a_pickle_of_an_earlier_release_only_with_trust_pickle(run: Path, tmp_path: Path) -> None:
    saved = load_model(run / "run" / "lr.model")
    joblib.dump({"format": 1, "model": saved.model, "metadata": saved.metadata}, tmp_path / "lr.joblib")  # as 0.1 wrote
    image = str(run / "new" / "a_red.jpg")
    refused = CliRunner().invoke(app, ["predict", str(tmp_path / "lr"), image])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert f"'{tmp_path / 'lr.joblib'}' is a pickle" in refused.output and "--trust-pickle" in refused.output
    trusted = CliRunner().invoke(app, ["predict", str(tmp_path / "lr"), image, "--trust-pickle"])
    assert trusted.exit_code == 0 and trusted.output.startswith(f"{image}: red ")
