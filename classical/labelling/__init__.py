"""Which photos to label next, and their labels back into the cache.

`ranking` ranks candidates on arrays (uncertainty, diversity, hybrid), `suggest` applies it to a
cache's unlabelled rows with a run's best model and writes the files a labelling tool reads,
`imports` reads a `path,label` CSV or a Label Studio export back into the cache's labels.
"""

from classical.labelling.imports import import_labels, read_labels
from classical.labelling.ranking import STRATEGIES, Ranked, margin_uncertainty, rank
from classical.labelling.suggest import (
    FORMATS,
    Suggestions,
    label_studio_tasks,
    suggest,
    write_outputs,
    write_suggestions,
)

__all__ = [
    "FORMATS",
    "STRATEGIES",
    "Ranked",
    "Suggestions",
    "import_labels",
    "label_studio_tasks",
    "margin_uncertainty",
    "rank",
    "read_labels",
    "suggest",
    "write_outputs",
    "write_suggestions",
]
