"""The best model's most confident test errors and their nearest training photos (report.json, report.md/.html)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_cache

from classical.data import Split
from classical.report import add_rows, errors_nearest_train, new_report, score, write_report
from classical.report.neighbours import nearest_reading, nearest_rows
from embedder import normalise

NAMES = ["ant", "bee"]
TEST = [f"{NAMES[i // 3]}/t{i}.jpg" for i in range(6)]  # t0-t2 ant, t3-t5 bee
TEST_LABELS = [0, 0, 0, 1, 1, 1]
# the probability of the predicted class: t0, t1, t3, t4 wrong (0.6, 0.9, 0.7, 0.95); t2, t5 right
LR = {"predicted": [1, 1, 0, 0, 0, 1], "confidence": [0.6, 0.9, 0.99, 0.7, 0.95, 0.8]}


def row(name: str, kind: str, predicted: list[int], confidence: list[float]) -> dict[str, Any]:
    """A report row scored on the test photos from the class probabilities these predictions imply."""
    proba = np.array([[c, 1 - c] if p == 0 else [1 - c, c] for p, c in zip(predicted, confidence)])
    return {
        "name": name,
        "kind": kind,
        "description": name,
        **score(np.array(TEST_LABELS), proba, NAMES),
        "cv_mean": None,
        "cv_std": None,
        "selection": "constructed",
        "fit_seconds": 1.0,
        "fit_seconds_with_embedding": None,
        "predict_ms_per_image": None,
        "head_ms_per_image": None,
        "model_bytes": 1024,
        "params": {},
        "model_path": "",
    }


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]]:
    """A cache of 6 test, 6 validation and 40 train rows, its split, and a report with one classical row.

    Each validation row is a near copy of a test row (and each test row is its own copy): searched
    among all rows, a test photo's nearest photos would be those, not training photos.
    """
    rng = np.random.default_rng(0)
    dim = 8
    X_test = rng.uniform(0, 1, (6, dim))
    X_val = X_test + rng.uniform(0, 0.01, (6, dim))
    X_train = rng.uniform(0, 1, (40, dim))
    train = [f"{NAMES[i % 2]}/train{i:02d}.jpg" for i in range(40)]
    val = [f"{NAMES[i // 3]}/v{i}.jpg" for i in range(6)]
    # rows interleaved, so that train rows are not one run of the cache
    order = rng.permutation(52)
    paths = np.array([*TEST, *val, *train])[order].tolist()
    X = np.concatenate([X_test, X_val, X_train])[order]
    labels = [path.split("/")[0] for path in paths]
    cache = tmp_path / "c.h5"
    key = write_cache(cache, X.astype(np.float32), labels, paths=paths)
    assignment = {**dict.fromkeys(TEST, "test"), **dict.fromkeys(val, "val"), **dict.fromkeys(train, "train")}
    folder = tmp_path / "run"
    folder.mkdir()
    Split("s1", 0, (0.7, 0.15, 0.15), key, assignment).save(folder / "split.json")
    report = new_report(
        backbone=key,
        cache=str(cache),
        class_names=NAMES,
        split={
            "id": "s1",
            "n_train": 40,
            "n_val": 6,
            "n_test": 6,
            "seed": 0,
            "fractions": [0.7, 0.15, 0.15],
            "test_paths": TEST,
            "test_labels": TEST_LABELS,
        },
    )
    add_rows(report, [row("lr", "classical", LR["predicted"], LR["confidence"])])
    arrays = {"X_test": X_test, "X_train": X_train, "train": np.array(train)}
    return folder, report, arrays


def expected_nearest(arrays: dict[str, np.ndarray], test_index: int, k: int = 4) -> list[tuple[str, float]]:
    """Brute force: the k train photos most similar to test photo `test_index`, by the audit's similarity."""
    similarity = normalise(arrays["X_train"]) @ normalise(arrays["X_test"][[test_index]])[0]
    best = np.argsort(-similarity, kind="stable")[:k]
    return [(str(arrays["train"][i]), float(similarity[i])) for i in best]


