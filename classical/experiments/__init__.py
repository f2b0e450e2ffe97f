"""The experiments built on the models and their search: the sweep, repeats, learning curves, semi-supervised heads.

`sweep` fits and scores every model on one stored split, with the audit and the backbone's cost
from pixels (`costs`); `repeats` re-splits; `curves` and `semi` measure accuracy against labels.
"""

from classical.experiments.sweep import rerender, summary, sweep

__all__ = ["rerender", "summary", "sweep"]
