"""The sweep on a synthetic cache: six models, one split, a report that follows its contract."""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, write_cache

from classical import (
    DataError,
    Split,
    load_labeled,
    load_model,
    make_split,
    rerender,
    summary,
    sweep,
)
from classical.experiments.repeats import run_repeats
from classical.experiments.sweep import cv_folds

FAST = {  # one candidate each, so the test runs in seconds
    "lr": {"C": [0.1]},
    "svm-linear": {"C": [0.01]},
    "svm-rbf": {"C": [1.0]},
    "rf": {"n_estimators": [20]},
    "knn": {"n_neighbors": [3]},
    "dense": {"learning_rate": [0.01]},
}
ROW_FIELDS = {
    "name",
    "kind",
    "test_accuracy",
    "test_accuracy_ci",
    "macro_f1",
    "macro_f1_ci",
    "balanced_accuracy",
    "cv_mean",
    "cv_std",
    "fit_seconds",
    "fit_seconds_with_embedding",
    "predict_ms_per_image",
    "head_ms_per_image",
    "model_bytes",
    "params",
    "model_path",
    "log_loss",
    "test_predictions",
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("sweep")
    X, labels = blobs(per_class=40)
    write_cache(folder / "c.h5", X, labels)
    report = sweep(folder / "c.h5", folder / "run", grids=FAST, cv=3, n_jobs=2, progress=False, embedding_cost=False)
    return folder, report


def test_report_contract(swept: tuple[Path, dict]) -> None:
    folder, report = swept
    stored = json.loads((folder / "run" / "report.json").read_text())
    assert stored == json.loads(json.dumps(report))
    assert report["backbone"].startswith("mobilenet_v2-1.0-96-random-")
    assert set(report["split"]) >= {"id", "n_train", "n_val", "n_test"}
    counts = (report["split"]["n_train"], report["split"]["n_val"], report["split"]["n_test"])
    assert sum(counts) == 120 and all(abs(n - m) <= 1 for n, m in zip(counts, (84, 18, 18)))  # 70/15/15
    stored_split = json.loads((folder / "run" / "split.json").read_text())
    if counts != (84, 18, 18):  # only near-duplicate clusters kept together can move the counts off 70/15/15
        assert stored_split["near_duplicates_grouped"] and stored_split["near_duplicate_clusters"] > 0
    assert [row["name"] for row in report["models"]] == ["lr", "svm-linear", "svm-rbf", "rf", "knn", "dense"]
    for row in report["models"]:
        assert set(row) >= ROW_FIELDS, row["name"]
        assert row["kind"] == ("neural" if row["name"] == "dense" else "classical")
        assert row["test_accuracy"] >= 0.9, row  # the blobs are separable
        assert row["fit_seconds"] > 0 and row["head_ms_per_image"] > 0 and row["model_bytes"] > 0
        assert row["predict_ms_per_image"] is None and row["fit_seconds_with_embedding"] is None  # backbone not timed
        assert sum(map(sum, row["confusion_matrix"])) == counts[2]  # every model scored on the same test images
        low, high = row["test_accuracy_ci"]
        assert low <= row["test_accuracy"] <= high and 0 <= low < high <= 1
        assert row["macro_f1_ci"][0] <= row["macro_f1"] <= row["macro_f1_ci"][1]
        predictions = np.array(row["test_predictions"])
        assert (
            len(predictions) == counts[2]
            and (predictions == report["split"]["test_labels"]).mean() == row["test_accuracy"]
        )
    assert report["split"]["test_paths"] == sorted(report["split"]["test_paths"])
    assert len(set(report["split"]["test_paths"])) == counts[2]
    assert report["embedding"]["ms_per_image"] is None and "not measured" in report["embedding"]["method"]
    compared = report["comparison"]
    assert (
        compared["neural"] == "dense" and compared["n_test"] == counts[2] and isinstance(compared["significant"], bool)
    )
    assert "McNemar" in compared["test"] and 0 <= compared["p_value"] <= 1
    dense = report["models"][-1]
    assert dense["cv_std"] is None and "validation" in dense["selection"] and dense["params"]["learning_rate"] == 0.01
    assert "learning_rate ∈ {0.01}" in dense["selection"] and "patience 10" in dense["selection"]
    assert "seed 0" in dense["selection"]
    assert report["models"][0]["cv_std"] is not None and "3-fold" in report["models"][0]["selection"]


def test_report_files_and_plots(swept: tuple[Path, dict]) -> None:
    run = swept[0] / "run"
    with open(run / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["lr", "svm-linear", "svm-rbf", "rf", "knn", "dense"]
    markdown = (run / "report.md").read_text()
    assert "| model | kind | test acc [95% CI] |" in markdown and "Best on the test split" in markdown
    assert "Wilson" in markdown and "bootstrap" in markdown and "McNemar" in markdown
    assert {"test_accuracy_lo", "test_accuracy_hi", "head_ms_per_image"} <= set(rows[0])
    for name in ("accuracy_vs_fit_time", "confusion_matrix", "per_class_f1"):
        assert (run / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_are_saved_with_their_metadata(swept: tuple[Path, dict]) -> None:
    _folder, report = swept
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
    again = sweep(
        folder / "c.h5",
        folder / "run",
        models=["lr"],
        grids={"lr": {"C": [1.0]}},
        cv=3,
        progress=False,
        embedding_cost=False,
    )
    assert again["split"]["id"] == report["split"]["id"]
    assert [row["name"] for row in again["models"]] == ["svm-linear", "svm-rbf", "rf", "knn", "dense", "lr"]
    assert again["models"][-1]["params"] == {"clf__C": 1.0}
    rendered = rerender(folder / "run")
    assert rendered["models"] == json.loads(json.dumps(again["models"]))


def test_halving_search(tmp_path: Path) -> None:
    X, labels = blobs(per_class=30)
    write_cache(tmp_path / "c.h5", X, labels)
    report = sweep(
        tmp_path / "c.h5",
        tmp_path / "run",
        models=["lr"],
        search="halving",
        grids={"lr": {"C": [0.01, 0.1, 1.0, 10.0]}},
        cv=3,
        progress=False,
        embedding_cost=False,
    )
    assert "halving search over 4 candidates" in report["models"][0]["selection"]


def test_small_class_falls_back_to_fewer_folds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    X, labels = blobs(per_class=30)
    keep = [i for i, label in enumerate(labels) if label != "cat" or i < 64]  # 4 cats
    write_cache(tmp_path / "c.h5", X[keep], [labels[i] for i in keep])
    with caplog.at_level(logging.WARNING):
        report = sweep(
            tmp_path / "c.h5", tmp_path / "run", models=["lr"], grids=FAST, cv=5, progress=False, embedding_cost=False
        )
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


def test_repeats_store_their_splits_and_rank_the_models(tmp_path: Path) -> None:
    X, labels = blobs(per_class=30, spread=4.0)  # overlapping blobs: accuracies move from split to split
    write_cache(tmp_path / "c.h5", X, labels)
    grids = {"lr": {"C": [0.1]}, "knn": {"n_neighbors": [5]}}
    report = sweep(
        tmp_path / "c.h5",
        tmp_path / "run",
        models=["lr", "knn"],
        grids=grids,
        cv=3,
        seed=7,
        repeats=3,
        progress=False,
        embedding_cost=False,
    )
    repeats = report["repeats"]
    assert repeats["k"] == 3 and repeats["seeds"] == [7, 8, 9] and repeats["seconds"] > 0
    assert sorted(p.name for p in (tmp_path / "run" / "repeats").iterdir()) == [
        "split-7.json",
        "split-8.json",
        "split-9.json",
    ]
    data = load_labeled(tmp_path / "c.h5")
    ids = set()
    for seed, info in zip(repeats["seeds"], repeats["splits"]):
        stored = Split.load(tmp_path / "run" / "repeats" / f"split-{seed}.json")
        made = make_split(data.paths, data.sha256, data.y, data.class_names, backbone_key=data.backbone_key, seed=seed)
        assert stored.assignment == made.assignment and stored.id == info["id"]  # exactly as make_split splits
        assert stored.counts() == {"train": 62, "val": 14, "test": 14}
        ids.add(stored.id)
    assert len(ids) == 3
    assert Split.load(tmp_path / "run" / "repeats" / "split-7.json").id == report["split"]["id"]  # seed 7 = the run's
    assert repeats["reused"]["models"] == ["lr", "knn"]  # so its accuracies are the sweep's rows, not fitted again
    assert [repeats["models"][row["name"]]["accuracies"][0] for row in report["models"]] == [
        row["test_accuracy"] for row in report["models"]
    ]
    for name in ("lr", "knn"):
        stats = repeats["models"][name]
        assert len(stats["accuracies"]) == 3 and stats["mean"] == pytest.approx(np.mean(stats["accuracies"]))
        assert stats["std"] == pytest.approx(np.std(stats["accuracies"], ddof=1))
    best_per_split = np.max([repeats["models"][n]["accuracies"] for n in ("lr", "knn")], axis=0)
    for name in ("lr", "knn"):
        assert repeats["models"][name]["first"] == int(
            np.sum(np.isclose(repeats["models"][name]["accuracies"], best_per_split))
        )
    refitted = run_repeats(
        data,
        ["lr", "knn"],
        grids,
        k=1,
        seed=7,
        fractions=(0.7, 0.15, 0.15),
        cv=3,
        search="grid",
        n_jobs=1,
        run=tmp_path / "run",
        progress=False,
    )
    assert refitted["reused"] is None  # fitting again gives the sweep's models: reusing them changes nothing
    assert {name: stats["accuracies"] for name, stats in refitted["models"].items()} == {
        row["name"]: [row["test_accuracy"]] for row in report["models"]
    }
    assert sorted(p.name for p in (tmp_path / "run").glob("*.model")) == ["knn.model", "lr.model"]  # none per repeat
    assert "Repeats: 3 re-splits" in (tmp_path / "run" / "report.md").read_text()
    assert "ranked first" in summary(report) and "Over 3 re-splits" in summary(report)
    with pytest.raises(ValueError, match="repeats must be"):
        sweep(tmp_path / "c.h5", tmp_path / "run", models=["lr"], repeats=-1)


def test_backbone_timing_from_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedding block: real decoded test images when reachable, else synthetic ones; rows add it to their costs."""
    from classical.experiments import costs

    seen: list[np.ndarray] = []

    class SlowEncoder:
        runtime, precision, key = "fake", "fp32", "k"

        def __call__(self, images: np.ndarray) -> np.ndarray:
            seen.append(images)
            time.sleep(0.002 * len(images))  # 2 ms per image
            return np.zeros((len(images), 4), np.float32)

    monkeypatch.setattr(costs, "_encoder", lambda provenance, runtime: SlowEncoder())
    X, labels = blobs(per_class=20)
    write_cache(tmp_path / "c.h5", X, labels)
    report = sweep(tmp_path / "c.h5", tmp_path / "run", models=["lr", "knn"], grids=FAST, cv=3, progress=False)
    embedding = report["embedding"]
    assert embedding["ms_per_image"] == pytest.approx(2.0, rel=0.5) and embedding["runtime"] == "fake fp32"
    assert "synthetic" in embedding["pixels"] and seen[0].shape == (32, 96, 96, 3) and seen[0].dtype == np.uint8
    assert embedding["rows"] == 60 and embedding["seconds"] == pytest.approx(60 * embedding["ms_per_image"] / 1000)
    assert embedding["amortised_over"] == 2
    n_trainval = report["split"]["n_train"] + report["split"]["n_val"]
    for row in report["models"]:
        assert row["predict_ms_per_image"] == pytest.approx(embedding["ms_per_image"] + row["head_ms_per_image"])
        assert row["fit_seconds_with_embedding"] == pytest.approx(
            row["fit_seconds"] + n_trainval * embedding["ms_per_image"] / 1000 / 2
        )

    # reachable files: the test images themselves, decoded at the backbone's size
    from conftest import make_dataset

    photos = tmp_path / "photos"
    files = make_dataset(photos, per_class=3)
    data = load_labeled(tmp_path / "c.h5")
    data.provenance = {**data.provenance, "source": str(photos)}
    seen.clear()
    block = costs.measure_embedding(data, [str(f.relative_to(photos)) for f in files], n_trainval=10, min_seconds=0.05)
    assert "9 test images" in block["pixels"] and block["decode_ms_per_image"] > 0
    assert seen[0].shape == (32, 96, 96, 3) and len({image.tobytes() for image in seen[0]}) == 9


def test_backbone_that_cannot_load_leaves_costs_null(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from classical.experiments import costs

    def broken(provenance: dict, runtime: str) -> None:
        raise FileNotFoundError("weights file moved")

    monkeypatch.setattr(costs, "_encoder", broken)
    X, labels = blobs(per_class=20)
    write_cache(tmp_path / "c.h5", X, labels)
    report = sweep(tmp_path / "c.h5", tmp_path / "run", models=["lr"], grids=FAST, cv=3, progress=False)
    assert report["embedding"]["ms_per_image"] is None and "weights file moved" in report["embedding"]["method"]
    assert report["models"][0]["predict_ms_per_image"] is None and report["models"][0]["head_ms_per_image"] > 0
    assert "-" in summary(report)
