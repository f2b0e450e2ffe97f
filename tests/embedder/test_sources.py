"""Listing sources: class folders, flat folders, lists, single files, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder import SourceError
from embedder import list_source


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_class_folders_give_sorted_labels_recursively(tmp_path: Path) -> None:
    for rel in ["b/2.jpg", "a/z.png", "b/sub/1.JPG", "a/.hidden.jpg", ".git/x.jpg", "a/notes.txt"]:
        touch(tmp_path / rel)
    source = list_source(tmp_path)
    assert [(item.rel, item.label) for item in source.items] == [("a/z.png", "a"), ("b/2.jpg", "b"), ("b/sub/1.JPG", "b")]
    assert source.class_names == ["a", "b"]
    assert source.items[0].path == tmp_path / "a/z.png"


def test_flat_folder_is_unlabeled(tmp_path: Path) -> None:
    touch(tmp_path / "x.jpg")
    touch(tmp_path / "more/y.webp")
    source = list_source(tmp_path)
    assert [(item.rel, item.label) for item in source.items] == [("more/y.webp", None), ("x.jpg", None)]
    assert not source.labeled


def test_labels_folders_refuses_images_outside_class_folders(tmp_path: Path) -> None:
    touch(tmp_path / "x.jpg")
    touch(tmp_path / "cat/y.jpg")
    with pytest.raises(SourceError, match=r"1 image\(s\) outside class folders \(e.g. x.jpg\)"):
        list_source(tmp_path, labels="folders")


def test_labels_none_ignores_class_folders(tmp_path: Path) -> None:
    touch(tmp_path / "cat/y.jpg")
    assert list_source(tmp_path, labels="none").items[0].label is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("path,label\nimgs/a.jpg,cat\nimgs/b.jpg,dog\n", [("imgs/a.jpg", "cat"), ("imgs/b.jpg", "dog")]),
        ("imgs/a.jpg,cat\nimgs/b.jpg,dog\n", [("imgs/a.jpg", "cat"), ("imgs/b.jpg", "dog")]),
        ("label,path\ncat,imgs/a.jpg\n", [("imgs/a.jpg", "cat")]),
        ("path\nimgs/a.jpg\n", [("imgs/a.jpg", None)]),
    ],
    ids=["header", "no-header", "columns-swapped", "no-labels"],
)
def test_csv_lists(tmp_path: Path, content: str, expected: list) -> None:
    (tmp_path / "list.csv").write_text(content)
    source = list_source(tmp_path / "list.csv")
    assert [(item.rel, item.label) for item in source.items] == expected
    assert source.items[0].path == tmp_path / "imgs/a.jpg"


def test_text_list(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("# photos\nb.jpg\n\na.jpg\n")
    assert [item.rel for item in list_source(tmp_path / "list.txt").items] == ["b.jpg", "a.jpg"]


def test_single_image_file(tmp_path: Path) -> None:
    source = list_source(touch(tmp_path / "one.png"))
    assert [item.rel for item in source.items] == ["one.png"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
        (lambda p: touch(p / "docs/readme.md").parent, r"has no images: 1 file\(s\) \(e.g. readme.md\)"),
        (lambda p: touch(p / "model.bin"), "neither an image"),
        (lambda p: touch(p / "l.csv", b"path,label\n"), "is empty"),
        (lambda p: touch(p / "l.csv", b"a.jpg,cat\nb.jpg\n"), r"labels 1 of 2 images \(e.g. 'b.jpg' has none\)"),
        (lambda p: touch(p / "l.txt", b"a.jpg\na.jpg\n"), "names 'a.jpg' twice"),
    ],
    ids=["missing", "empty-folder", "no-images", "other-file", "empty-list", "partial-labels", "duplicate"],
)
def test_bad_sources_name_the_problem(tmp_path: Path, setup, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        list_source(setup(tmp_path))
