"""Outliers: images far from their nearest neighbours in embedding space.

Score = mean cosine distance (1 - similarity, the near-duplicate search's similarity) to the k = 10
nearest other images. Flagged: score above a robust fence, median + 3.5 x (1.4826 x MAD) of the
scores (about 3.5 standard deviations for normal scores), at most `max_fraction` (2 %) of the images.
"""

from __future__ import annotations

import numpy as np

K = 10
FENCE = 3.5
MAX_FRACTION = 0.02
METHOD = (
    "mean cosine distance to the {k} nearest neighbours (power-normalised embeddings); flagged above "
    "median + {fence} x 1.4826 x MAD of the scores, at most {fraction:g} % of the images"
)


def scores(knn: np.ndarray) -> np.ndarray:
    """Mean distance to the k nearest neighbours, from their similarities (N, k)."""
    if knn.shape[1] == 0:
        return np.zeros(len(knn))
    return 1.0 - knn.astype(np.float64).mean(axis=1)


def flag(
    score: np.ndarray, *, fence: float = FENCE, max_fraction: float = MAX_FRACTION
) -> tuple[np.ndarray, float | None]:
    """Rows flagged as outliers (by descending score) and the cut-off used (None when too few rows)."""
    if len(score) < 5:
        return np.zeros(0, np.int64), None
    median = float(np.median(score))
    mad = 1.4826 * float(np.median(np.abs(score - median)))
    cutoff = median + fence * mad
    order = np.argsort(-score, kind="stable")
    above = order[score[order] > cutoff]
    return above[: max(1, int(max_fraction * len(score)))], cutoff
