"""The record types of a run's output: one row per image, and a batch of rows as journaled or sharded.

The local engine journals each finished batch; the Ray engine writes each block as a shard. Both
are a `Batch`, stored column by column under the same names as the cache's datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class Row(NamedTuple):
    """An image that has an embedding (its own, or one it reuses by content hash)."""

    path: str  # relative to the source, posix
    sha256: str
    label: str  # class name, "" when unlabeled
    file_size: int
    mtime_ns: int


class Failure(NamedTuple):
    """An input that could not be embedded, and why."""

    path: str
    sha256: str  # "" when the file could not even be read
    reason: str
    file_size: int
    mtime_ns: int


NUMERIC = ("file_size", "mtime_ns")


@dataclass
class Batch:
    """Embedded rows (with `embeddings`, row-aligned), rows reusing an embedding by hash, and failures."""

    embeddings: np.ndarray
    rows: list[Row] = field(default_factory=list)
    aliases: list[Row] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows or self.aliases or self.failures)

    def columns(self) -> Iterator[tuple[str, str, np.ndarray | list[str]]]:
        """(table, column, values) for every column of rows, aliases and failures: int64 arrays or str lists."""
        for table, records, names in (("rows", self.rows, Row._fields), ("aliases", self.aliases, Row._fields),
                                      ("failures", self.failures, Failure._fields)):
            values = list(zip(*records)) if records else [()] * len(names)
            for name, column in zip(names, values):
                yield table, name, np.array(column, dtype=np.int64) if name in NUMERIC else list(column)

    @classmethod
    def from_columns(cls, embeddings: np.ndarray, column: Callable[[str, str], np.ndarray]) -> Batch:
        """Rebuild a batch from `column(table, name)` (a list of ints or strs), the reader of what `columns` wrote."""

        def records(table: str, kind: type) -> list:
            values = [column(table, name) for name in kind._fields]
            return [kind(*record) for record in zip(*values)]

        return cls(embeddings=embeddings, rows=records("rows", Row), aliases=records("aliases", Row),
                   failures=records("failures", Failure))
