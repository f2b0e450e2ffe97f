"""Labels back into a cache: a `path,label` CSV or a Label Studio JSON export, applied in one journaled batch.

`read_labels` reads the file into {path: label}; `import_labels` checks it and hands it to
`embedder.set_labels` (only labels change, embeddings are copied bit for bit, O(rows changed), all or
nothing: unknown paths or classes are named in one error and nothing is written).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from classical.errors import DataError
from embedder import LabelUpdate, set_labels


def read_labels(file: str | os.PathLike) -> dict[str, str]:
    """{path: label} of a CSV with `path` and `label` columns, or of a Label Studio JSON export.

    Label Studio: the full JSON export (tasks with `data.image` and `annotations`, the last
    annotation that is not cancelled and has a `choices` result wins) or JSON-MIN (objects with
    `image` and `choice`). Unlabelled tasks are skipped. A path given two different labels is an error.
    """
    path = Path(file)
    if not path.is_file():
        raise DataError(f"label file '{path}' does not exist.")
    text = path.read_text(encoding="utf-8-sig")
    pairs = _label_studio(path, text) if text.lstrip()[:1] in ("[", "{") else _csv(path, text)
    labels: dict[str, str] = {}
    conflicts = []
    for name, label in pairs:
        if labels.get(name, label) != label:
            conflicts.append(f"'{name}' ({labels[name]} and {label})")
        labels[name] = label
    if conflicts:
        raise DataError(
            f"label file '{path}' gives {len(conflicts)} path(s) two labels: {', '.join(conflicts[:5])}; keep one."
        )
    return labels


def _csv(path: Path, text: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    if "path" not in columns or "label" not in columns:
        raise DataError(
            f"label file '{path}' needs a 'path' and a 'label' column (it has: {', '.join(columns) or 'none'})."
        )
    return [(row["path"].strip(), (row["label"] or "").strip()) for row in reader if (row["path"] or "").strip()]


def _label_studio(path: Path, text: str) -> list[tuple[str, str]]:
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"label file '{path}' is not valid JSON ({exc}).") from None
    tasks = [tasks] if isinstance(tasks, dict) else tasks
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise DataError(f"label file '{path}' is not a Label Studio export (a JSON list of tasks).")
    pairs = []
    for n, task in enumerate(tasks):
        if "data" in task:
            image = (task.get("data") or {}).get("image")
            label = _annotated(task)
        else:  # JSON-MIN
            image, label = task.get("image"), task.get("choice")
            if isinstance(label, dict):  # several choices: {"choices": [...]}
                choices = label.get("choices") or []
                label = choices[0] if len(choices) == 1 else None
        if not isinstance(image, str):
            raise DataError(f"label file '{path}': task {n} has no image path (data.image).")
        if isinstance(label, str) and label:
            pairs.append((image, label))
    return pairs


def _annotated(task: dict[str, Any]) -> str | None:
    """The single choice of the task's last annotation that is not cancelled, if any."""
    for annotation in reversed(task.get("annotations") or []):
        if annotation.get("was_cancelled"):
            continue
        for result in annotation.get("result") or []:
            choices = (result.get("value") or {}).get("choices")
            if result.get("type") == "choices" and choices and len(choices) == 1:
                return str(choices[0])
    return None


def import_labels(
    cache: str | os.PathLike, file: str | os.PathLike, *, backbone: str | None = None, new_classes: bool = False
) -> LabelUpdate:
    """Set the labels of cached rows from a label file (see `read_labels`); all of them or none."""
    labels = read_labels(file)
    if not labels:
        raise DataError(f"label file '{file}' holds no labels.")
    return set_labels(cache, labels, key=backbone, new_classes=new_classes)