def test_a_neural_rows_nearest_photos_come_from_the_train_rows_only(run) -> None:
    folder, report, arrays = run
    report["models"][0]["kind"] = "neural"  # a head trained on the train rows (validation rows only stop it)
    record = errors_nearest_train(report, folder)
    assert record is not None and record["skipped"] is None and record["train_rows"] == 40
    train = set(arrays["train"].tolist())
    for error in record["errors"]:
        assert len(error["nearest"]) == 4
        assert {near["path"] for near in error["nearest"]} <= train, error
        # the photo's own near copy (a validation row) is far more similar than any training photo
        assert all(near["similarity"] < 0.999 for near in error["nearest"])


def test_a_classical_rows_nearest_photos_include_the_validation_rows_it_was_refit_on(run) -> None:
    folder, report, _ = run
    record = errors_nearest_train(report, folder)
    assert record["train_rows"] == 46 and "train and val rows" in record["search"]
    for error in record["errors"]:
        nearest = error["nearest"][0]  # the test photo's near copy, a validation row
        assert "/v" in nearest["path"] and nearest["similarity"] > 0.999, error
        assert not {near["path"] for near in error["nearest"]} & set(TEST)


def test_nearest_photos_are_ordered_by_similarity(run) -> None:
    folder, report, arrays = run
    report["models"][0]["kind"] = "neural"
    record = errors_nearest_train(report, folder)
    for error in record["errors"]:
        found = [(near["path"], near["similarity"]) for near in error["nearest"]]
        expected = expected_nearest(arrays, TEST.index(error["path"]))
        assert [path for path, _ in found] == [path for path, _ in expected]
        assert [s for _, s in found] == pytest.approx([s for _, s in expected], abs=1e-4)
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
        assert all(near["label"] == near["path"].split("/")[0] for near in error["nearest"])
    # a block at a time gives the same answer as one block
    assert errors_nearest_train(report, folder, block_rows=5)["errors"] == record["errors"]


def test_the_most_confident_errors_are_chosen(run) -> None:
    folder, report, _ = run
    record = errors_nearest_train(report, folder, max_errors=3)
    assert record["model"] == "lr" and record["errors_total"] == 4
    assert [error["path"] for error in record["errors"]] == ["bee/t4.jpg", "ant/t1.jpg", "bee/t3.jpg"]
    assert [error["confidence"] for error in record["errors"]] == [0.95, 0.9, 0.7]
    assert [(error["label"], error["predicted"]) for error in record["errors"]] == [
        ("bee", "ant"),
        ("ant", "bee"),
        ("bee", "ant"),
    ]
    everything = errors_nearest_train(report, folder)
    assert [error["path"] for error in everything["errors"]] == ["bee/t4.jpg", "ant/t1.jpg", "bee/t3.jpg", "ant/t0.jpg"]


def test_nearest_rows_merges_blocks_and_pads_when_short() -> None:
    Q = normalise(np.array([[1.0, 0.0], [0.0, 1.0]]))
    Z = normalise(np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]]))
    blocks = iter([(np.array([7]), Z[:1]), (np.array([3, 9]), Z[1:])])
    sims, rows = nearest_rows(Q, blocks, 4)
    assert rows.tolist() == [[7, 9, 3, -1], [3, 9, 7, -1]]
    assert np.all(np.diff(sims[:, :3], axis=1) <= 0) and np.all(np.isneginf(sims[:, 3]))


