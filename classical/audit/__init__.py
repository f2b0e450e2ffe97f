"""The data audit on cached embeddings: near-duplicates (and splits that leak), label issues, outliers, a map.

`audit(cache, out)` writes `out/audit.json`; `classical sweep` runs it on the run's split. Importing
this package imports neither matplotlib nor cleanlab (they load when an audit runs).
"""

from classical.audit.audit import audit, load_rows, summary_line

__all__ = ["audit", "load_rows", "summary_line"]
