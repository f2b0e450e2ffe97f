"""Changing the labels of cached rows without re-embedding: one journaled batch, merged like any write.

The changed rows go to the writer's journal as one batch of rows that reuse their own embedding by
content hash. Labels are the small cache file's own column (see segments.py), so the merge writes no
segment: it writes the new small file with the new labels and leaves every row's data where it is. The
batch is one file renamed into place and the small file is replaced atomically, so a write killed at
any instant leaves either all of the changes or none (a batch journaled but not yet merged is merged
by the next writer).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedder.cache.batch import Batch
from embedder.cache.reader import open_cache
from embedder.cache.writer import CacheWriter
from embedder.errors import CacheError


@dataclass
class LabelUpdate:
    """What `set_labels` changed: paths relabelled, paths already so labelled, class names appended."""

    key: str
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)


def set_labels(
    cache: str | os.PathLike,
    labels: Mapping[str, str],
    *,
    key: str | None = None,
    new_classes: bool = False,
) -> LabelUpdate:
    """Set the label of cached rows by path (`""` unlabels one); embeddings and other rows are untouched.

    Every path must be cached and every class already known (or `new_classes=True`, which appends
    them to the class names); otherwise one CacheError names all of the unknown ones and nothing
    is written.
    """
    path = Path(cache)
    with open_cache(path) as reader:
        rows = reader.backbone(key)
        key, provenance, known, dim = rows.key, rows.provenance, rows.class_names, rows.dim
    wanted = {str(p): str(label) for p, label in labels.items()}
    with CacheWriter(path) as writer:
        cached = writer.index(key, wanted).rows
        problems = []
        unknown_paths = sorted(set(wanted) - set(cached))
        if unknown_paths:
            problems.append(f"{len(unknown_paths)} path(s) not in the cache: {_listed(unknown_paths)}")
        unknown_classes = sorted({label for label in wanted.values() if label and label not in known})
        if unknown_classes and not new_classes:
            problems.append(
                f"{len(unknown_classes)} class(es) not among its classes ({', '.join(known) or 'none'}): "
                f"{_listed(unknown_classes)} (pass new classes explicitly to append them)"
            )
        if problems:
            raise CacheError(f"no label of cache '{path}' was changed: {'; '.join(problems)}.")
        update = LabelUpdate(key, new_classes=unknown_classes)
        changes = []
        for name, label in sorted(wanted.items()):
            row = cached[name]
            if row.label == label:
                update.unchanged.append(name)
            else:
                changes.append(row._replace(label=label))
                update.changed.append(name)
        if changes:
            writer.begin(key, provenance)
            writer.write_batch(key, Batch(embeddings=np.empty((0, dim), np.float32), aliases=changes))
    return update


def _listed(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(f"'{name}'" for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