def test_the_section_is_in_report_json_md_and_html(run) -> None:
    folder, report, _ = run
    write_report(report, folder)
    stored = json.loads((folder / "report.json").read_text())["errors_nearest_train"]
    assert stored["model"] == "lr" and len(stored["errors"]) == 4
    first = stored["errors"][0]
    page = (folder / "report.html").read_text()
    assert 'id="errors-nearest-train"' in page
    section = page.split('id="errors-nearest-train"')[1].split("<h2")[0]
    assert section.count('class="pair nearest"') == 4
    assert "test: bee → ant (0.95)" in section
    assert all(f"{near['label']} {near['similarity']:.3f}" in section for near in first["nearest"])
    assert f'<p id="errors-nearest-reading">{nearest_reading(stored)}</p>' in section.replace("&#x27;", "'")
    markdown = (folder / "report.md").read_text()
    assert nearest_reading(stored) in markdown
    assert "## Why lr erred: the training photos nearest its most confident test errors" in markdown
    line = next(line for line in markdown.splitlines() if line.startswith(f"| `{first['path']}`"))
    assert "bee → ant (0.95)" in line
    assert all(f"`{near['path']}` ({near['label']}, {near['similarity']:.3f})" in line for near in first["nearest"])


def test_the_reading_counts_errors_among_their_predicted_class() -> None:
    def error(predicted: str, labels: str) -> dict[str, Any]:
        return {"predicted": predicted, "nearest": [{"label": label} for label in labels]}

    record = {
        "model": "lr",
        "k": 4,
        "errors_total": 30,
        "errors": [error("a", "aaab"), error("a", "aabb"), error("b", "b")],
    }
    assert nearest_reading(record) == (
        "The 3 most confident of the 30 test errors of lr (true → predicted, the model's probability), each with its "
        "4 nearest training photos (label, similarity). For 2 of the 3, most of those training photos are of the "
        "predicted class: the photo looks like the training photos of that class."
    )
    assert nearest_reading(record | {"errors_total": 3}).startswith("All 3 test errors of lr, most confident first")


def test_recomputed_when_a_finetuned_row_becomes_the_best(run) -> None:
    folder, report, _ = run
    write_report(report, folder)
    first = json.loads((folder / "report.json").read_text())["errors_nearest_train"]
    # the fine-tuning adds its row and writes the report, as `classical finetune` does
    add_rows(report, [row("finetune-a", "neural", [0, 0, 0, 1, 1, 0], [0.8, 0.9, 0.9, 0.9, 0.9, 0.85])])
    write_report(report, folder)
    record = json.loads((folder / "report.json").read_text())["errors_nearest_train"]
    assert record["model"] == "finetune-a" and record["kind"] == "neural"
    assert [error["path"] for error in record["errors"]] == ["bee/t5.jpg"]
    assert record["computed_for"] != first["computed_for"] and len(record["errors"][0]["nearest"]) == 4
    assert "## Why finetune-a erred" in (folder / "report.md").read_text()


def test_kept_while_the_best_row_and_its_errors_stay(run) -> None:
    """Rewriting the report with the same best row keeps the record: the cache is not read again."""
    folder, report, _ = run
    write_report(report, folder)
    first = json.loads((folder / "report.json").read_text())["errors_nearest_train"]
    cache = Path(report["cache"])
    shutil.move(cache, cache.with_name("elsewhere.h5"))
    write_report(json.loads((folder / "report.json").read_text()), folder)
    assert json.loads((folder / "report.json").read_text())["errors_nearest_train"] == first


def test_without_the_cache_it_says_why(run, caplog: pytest.LogCaptureFixture) -> None:
    folder, report, _ = run
    report["cache"] = str(folder / "missing.h5")
    with caplog.at_level("INFO", logger="classical.report.neighbours"):
        write_report(report, folder)
    record = json.loads((folder / "report.json").read_text())["errors_nearest_train"]
    assert record["skipped"].startswith("no embedding cache of the run is here")
    assert all(error["nearest"] == [] for error in record["errors"]) and len(record["errors"]) == 4
    assert "No neighbours: no embedding cache" in (folder / "report.html").read_text()
    assert any("no nearest training photos" in message for message in caplog.messages)


def test_no_record_without_test_predictions(run) -> None:
    folder, report, _ = run
    for model in report["models"]:
        del model["test_predictions"]
    assert errors_nearest_train(report, folder) is None
