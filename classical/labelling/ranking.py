"""Which unlabelled rows to label next: uncertainty, diversity (k-center greedy) and both at once.

Everything here works on arrays: `probs` are a model's class probabilities of the candidate rows,
`Z` rows normalised as the audit's similarity sees them (`classical.data.normalise`), so the dot
product of two rows is their similarity and `1 - similarity` their distance.

- uncertainty: 1 - margin, the margin being the gap between the two highest probabilities;
- diversity: k-center greedy, each pick the candidate farthest from every labelled row and every
  earlier pick;
- hybrid: k-center greedy over the most uncertain candidates, each pick maximising
  uncertainty x distance; a candidate at or above the near-duplicate threshold of a labelled row or
  of an earlier pick is never picked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("uncertainty", "diversity", "hybrid")
POOL_FACTOR = 3  # hybrid: candidates = the budget x this many most uncertain rows (at least POOL_MIN)
POOL_MIN = 20
BLOCK = 4096


@dataclass
class Ranked:
    """Picked candidates (indices into the candidate rows) in order, with their score and its two terms."""

    index: np.ndarray  # int64
    score: np.ndarray  # float64
    uncertainty: np.ndarray  # 1 - margin (nan when the strategy does not use it)
    distance: np.ndarray  # 1 - similarity to the nearest labelled row or earlier pick (nan when unused)
    skipped_near_duplicates: int = 0


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 - (highest - second highest probability) of each row: 1 on a decision boundary, 0 when certain."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be (rows, classes >= 2); got shape {probs.shape}")
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def nearest_similarity(Z: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row's highest similarity to the rows of `reference` (-inf when there are none), blocked."""
    best = np.full(len(Z), -np.inf, dtype=np.float32)
    for start in range(0, len(reference), BLOCK):
        block = Z @ reference[start : start + BLOCK].T
        np.maximum(best, block.max(axis=1), out=best)
    return best


def rank_uncertainty(probs: np.ndarray, budget: int) -> Ranked:
    """The `budget` candidates of smallest margin, most uncertain first (ties: lower index first)."""
    u = margin_uncertainty(probs)
    order = np.lexsort((np.arange(len(u)), -u))[:budget]
    return Ranked(order.astype(np.int64), u[order], u[order], np.full(len(order), np.nan))


def _greedy(
    Z: np.ndarray,
    labelled: np.ndarray,
    weight: np.ndarray,
    budget: int,
    threshold: float | None,
) -> tuple[list[int], list[float], int]:
    """k-center greedy: pick argmax weight x distance to the nearest centre (labelled rows, then picks).

    With `threshold`, rows whose similarity to a centre reaches it are never picked.
    Returns the picks, their distances at pick time, and how many rows the threshold excluded.
    """
    nearest = nearest_similarity(Z, labelled).astype(np.float64)
    excluded = np.zeros(len(Z), dtype=bool)
    if threshold is not None:
        excluded |= nearest >= threshold
    distance = np.where(np.isfinite(nearest), 1.0 - nearest, 2.0)  # no labelled row: all equally far
    picks: list[int] = []
    distances: list[float] = []
    available = ~excluded
    while len(picks) < budget and available.any():
        gain = np.where(available, weight * np.maximum(distance, 0.0), -np.inf)
        best = int(np.argmax(gain))
        picks.append(best)
        distances.append(float(distance[best]))
        available[best] = False
        similarity = Z @ Z[best]
        distance = np.minimum(distance, 1.0 - similarity)
        if threshold is not None:
            available &= similarity < threshold
    return picks, distances, int((~available).sum()) - len(picks)


def rank_diversity(Z: np.ndarray, labelled: np.ndarray, budget: int) -> Ranked:
    """k-center greedy over all candidates: each pick the farthest from labelled rows and earlier picks."""
    picks, distances, _ = _greedy(Z, labelled, np.ones(len(Z)), budget, None)
    d = np.asarray(distances, dtype=np.float64)
    return Ranked(np.asarray(picks, dtype=np.int64), d, np.full(len(d), np.nan), d)


def rank_hybrid(
    probs: np.ndarray,
    Z: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    threshold: float,
    pool: int | None = None,
) -> Ranked:
    """Uncertainty-weighted k-center greedy over the most uncertain candidates, without near-duplicates.

    The pool is the `pool` (default: max(POOL_MIN, POOL_FACTOR x budget)) most uncertain candidates;
    each pick maximises uncertainty x distance to the nearest labelled row or earlier pick, and no
    pick has a similarity >= `threshold` to a labelled row or to another pick. When the pool runs out
    of such rows before the budget, the next most uncertain candidates are used.
    """
    u = margin_uncertainty(probs)
    order = np.lexsort((np.arange(len(u)), -u))
    size = max(POOL_MIN, POOL_FACTOR * budget) if pool is None else pool
    picked: list[int] = []
    distances: list[float] = []
    skipped = 0
    start = 0
    centres = labelled
    while len(picked) < budget and start < len(order):
        chunk = order[start : start + size]
        start += size
        local, d, excluded = _greedy(Z[chunk], centres, u[chunk], budget - len(picked), threshold)
        skipped += excluded
        picked.extend(int(chunk[i]) for i in local)
        distances.extend(d)
        centres = np.concatenate([labelled, Z[np.asarray(picked, dtype=np.int64)]]) if picked else labelled
    index = np.asarray(picked, dtype=np.int64)
    spread = np.asarray(distances, dtype=np.float64)
    return Ranked(index, u[index] * spread, u[index], spread, skipped)


def rank(
    strategy: str,
    probs: np.ndarray,
    Z: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    threshold: float,
) -> Ranked:
    """Rank candidates by `strategy` ('uncertainty', 'diversity' or 'hybrid')."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}.")
    if budget < 1:
        raise ValueError(f"the budget must be at least 1 photo; got {budget}.")
    if strategy == "uncertainty":
        return rank_uncertainty(probs, budget)
    if strategy == "diversity":
        return rank_diversity(Z, labelled, budget)
    return rank_hybrid(probs, Z, labelled, budget, threshold)
