"""The sweep on a synthetic cache: six models, one split, a report that follows its contract."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from classical import DataError, load_model, rerender, sweep
from classical.sweep import cv_folds
from conftest import blobs, write_cache

FAST = {  # one candidate each, so the test runs in seconds
    "lr": {"C": [0.1]}, "svm-linear": {"C": [0.01]}, "svm-rbf": {"C": [1.0]}, "rf": {"n_estimators": [20]},
    "knn": {"n_neighbors": [3]}, "dense": {"learning_rate": [0.01]},
}
ROW_FIELDS = {"name", "kind", "test_accuracy", "macro_f1", "balanced_accuracy", "cv_mean", "cv_std", "fit_seconds",
              "predict_ms_per_image", "model_bytes", "params", "model_path", "log_loss"}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("sweep")
    X, labels = blobs(per_class=40)
    write_cache(folder / "c.h5", X, labels)
    report = sweep(folder / "c.h5", folder / "run", grids=FAST, cv=3, n_jobs=2, progress=False)
    return folder, report


def test_report_contract(swept: tuple[Path, dict]) -> None:
    folder, report = swept
    stored = json.loads((folder / "run" / "report.json").read_text())
    assert stored == json.loads(json.dumps(report))
    assert report["backbone"].startswith("mobilenet_v2-1.0-96-random-")
    assert set(report["split"]) >= {"id", "n_train", "n_val", "n_test"}
    assert (report["split"]["n_train"], report["split"]["n_val"], report["split"]["n_test"]) == (84, 18, 18)
    assert [row["name"] for row in report["models"]] == ["lr", "svm-linear", "svm-rbf", "rf", "knn", "dense"]
    for row in report["models"]:
        assert ROW_FIELDS <= set(row), row["name"]
        assert row["kind"] == ("neural" if row["name"] == "dense" else "classical")
        assert row["test_accuracy"] >= 0.9, row  # the blobs are separable
        assert row["fit_seconds"] > 0 and row["predict_ms_per_image"] > 0 and row["model_bytes"] > 0
        assert sum(map(sum, row["confusion_matrix"])) == 18  # every model scored on the same 18 test images
    dense = report["models"][-1]
    assert dense["cv_std"] is None and "validation" in dense["selection"] and dense["params"]["learning_rate"] == 0.01
    assert report["models"][0]["cv_std"] is not None and "3-fold" in report["models"][0]["selection"]


def test_report_files_and_plots(swept: tuple[Path, dict]) -> None:
    run = swept[0] / "run"
    with open(run / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["lr", "svm-linear", "svm-rbf", "rf", "knn", "dense"]
    markdown = (run / "report.md").read_text()
    assert "| model | kind | test acc |" in markdown and "Best on the test split" in markdown
    for name in ("accuracy_vs_fit_time", "confusion_matrix", "per_class_f1"):
        assert (run / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_are_saved_with_their_metadata(swept: tuple[Path, dict]) -> None:
    folder, report = swept
    for row in report["models"]:
        saved = load_model(row["model_path"])
        assert saved.backbone_key == report["backbone"] and saved.class_names == ["ant", "bee", "cat"]
        assert saved.metadata["split_id"] == report["split"]["id"]
        assert saved.metadata["metrics"]["test_accuracy"] == row["test_accuracy"]
        assert Path(row["model_path"]).stat().st_size == row["model_bytes"]
        proba = saved.predict_proba(np.zeros((2, 32), np.float32), backbone_key=report["backbone"])
        assert proba.shape == (2, 3) and np.allclose(proba.sum(axis=1), 1)


def test_rerun_reuses_the_split_and_replaces_rows(swept: tuple[Path, dict]) -> None:
    folder, report = swept
    again = sweep(folder / "c.h5", folder / "run", models=["lr"], grids={"lr": {"C": [1.0]}}, cv=3, progress=False)
    assert again["split"]["id"] == report["split"]["id"]
    assert [row["name"] for row in again["models"]] == ["svm-linear", "svm-rbf", "rf", "knn", "dense", "lr"]
    assert again["models"][-1]["params"] == {"clf__C": 1.0}
    rendered = rerender(folder / "run")
    assert rendered["models"] == json.loads(json.dumps(again["models"]))


def test_halving_search(tmp_path: Path) -> None:
    X, labels = blobs(per_class=30)
    write_cache(tmp_path / "c.h5", X, labels)
    report = sweep(tmp_path / "c.h5", tmp_path / "run", models=["lr"], search="halving",
                   grids={"lr": {"C": [0.01, 0.1, 1.0, 10.0]}}, cv=3, progress=False)
    assert "halving search over 4 candidates" in report["models"][0]["selection"]


def test_small_class_falls_back_to_fewer_folds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    X, labels = blobs(per_class=30)
    keep = [i for i, label in enumerate(labels) if label != "cat" or i < 64]  # 4 cats
    write_cache(tmp_path / "c.h5", X[keep], [labels[i] for i in keep])
    with caplog.at_level(logging.WARNING):
        report = sweep(tmp_path / "c.h5", tmp_path / "run", models=["lr"], grids=FAST, cv=5, progress=False)
    folds = re.search(r"only (\d) images in train \+ validation: using (\d)-fold CV instead of 5", caplog.text)
    assert folds and folds[1] == folds[2]
    assert report["models"][0]["selection"].startswith(f"{folds[2]}-fold")


def test_class_with_too_few_images_is_refused(tmp_path: Path) -> None:
    X, labels = blobs(per_class=30)
    keep = [i for i, label in enumerate(labels) if label != "cat" or i < 61]  # 1 cat
    write_cache(tmp_path / "c.h5", X[keep], [labels[i] for i in keep])
    with pytest.raises(DataError, match="'cat': 1"):
        sweep(tmp_path / "c.h5", tmp_path / "run", models=["lr"], grids=FAST, progress=False)
    with pytest.raises(DataError, match=r"class 'b' has 1 image\(s\) in train \+ validation"):
        cv_folds(np.array([0, 0, 0, 1]), 5, ["a", "b"])


def test_unknown_model_and_search(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown models"):
        sweep(tmp_path / "c.h5", tmp_path / "run", models=["xgboost"])
    with pytest.raises(ValueError, match="Received: search='random'"):
        sweep(tmp_path / "c.h5", tmp_path / "run", search="random")
