"""Streaming input: files are read, hashed and decoded in worker threads while the runtime infers.

Pillow, hashlib and the runtimes release the GIL, so threads overlap for real. At most
`prefetch` files are in flight, so memory stays bounded whatever the number of images.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from embedder.errors import ImageError
from embedder.images import DEFAULT_MAX_PIXELS, decode_image

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class LoadedFile:
    """A file after reading: its hash and stat, and either pixels, an error, or neither (skipped)."""

    path: Path
    sha256: str = ""
    size: int = 0
    mtime_ns: int = 0
    pixels: np.ndarray | None = None
    error: str | None = None


def default_workers() -> int:
    """Decode threads: one per core; the runtime's own threads share the cores."""
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
    loaded.sha256 = hashlib.sha256(data).hexdigest()
    if skip is not None and skip(loaded.sha256):
        return loaded
    try:
        loaded.pixels = decode_image(data, size=size, resize=resize, max_pixels=max_pixels)
    except ImageError as exc:
        loaded.error = exc.reason
    return loaded


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


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last one may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
