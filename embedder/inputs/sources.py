"""Listing the images to embed: a folder per class, an unlabeled folder, a CSV/text list, or one file.

Listing is recursive and deterministic (sorted by relative path); hidden files and folders
(names starting with ".") are skipped. Links to folders are followed, but each real folder is
listed once: a link back to a folder already listed (a loop such as `a/cycle -> ..`, or a second
way to the same folder) is skipped and named in `Source.skipped`. Labels of a class folder come
from the first folder level under the root, so `daisy/2019/x.jpg` is a daisy.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from embedder.errors import SourceError
from embedder.inputs.decoding import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

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
    """A listed source: its root, its items in deterministic order, its class names, and what was not listed."""

    root: Path
    items: list[SourceItem]
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)  # folders not listed, each "rel: why"

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
        paths.extend(Path(item.path) for item in listed.items)
    return paths


def _walk(root: Path) -> tuple[list[str], list[str], list[str]]:
    """Relative posix paths of the image files and other files under root, and the folders skipped (with why).

    Hidden entries are skipped. Every real folder (device and inode) is listed once: the tree
    under root first, then the folders that links lead to, unless listed already.
    """
    images: list[str] = []
    others: list[str] = []
    skipped: list[str] = []
    listed: dict[tuple[int, int], str] = {}  # real folder -> the relative path it is listed under
    tops = [(root, PurePosixPath("."))]  # root, then each link to a folder, walked in turn

    def visit(path: Path, rel: PurePosixPath) -> bool:
        """Record a folder as listed under `rel`, or say why it is not (already listed, unreadable)."""
        try:
            identity = _identity(path)
        except OSError as exc:
            skipped.append(f"{rel}: cannot read it ({exc.strerror or exc}); not listed")
            return False
        if identity in listed:
            skipped.append(f"{rel}: a link to '{listed[identity]}', a folder already listed; not followed")
            return False
        listed[identity] = rel.as_posix()
        return True

    while tops:
        top, top_rel = tops.pop(0)
        if not visit(top, top_rel):
            continue

        def unreadable(exc: OSError, top: Path = top, top_rel: PurePosixPath = top_rel) -> None:
            rel = top_rel / Path(exc.filename).relative_to(top)
            skipped.append(f"{rel}: cannot list it ({exc.strerror or exc}); not listed")

        for folder, dirs, files in os.walk(top, onerror=unreadable):
            rel_folder = top_rel / Path(folder).relative_to(top)
            kept = []
            for name in sorted(d for d in dirs if not d.startswith(".")):
                if os.path.islink(os.path.join(folder, name)):
                    tops.append(
                        (Path(folder) / name, rel_folder / name)
                    )  # after the real folders: they keep their path
                elif visit(Path(folder) / name, rel_folder / name):
                    kept.append(name)
            dirs[:] = kept
            for name in files:
                if not name.startswith("."):
                    rel = (rel_folder / name).as_posix()
                    (images if is_image_name(name) else others).append(rel)
    return sorted(images), sorted(others), sorted(skipped)


def _identity(path: Path) -> tuple[int, int]:
    """The real folder a path leads to (links followed): (device, inode)."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _list_folder(root: Path, *, labels: str) -> Source:
    images, others, skipped = _walk(root)
    for note in skipped:
        logger.info("folder '%s': %s", root, note)
    items, class_names = folder_items(str(root), images, others, labels=labels, join=lambda rel: root / rel)
    return Source(root=root, items=items, class_names=class_names, skipped=skipped)


def folder_items(
    where: str, images: list[str], others: list[str], *, labels: str, join: Callable[[str], Path | str]
) -> tuple[list[SourceItem], list[str]]:
    """Items and class names of a folder whose image files (relative paths, sorted) are `images`.

    `join(rel)` makes an item's path; `where` names the folder in errors. Shared by local folders
    and the URIs the Ray engine lists.
    """
    if not images:
        if not others:
            raise SourceError(f"folder '{where}' is empty: put images in it (one sub-folder per class to get labels).")
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
    rows = _read_rows(list_path)
    path_col, label_col = 0, 1
    label_col_or_none: int | None = label_col
    header = [cell.strip().lower() for cell in rows[0][1]] if rows else []
    if "path" in header:
        path_col = header.index("path")
        label_col_or_none = next((header.index(name) for name in ("label", "class") if name in header), None)
        rows = rows[1:]
    if not rows:
        raise SourceError(f"list '{list_path}' is empty: write one image path per line (optionally ',label').")
    items: list[SourceItem] = []
    lines: dict[str, int] = {}
    for line, row in rows:
        if path_col >= len(row) or not row[path_col].strip():
            raise SourceError(
                f"list '{list_path}' line {line}: no image path in column {path_col + 1}; "
                "write one image path per line (optionally ',label')."
            )
        rel = Path(row[path_col].strip()).as_posix()
        if rel in lines:
            raise SourceError(
                f"list '{list_path}' names '{rel}' twice (lines {lines[rel]} and {line}); list each image once."
            )
        lines[rel] = line
        label = row[label_col_or_none].strip() if label_col_or_none is not None and label_col_or_none < len(row) else ""
        items.append(SourceItem(root / rel, rel, label or None))
    labeled = [item for item in items if item.label is not None]
    if labeled and len(labeled) != len(items):
        missing = next(item.rel for item in items if item.label is None)
        raise SourceError(
            f"list '{list_path}' labels {len(labeled)} of {len(items)} images (e.g. '{missing}' has none); "
            "label every row or none."
        )
    class_names = sorted({item.label for item in labeled if item.label is not None})
    return Source(root=root, items=items, class_names=class_names)


def _read_rows(list_path: Path) -> list[tuple[int, list[str]]]:
    """The (line number, cells) of a list's rows, blank lines and `#` comments left out."""
    text = _read_text(list_path)
    if list_path.suffix.lower() != ".csv":
        lines = enumerate(io.StringIO(text, newline=""), start=1)
        return [(number, [line.strip()]) for number, line in lines if line.strip() and not line.startswith("#")]
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            if row and not row[0].startswith("#"):
                rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise SourceError(
            f"list '{list_path}' line {reader.line_num}: not valid CSV ({exc}); "
            "write one image path per line (optionally ',label')."
        ) from exc
    return rows


def _read_text(list_path: Path) -> str:
    """A list's text, or a SourceError naming the line where it stops being UTF-8 text."""
    try:
        data = list_path.read_bytes()
    except OSError as exc:
        raise SourceError(
            f"cannot read list '{list_path}': {exc.strerror or exc}; check the path and its permissions."
        ) from exc
    nul = data.find(b"\x00")
    if nul >= 0:
        raise SourceError(
            f"list '{list_path}' line {_line_of(data, nul)}: contains a NUL byte, so it is not a text file "
            "(binary, or UTF-16); save it as UTF-8 text, one image path per line."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"list '{list_path}' line {_line_of(data, exc.start)}: byte 0x{data[exc.start]:02x} is not UTF-8 "
            "text; save the list as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from exc


def _line_of(data: bytes, offset: int) -> int:
    """The 1-based line number of a byte offset."""
    return data.count(b"\n", 0, offset) + 1
