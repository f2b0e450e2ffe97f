"""What a run does with each image, the same for the local and the Ray engine.

Planning drops what the cache already holds (same path, size and modification time); sorting puts
each image read into its batch as a failure, a row reusing an embedding by content hash, or a new
row; the summary counts what the batches hold.
"""

from __future__ import annotations

import os
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedder.cache import Batch, CacheIndex, Failure, Row
from embedder.inputs import LoadedFile, SourceItem


def plan_work(items: list[SourceItem], index: CacheIndex, *, rehash: bool) -> tuple[list[SourceItem], int, list[Failure]]:
    """Items to read, and the counts of those whose cached row (or recorded failure) is still current.

    Current means same path, size and modification time; `rehash` reads everything anyway.
    """
    todo, cached, failed = [], 0, []
    for item in items:
        known = index.rows.get(item.rel) or index.failures.get(item.rel)
        if known is not None and not rehash:
            try:
                stat = os.stat(item.path)
            except OSError:
                stat = None
            if stat is not None and (stat.st_size, stat.st_mtime_ns) == (known.file_size, known.mtime_ns):
                if item.rel in index.rows:
                    cached += 1
                else:
                    failed.append(known)
                continue
        todo.append(item)
    return todo, cached, failed


class Sorter:
    """Sorts loaded images into batches: failed, reusing an embedding by content hash, or new.

    `known` holds the hashes already embedded (in the cache), `failed` the hashes that failed
    (hash -> reason); both are only read. Hashes seen during this sorter's life are added on top,
    so a duplicate within the run is embedded once.
    """

    def __init__(self, known: Container[str], failed: Mapping[str, str]) -> None:
        self.known, self.failed = known, failed
        self.seen: dict[str, str | None] = {}  # sha256 -> None (embedded here) or failure reason

    def skip(self, sha256: str) -> bool:
        """True when an image with these bytes needs no decoding: embedded already, or known to fail."""
        return sha256 in self.known or sha256 in self.failed or sha256 in self.seen

    def add(self, batch: Batch, rel: str, label: str | None, loaded: LoadedFile, embedding: np.ndarray | None) -> None:
        """Put one loaded image into `batch` (its embedding goes to the next free row of batch.embeddings)."""
        sha = loaded.sha256
        error = loaded.error or (self.failed.get(sha) or self.seen.get(sha) if sha else None)
        if error is not None:  # unreadable, or the same bytes as a file that failed
            batch.failures.append(Failure(rel, sha, error, loaded.size, loaded.mtime_ns))
            if sha:
                self.seen.setdefault(sha, error)
            return
        row = Row(rel, sha, label or "", loaded.size, loaded.mtime_ns)
        if embedding is None or sha in self.seen or sha in self.known:
            batch.aliases.append(row)  # embedded already (maybe earlier in this run): this row reuses it
        else:
            self.seen[sha] = None
            batch.embeddings[len(batch.rows)] = embedding
            batch.rows.append(row)


@dataclass
class ExtractSummary:
    """What a run did: counts, time, and the inputs that failed with their reasons."""

    out: Path
    backbone_key: str
    runtime: str
    total: int
    embedded: int = 0
    reused: int = 0
    cached: int = 0
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, batch: Batch, index: CacheIndex) -> None:
        """Add a finished batch: a reusing row is "cached" when it has the same bytes as its own cached row."""
        self.embedded += len(batch.rows)
        for row in batch.aliases:
            cached = index.rows.get(row.path)
            if cached is not None and cached.sha256 == row.sha256:
                self.cached += 1  # touched, or rehashed
            else:
                self.reused += 1
        self.failed += batch.failures

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        lines = [
            f"cache     {self.out}",
            f"backbone  {self.backbone_key}",
            f"images    {self.total}: {self.embedded} embedded, {self.reused} reused (same bytes as another file), "
            f"{self.cached} cached, {len(self.failed)} failed",
            f"time      {self.seconds:.1f} s" + (f" ({self.images_per_second:.0f} images/s, runtime {self.runtime})" if self.embedded else ""),
        ]
        lines += [f"failed    {failure.path}: {failure.reason}" for failure in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"          ... and {len(self.failed) - 20} more (embedder info {self.out})")
        return "\n".join(lines)
