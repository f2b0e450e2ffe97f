"""Off-the-shelf ImageNet top-k: class-name files, and real predictions on real photos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from embedder import EmbedderError, load_class_names, predict_imagenet


@pytest.mark.parametrize("lines", [1000, 1001])
def test_text_label_files(tmp_path: Path, lines: int) -> None:
    names = (["background"] if lines == 1001 else []) + [f"class {i}" for i in range(1000)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    loaded = load_class_names(tmp_path / "labels.txt")
    assert len(loaded) == 1000 and loaded[0] == "class 0" and loaded[999] == "class 999"


def test_keras_json_index(tmp_path: Path) -> None:
    index = {str(i): [f"n{i:08d}", f"name{i}"] for i in range(1000)}
    (tmp_path / "imagenet_class_index.json").write_text(json.dumps(index))
    assert load_class_names(tmp_path / "imagenet_class_index.json")[7] == "name7"


def test_wrong_label_file(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(EmbedderError, match="has 2 names; expected 1000"):
        load_class_names(tmp_path / "labels.txt")


def test_labels_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "l.txt").write_text("\n".join(f"c{i}" for i in range(1000)))
    monkeypatch.setenv("EMBEDDER_IMAGENET_LABELS", str(tmp_path / "l.txt"))
    assert load_class_names()[1] == "c1"


@pytest.mark.real_data
@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_real_photos_get_their_expected_classes(
    shared: Path, keras_home: Path, monkeypatch: pytest.MonkeyPatch, resize: str
) -> None:
    from conftest import IMAGENET_LABELS, IMAGENET_PHOTOS

    monkeypatch.setenv("KERAS_HOME", str(keras_home))  # the unchanged weights="imagenet" default, offline
    with open(IMAGENET_PHOTOS / "expected.csv") as handle:
        expected = {row["file"]: {int(i) for i in row["expected_indices"].split("|")} for row in csv.DictReader(handle)}
    predictions = predict_imagenet([IMAGENET_PHOTOS], top=5, resize=resize, labels=IMAGENET_LABELS)
    by_file = {Path(p.path).name: p for p in predictions}
    assert set(by_file) == set(expected)
    top1 = 0
    for name, indices in expected.items():
        top = [c["index"] for c in by_file[name].top]
        assert indices & set(top), f"{name}: expected {indices} in the top 5, got {by_file[name].top}"
        top1 += top[0] in indices
        assert by_file[name].top[0]["prob"] >= by_file[name].top[1]["prob"]
    assert top1 >= 6, f"top-1 right for only {top1} of 8 photos"
