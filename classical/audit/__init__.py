"""The data audit on cached embeddings: near-duplicates (and splits that leak), label issues, outliers, a map.

`audit(cache, out)` writes `out/audit.json`; `classical sweep` runs it on the run's split. Importing
this package imports neither matplotlib nor cleanlab (they load when an audit runs).
"""

from classical.audit.audit import audit, load_rows, summary_line
from classical.audit.near_duplicates import (
    DEFAULT_THRESHOLD,
    SIMILARITY,
    Neighbours,
    components,
    normalise,
    search,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "SIMILARITY",
    "Neighbours",
    "audit",
    "components",
    "load_rows",
    "normalise",
    "search",
    "summary_line",
]
