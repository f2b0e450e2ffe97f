"""The record types of a run's output: one row per image, and a batch of rows as journaled or sharded.

The local engine journals each finished batch; the Ray engine writes each block as a shard. Both
are a `Batch`, stored column by column under the same names as the cache's datasets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np


class Row(NamedTuple):
    """An image that has an embedding (its own, or one it reuses by content hash)."""

    path: str  # relative to the source, posix
    sha256: str
    label: str  # class name, "" when unlabeled
    file_size: int
    mtime_ns: int


class Failure(NamedTuple):
    """An input that could not be embedded, why, and under which limits (a larger limit may admit it)."""

    path: str
    sha256: str  # "" when the file could not even be read
    reason: str
    file_size: int
    mtime_ns: int
    limits: str = ""  # JSON object of the limits the refusal depends on, e.g. {"max_pixels": 1000000}; "" for none

    @property
    def limit_values(self) -> dict[str, int]:
        """The limits this failure depends on, by name ({} when it does not depend on one)."""
        return json.loads(self.limits) if self.limits else {}


def limits_text(limits: Mapping[str, int]) -> str:
    """The `Failure.limits` text of a mapping of limits ("" when there are none)."""
    return json.dumps(dict(sorted(limits.items()))) if limits else ""


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
        for table, records, names in (
            ("rows", self.rows, Row._fields),
            ("aliases", self.aliases, Row._fields),
            ("failures", self.failures, Failure._fields),
        ):
            values = list(zip(*records)) if records else [()] * len(names)
            for name, column in zip(names, values):
                yield table, name, np.array(column, dtype=np.int64) if name in NUMERIC else list(column)

    @classmethod
    def from_columns(cls, embeddings: np.ndarray, column: Callable[[str, str], Sequence[Any]]) -> Batch:
        """Rebuild a batch from `column(table, name)` (a list of ints or strs), the reader of what `columns` wrote.

        `column` raises KeyError for a column it lacks; a column with a default (added after the
        batch was written, such as `Failure.limits`) then takes that default.
        """

        def records(table: str, kind: Any) -> list:
            defaults = kind._field_defaults
            columns = {}
            for name in kind._fields:
                try:
                    columns[name] = column(table, name)
                except KeyError:
                    if name not in defaults:
                        raise
            count = len(columns[kind._fields[0]])
            values = [columns[name] if name in columns else [defaults[name]] * count for name in kind._fields]
            return [kind(*record) for record in zip(*values)]

        return cls(
            embeddings=embeddings,
            rows=records("rows", Row),
            aliases=records("aliases", Row),
            failures=records("failures", Failure),
        )
