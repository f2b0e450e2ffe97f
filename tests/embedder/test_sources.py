"""Listing sources: class folders, flat folders, lists, single files, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder import SourceError, list_source


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_class_folders_give_sorted_labels_recursively(tmp_path: Path) -> None:
    for rel in ["b/2.jpg", "a/z.png", "b/sub/1.JPG", "a/.hidden.jpg", ".git/x.jpg", "a/notes.txt"]:
        touch(tmp_path / rel)
    source = list_source(tmp_path)
    assert [(item.rel, item.label) for item in source.items] == [
        ("a/z.png", "a"),
        ("b/2.jpg", "b"),
        ("b/sub/1.JPG", "b"),
    ]
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
        (lambda p: touch(p / "l.txt", b"a.jpg\na.jpg\n"), r"names 'a.jpg' twice \(lines 1 and 2\)"),
        (
            lambda p: touch(p / "l.csv", b"path,label\na.jpg,cat\nb\x00.jpg,dog\n"),
            r"l.csv' line 3: contains a NUL byte",
        ),
        (lambda p: touch(p / "l.txt", "a.jpg\n".encode("utf-16")), r"l.txt' line 1: contains a NUL byte.*UTF-16"),
        (lambda p: touch(p / "l.csv", b"a.jpg,cat\n\nb.jpg,caf\xe9\n"), r"l.csv' line 3: byte 0xe9 is not UTF-8"),
        (lambda p: touch(p / "l.csv", b"label,path\ncat,a.jpg\ndog\n"), r"l.csv' line 3: no image path in column 2"),
        (
            lambda p: touch(p / "l.csv", b'a.jpg,cat\n"b.jpg' + b"x" * 200_000 + b'",dog\n'),
            r"l.csv' line 2: not valid CSV",
        ),
    ],
    ids=[
        "missing",
        "empty-folder",
        "no-images",
        "other-file",
        "empty-list",
        "partial-labels",
        "duplicate",
        "nul-byte",
        "utf-16",
        "not-utf-8",
        "missing-path",
        "huge-field",
    ],
)
def test_bad_sources_name_the_problem(tmp_path: Path, setup, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        list_source(setup(tmp_path))


def test_a_bom_does_not_hide_the_header(tmp_path: Path) -> None:
    touch(tmp_path / "l.csv", "path,label\na.jpg,cat\n".encode("utf-8-sig"))
    assert [(item.rel, item.label) for item in list_source(tmp_path / "l.csv").items] == [("a.jpg", "cat")]


def test_a_folder_link_loop_is_listed_once_and_named(tmp_path: Path) -> None:
    touch(tmp_path / "a/x.jpg")
    touch(tmp_path / "b/y.jpg")
    (tmp_path / "a/cycle").symlink_to("..")  # a loop: followed, it would list a/cycle/a/cycle/... 40 levels deep
    (tmp_path / "a/also-b").symlink_to("../b")  # a second way into a folder listed already
    source = list_source(tmp_path)
    assert [item.rel for item in source.items] == ["a/x.jpg", "b/y.jpg"]
    assert source.skipped == [
        "a/also-b: a link to 'b', a folder already listed; not followed",
        "a/cycle: a link to '.', a folder already listed; not followed",
    ]


def test_links_to_folders_outside_the_root_are_followed_once(tmp_path: Path) -> None:
    touch(tmp_path / "elsewhere/cats/z.jpg")
    (tmp_path / "elsewhere/cats/back").symlink_to(tmp_path / "photos")
    touch(tmp_path / "photos/dogs/d.jpg")
    (tmp_path / "photos/cats").symlink_to(tmp_path / "elsewhere/cats")
    (tmp_path / "photos/dogs/more-cats").symlink_to(tmp_path / "elsewhere/cats")
    source = list_source(tmp_path / "photos")
    assert [(item.rel, item.label) for item in source.items] == [("cats/z.jpg", "cats"), ("dogs/d.jpg", "dogs")]
    assert source.skipped == [
        "cats/back: a link to '.', a folder already listed; not followed",
        "dogs/more-cats: a link to 'cats', a folder already listed; not followed",
    ]
