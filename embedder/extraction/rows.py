"""What a run does with each image, the same for the local and the Ray engine.

Planning drops what the cache already holds (same path, size and modification time), except
recorded failures that this run may turn into rows: refused under a limit that is now larger,
or all of them with `retry_failed`. Sorting puts each image read into its batch as a failure, a
row reusing an embedding by content hash, or a new row; the summary counts what the batches hold.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedder.cache import Batch, CacheIndex, Failure, Row, limits_text
from embedder.inputs import LoadedFile, SourceItem


@dataclass(frozen=True)
class RetryPolicy:
    """Which recorded failures a run re-attempts: those its `limits` may now admit, or all with `retry_failed`."""

    limits: Mapping[str, int]  # the run's limits by name, e.g. {"max_pixels": 89478485}
    retry_failed: bool = False

    def why(self, failure: Failure) -> str | None:
        """Why `failure` is worth re-attempting in this run, or None when it would fail the same way."""
        if self.retry_failed:
            return "--retry-failed was given"
        raised = [
            f"--{name.replace('_', '-')} was raised from {old} to {self.limits[name]}"
            for name, old in failure.limit_values.items()
            if self.limits.get(name, old) > old
        ]
        return ", ".join(raised) or None


@dataclass
class Plan:
    """What a run reads, and what it keeps from the cache without reading."""

    todo: list[SourceItem]  # items to read
    cached: int  # items whose cached row is current
    failed: list[Failure]  # recorded failures kept as they are
    retried: dict[str, str]  # path -> why, for recorded failures of unchanged files read again
    failed_hashes: dict[str, Failure]  # content hashes that stay failed (the Sorter's `failed`)


def plan_work(items: list[SourceItem], index: CacheIndex, *, rehash: bool, retry: RetryPolicy) -> Plan:
    """Split `items` into what to read and what the cache holds current (same path, size and mtime).

    `rehash` reads everything anyway. A recorded failure is read again when `retry` says so for it
    or for another failure with the same bytes, whose hash then does not count as failed.
    """
    retryable = {f.sha256: why for f in index.failures.values() if f.sha256 and (why := retry.why(f))}
    plan = Plan(
        todo=[],
        cached=0,
        failed=[],
        retried={},
        failed_hashes={f.sha256: f for f in index.failures.values() if f.sha256 and f.sha256 not in retryable},
    )
    for item in items:
        row, failure = index.rows.get(item.rel), index.failures.get(item.rel)
        known = row or failure
        if known is not None and _unchanged(item, known):
            why = None
            if row is None and failure is not None:
                why = retry.why(failure) or retryable.get(failure.sha256)
            if why is not None:
                plan.retried[item.rel] = why
            elif not rehash:
                if row is not None:
                    plan.cached += 1
                elif failure is not None:
                    plan.failed.append(failure)
                continue
        plan.todo.append(item)
    return plan


def _unchanged(item: SourceItem, known: Row | Failure) -> bool:
    """True when the file's size and modification time are those recorded."""
    try:
        stat = os.stat(item.path)
    except OSError:
        return False
    return (stat.st_size, stat.st_mtime_ns) == (known.file_size, known.mtime_ns)


class Sorter:
    """Sorts loaded images into batches: failed, reusing an embedding by content hash, or new.

    `known` holds the hashes already embedded (in the cache), `failed` the hashes that stay failed
    (hash -> its recorded failure); both are only read. Hashes seen during this sorter's life are
    added on top, so a duplicate within the run is embedded (or refused) once.
    """

    def __init__(self, known: Container[str], failed: Mapping[str, Failure]) -> None:
        self.known, self.failed = known, failed
        self.seen: dict[str, Failure | None] = {}  # sha256 -> None (embedded here) or its failure

    def skip(self, sha256: str) -> bool:
        """True when an image with these bytes needs no decoding: embedded already, or known to fail."""
        return sha256 in self.known or sha256 in self.failed or sha256 in self.seen

    def add(self, batch: Batch, rel: str, label: str | None, loaded: LoadedFile, embedding: np.ndarray | None) -> None:
        """Put one loaded image into `batch` (its embedding goes to the next free row of batch.embeddings)."""
        sha = loaded.sha256
        failure = self._failure(rel, loaded)
        if failure is not None:  # unreadable, or the same bytes as a file that failed
            batch.failures.append(failure)
            if sha:
                self.seen.setdefault(sha, failure)
            return
        row = Row(rel, sha, label or "", loaded.size, loaded.mtime_ns)
        if embedding is None or sha in self.seen or sha in self.known:
            batch.aliases.append(row)  # embedded already (maybe earlier in this run): this row reuses it
        else:
            self.seen[sha] = None
            batch.embeddings[len(batch.rows)] = embedding
            batch.rows.append(row)

    def _failure(self, rel: str, loaded: LoadedFile) -> Failure | None:
        """The failure of this file: its own error, or the reason and limits of the same bytes' failure."""
        if loaded.error is not None:
            return Failure(rel, loaded.sha256, loaded.error, loaded.size, loaded.mtime_ns, limits_text(loaded.limits))
        earlier = self.failed.get(loaded.sha256) or self.seen.get(loaded.sha256)
        if earlier is None:
            return None
        return earlier._replace(path=rel, file_size=loaded.size, mtime_ns=loaded.mtime_ns)


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
    retried: dict[str, str] = field(default_factory=dict)  # path -> why, recorded failures read again
    skipped: list[str] = field(default_factory=list)  # folders not listed, and why
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
            f"time      {self.seconds:.1f} s"
            + (f" ({self.images_per_second:.0f} images/s, runtime {self.runtime})" if self.embedded else ""),
        ]
        if self.retried:
            again = sum(failure.path in self.retried for failure in self.failed)
            why = "; ".join(
                f"{count} because {reason}" for reason, count in Counter(self.retried.values()).most_common()
            )
            lines.append(
                f"retried   {len(self.retried)} recorded failure(s) ({why}): "
                f"{len(self.retried) - again} now in the cache, {again} failed again"
            )
        lines += [f"skipped   {note}" for note in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"          ... and {len(self.skipped) - 20} more folders not listed")
        lines += [f"failed    {failure.path}: {failure.reason}" for failure in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"          ... and {len(self.failed) - 20} more (embedder info {self.out})")
        return "\n".join(lines)
