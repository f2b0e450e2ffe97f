"""Streaming input: files are read, hashed and decoded in worker threads while the runtime infers.

Pillow, hashlib and the runtimes release the GIL, so threads overlap for real. A bounded
number of files is in flight, so memory stays bounded whatever the number of images.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from embedder.errors import ImageError
from embedder.inputs.decoding import DEFAULT_MAX_PIXELS, decode_image

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class LoadedFile:
    """A file after reading: its hash and stat, and either pixels, an error (with the limits it depends on), or neither."""

    path: Path
    sha256: str = ""
    size: int = 0
    mtime_ns: int = 0
    pixels: np.ndarray | None = None
    error: str | None = None
    limits: dict[str, int] = field(default_factory=dict)


def default_workers() -> int:
    """Decode-and-encode workers: one per core; the runtime's streams share the cores."""
    return max(1, os.cpu_count() or 1)


def read_error(path: Path, exc: OSError) -> str:
    """A readable reason for a file that cannot be read."""
    if isinstance(exc, FileNotFoundError):
        return "file not found (deleted, or a dangling symlink)" if path.is_symlink() or not path.exists() else str(exc)
    if isinstance(exc, PermissionError):
        return "cannot read: permission denied; fix the file's permissions"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    return f"cannot read: {exc.strerror or exc}"


def load_file(
    path: Path,
    *,
    size: int,
    resize: str = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip: Callable[[str], bool] | None = None,
) -> LoadedFile:
    """Read, hash and decode one file; never raises for a bad file, the reason goes in `error`.

    `skip(sha256)` returning True means the content is already embedded: no decoding.
    """
    loaded = LoadedFile(path)
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as exc:
        loaded.error = read_error(path, exc)
        return loaded
    loaded.size, loaded.mtime_ns = stat.st_size, stat.st_mtime_ns
    return decode_loaded(loaded, data, size=size, resize=resize, max_pixels=max_pixels, skip=skip)


def decode_loaded(
    loaded: LoadedFile,
    data: bytes,
    *,
    size: int,
    resize: str = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip: Callable[[str], bool] | None = None,
) -> LoadedFile:
    """Hash a file's bytes and decode them into `loaded`, unless `skip(sha256)` says it is embedded already."""
    loaded.sha256 = hashlib.sha256(data).hexdigest()
    if skip is not None and skip(loaded.sha256):
        return loaded
    try:
        loaded.pixels = decode_image(data, size=size, resize=resize, max_pixels=max_pixels)
    except ImageError as exc:
        loaded.error, loaded.limits = exc.reason, exc.limits
    return loaded


def load_files(
    paths: Iterable[Path], *, size: int, resize: str = "crop", max_pixels: int = DEFAULT_MAX_PIXELS, prefetch: int = 64
) -> Iterator[LoadedFile]:
    """Read, hash and decode files in worker threads, in input order (at most `prefetch` in flight)."""

    def load(path: Path) -> LoadedFile:
        return load_file(Path(path), size=size, resize=resize, max_pixels=max_pixels)

    return ordered_map(load, paths, workers=default_workers(), prefetch=prefetch)


def ordered_map(function: Callable[[T], R], items: Iterable[T], *, workers: int, prefetch: int) -> Iterator[R]:
    """`map` over a thread pool, results in input order, at most `prefetch` tasks in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embedder-decode") as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def load_and_encode(
    items: Sequence[T],
    load: Callable[[T], LoadedFile],
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int,
    workers: int,
) -> Iterator[tuple[T, LoadedFile, np.ndarray | None]]:
    """Every item with its loaded file and output row (None unless decoded), in input order.

    Each worker thread loads a batch of `batch_size` items and encodes its decoded images, so
    one batch decodes while others infer and the runtime's streams never wait for pixels. At
    most two batches per worker are in flight.
    """

    def work(batch: Sequence[T]) -> list[tuple[T, LoadedFile, np.ndarray | None]]:
        loaded = [load(item) for item in batch]
        decoded = [file for file in loaded if file.pixels is not None]
        outputs = iter(
            encode(np.stack([file.pixels for file in decoded if file.pixels is not None])) if decoded else []
        )
        rows = [(item, file, next(outputs) if file.pixels is not None else None) for item, file in zip(batch, loaded)]
        for file in decoded:
            file.pixels = None  # encoded: the pixels are not needed any more
        return rows

    batches = (items[start : start + batch_size] for start in range(0, len(items), batch_size))
    for rows in ordered_map(work, batches, workers=workers, prefetch=2 * workers):
        yield from rows


@dataclass
class Encoded:
    """The output row of one file (e.g. its embedding), or why the file could not be used."""

    path: Path
    output: np.ndarray | None = None
    error: str | None = None


def encode_files(
    paths: Iterable[Path],
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    size: int,
    resize: str = "crop",
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[Encoded]:
    """Decode files and run `encode` on batches of the readable ones, in order."""

    def load(path: Path) -> LoadedFile:
        return load_file(path, size=size, resize=resize, max_pixels=max_pixels)

    for path, loaded, output in load_and_encode(
        list(paths), load, encode, batch_size=batch_size, workers=default_workers()
    ):
        yield Encoded(path, output=output, error=loaded.error)
