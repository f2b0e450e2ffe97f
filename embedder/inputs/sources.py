"""Listing the images to embed: a folder per class, an unlabeled folder, a CSV/text list, or one file.

Listing is recursive and deterministic (sorted by relative path); hidden files and folders
(names starting with ".") are skipped. Labels of a class folder come from the first folder
level under the root, so `daisy/2019/x.jpg` is a daisy.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from embedder.errors import SourceError
from embedder.inputs.decoding import IMAGE_EXTENSIONS

LABEL_MODES = ("auto", "folders", "none")
LIST_EXTENSIONS = (".csv", ".txt", ".lst")


@dataclass(frozen=True)
class SourceItem:
    """One image to embed: its path on disk (or URI, for the Ray engine), its path relative to the source, its label."""

    path: Path | str
    rel: str
    label: str | None


@dataclass(frozen=True)
class Source:
    """A listed source: its root, its items in deterministic order and its class names."""

    root: Path
    items: list[SourceItem]
    class_names: list[str]

    @property
    def labeled(self) -> bool:
        return bool(self.class_names)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_source(source: str | os.PathLike, *, labels: str = "auto") -> Source:
    """List a folder, a .csv/.txt list of paths or a single image file.

    labels: "auto" takes class folders when every image sits in a sub-folder of the root,
    "folders" requires that, "none" ignores folders (lists keep their own label column).
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}. Received: labels={labels!r}")
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(
            f"source '{path}' does not exist: pass a folder of images (one sub-folder per class for "
            "labels), a .csv/.txt list of image paths, or an image file."
        )
    if path.is_dir():
        return _list_folder(path, labels=labels)
    if path.suffix.lower() in LIST_EXTENSIONS:
        return _list_file(path)
    if is_image_name(path.name):
        return Source(root=path.parent, items=[SourceItem(path, path.name, None)], class_names=[])
    raise SourceError(
        f"source '{path}' is a file but neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor a list "
        f"({', '.join(LIST_EXTENSIONS)}); pass a folder, a list of paths or an image."
    )


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly, plus every image in the folders named."""
    paths: list[Path] = []
    for entry in inputs:
        listed = list_source(entry, labels="none")
        paths.extend(item.path for item in listed.items)
    return paths


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """Relative posix paths of image files and of other files under root, hidden entries skipped."""
    images: list[str] = []
    others: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_folder = Path(folder).relative_to(root)
        for name in files:
            if name.startswith("."):
                continue
            rel = (rel_folder / name).as_posix()
            (images if is_image_name(name) else others).append(rel)
    return sorted(images), sorted(others)


def _list_folder(root: Path, *, labels: str) -> Source:
    images, others = _walk(root)
    items, class_names = folder_items(str(root), images, others, labels=labels, join=lambda rel: root / rel)
    return Source(root=root, items=items, class_names=class_names)


def folder_items(
    where: str, images: list[str], others: list[str], *, labels: str, join: Callable[[str], Path | str]
) -> tuple[list[SourceItem], list[str]]:
    """Items and class names of a folder whose image files (relative paths, sorted) are `images`.

    `join(rel)` makes an item's path; `where` names the folder in errors. Shared by local folders
    and the URIs the Ray engine lists.
    """
    if not images:
        if not others:
            raise SourceError(
                f"folder '{where}' is empty: put images in it (one sub-folder per class to get labels)."
            )
        examples = ", ".join(others[:3])
        raise SourceError(
            f"folder '{where}' has no images: {len(others)} file(s) (e.g. {examples}), none with an image "
            f"extension ({', '.join(IMAGE_EXTENSIONS)})."
        )
    top_level = [rel for rel in images if "/" not in rel]
    use_folders = labels == "folders" or (labels == "auto" and not top_level)
    if use_folders and top_level:
        raise SourceError(
            f"folder '{where}' has {len(top_level)} image(s) outside class folders (e.g. {top_level[0]}); "
            "move them into a sub-folder named after their class, or pass --labels none."
        )
    items = [SourceItem(join(rel), rel, rel.split("/", 1)[0] if use_folders else None) for rel in images]
    class_names = sorted({item.label for item in items if item.label is not None})
    return items, class_names


def _list_file(list_path: Path) -> Source:
    """Read `path[,label]` rows; a CSV header naming a `path` column (and `label`/`class`) is honoured."""
    root = list_path.parent
    with open(list_path, newline="", encoding="utf-8") as handle:
        if list_path.suffix.lower() == ".csv":
            rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
        else:
            rows = [[line.strip()] for line in handle if line.strip() and not line.startswith("#")]
    path_col, label_col = 0, 1
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "path" in header:
        path_col = header.index("path")
        label_col = next((header.index(name) for name in ("label", "class") if name in header), None)
        rows = rows[1:]
    if not rows:
        raise SourceError(f"list '{list_path}' is empty: write one image path per line (optionally ',label').")
    items = []
    for row in rows:
        rel = Path(row[path_col].strip()).as_posix()
        label = row[label_col].strip() if label_col is not None and label_col < len(row) else ""
        items.append(SourceItem(root / rel, rel, label or None))
    seen: dict[str, SourceItem] = {}
    for item in items:
        if item.rel in seen:
            raise SourceError(f"list '{list_path}' names '{item.rel}' twice; list each image once.")
        seen[item.rel] = item
    labeled = [item for item in items if item.label is not None]
    if labeled and len(labeled) != len(items):
        missing = next(item.rel for item in items if item.label is None)
        raise SourceError(
            f"list '{list_path}' labels {len(labeled)} of {len(items)} images (e.g. '{missing}' has none); "
            "label every row or none."
        )
    class_names = sorted({item.label for item in labeled})
    return Source(root=root, items=items, class_names=class_names)
