"""Which unlabelled rows to label next: uncertainty, diversity (k-center greedy) and both at once.

Everything here works on arrays: `probs` are a model's class probabilities of the candidate rows,
`Z` rows normalised as the audit's similarity sees them (`classical.data.normalise`), so the dot
product of two rows is their similarity and `1 - similarity` their distance.

- uncertainty: 1 - margin, the margin being the gap between the two highest probabilities;
- diversity: k-center greedy, each pick the candidate farthest from every labelled row and every
  earlier pick;
- hybrid: diverse mini-batches (Zhdanov 2019, "Diverse mini-batch active learning"): the 5 x budget
  most uncertain candidates clustered by k-means weighted by their uncertainty, each cluster giving
  the candidate nearest its centre, clusters in order of their uncertainty mass. A candidate at or
  above the near-duplicate threshold of a labelled row (found with `embedder.neighbours`) is set
  aside first, and one of an earlier pick is never picked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans

from embedder import neighbours

STRATEGIES = ("uncertainty", "diversity", "hybrid")
POOL_FACTOR = 5  # hybrid: the budget x this many most uncertain candidates are clustered
N_INIT = 3  # hybrid: k-means++ starts (seeded), the one of least weighted inertia kept
MIN_WEIGHT = 1e-9  # hybrid: a certain row's weight, so a pool of certain rows still clusters
BLOCK = 4096


@dataclass
class Ranked:
    """Picked candidates (indices into the candidate rows) in order, with their score and its two terms."""

    index: np.ndarray  # int64
    score: np.ndarray  # float64
    uncertainty: np.ndarray  # 1 - margin (nan when the strategy does not use it)
    distance: np.ndarray  # 1 - similarity to the nearest labelled row or earlier pick (nan when unused)
    skipped_near_duplicates: int = 0
    mass: np.ndarray = field(default_factory=lambda: np.zeros(0))  # hybrid: the pick's cluster's uncertainty mass
    members: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # hybrid: its cluster's size


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


def rank_diversity(Z: np.ndarray, labelled: np.ndarray, budget: int) -> Ranked:
    """k-center greedy over all candidates: each pick the farthest from labelled rows and earlier picks."""
    nearest = nearest_similarity(Z, labelled).astype(np.float64)
    distance = np.where(np.isfinite(nearest), 1.0 - nearest, 2.0)  # no labelled row: all equally far
    picks: list[int] = []
    distances: list[float] = []
    available = np.ones(len(Z), dtype=bool)
    while len(picks) < budget and available.any():
        best = int(np.argmax(np.where(available, np.maximum(distance, 0.0), -np.inf)))
        picks.append(best)
        distances.append(float(distance[best]))
        available[best] = False
        distance = np.minimum(distance, 1.0 - Z @ Z[best])
    d = np.asarray(distances, dtype=np.float64)
    return Ranked(np.asarray(picks, dtype=np.int64), d, np.full(len(d), np.nan), d)


def rank_hybrid(
    probs: np.ndarray,
    Z: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    threshold: float,
    *,
    pool: int | None = None,
    seed: int = 0,
) -> Ranked:
    """Weighted k-means over the most uncertain candidates (Zhdanov 2019), without near-duplicates.

    Candidates at or above `threshold` to a labelled row are set aside first. The `pool` (default:
    POOL_FACTOR x budget) most uncertain of the rest are clustered into `budget` clusters by k-means
    (seeded), each row weighted by its uncertainty; each cluster, in order of its uncertainty mass
    (the sum of its weights), gives the row nearest its centre that is not a near-duplicate of an
    earlier pick. When clusters give fewer picks than the budget, the next most uncertain rows that
    are no near-duplicates follow (their mass: nan). The score is the cluster's mass.
    """
    u = margin_uncertainty(probs)
    near = near_duplicates(Z, labelled, threshold)
    beside_labelled = np.zeros(len(Z), dtype=bool)
    beside_labelled[[i for i, others in enumerate(near) if any(j >= len(Z) for j in others)]] = True
    order = np.lexsort((np.arange(len(u)), -u))
    order = order[~beside_labelled[order]]
    size = POOL_FACTOR * budget if pool is None else pool
    chosen = order[:size]
    picked: list[int] = []
    masses: list[float] = []
    members: list[int] = []
    blocked = np.zeros(len(Z), dtype=bool)

    def take(row: int, mass: float, count: int) -> None:
        picked.append(row)
        masses.append(mass)
        members.append(count)
        blocked[row] = True
        blocked[[j for j in near[row] if j < len(Z)]] = True

    if len(chosen):
        clusters = min(budget, len(np.unique(Z[chosen], axis=0)))
        weight = np.maximum(u[chosen], MIN_WEIGHT)
        kmeans = KMeans(n_clusters=clusters, n_init=N_INIT, random_state=seed).fit(Z[chosen], sample_weight=weight)
        mass = np.bincount(kmeans.labels_, weights=weight, minlength=clusters)
        spread = kmeans.transform(Z[chosen])  # distance of each row to each centre
        for cluster in np.lexsort((np.arange(clusters), -mass)):
            inside = np.flatnonzero(kmeans.labels_ == cluster)
            for local in inside[np.lexsort((inside, spread[inside, cluster]))]:
                if not blocked[chosen[local]]:
                    take(int(chosen[local]), float(mass[cluster]), len(inside))
                    break
    for row in order:  # fewer picks than the budget: the next most uncertain that are no near-duplicates
        if len(picked) >= budget:
            break
        if not blocked[row]:
            take(int(row), float("nan"), 0)
    index = np.asarray(picked, dtype=np.int64)
    skipped = int(beside_labelled.sum() + (blocked & ~beside_labelled).sum()) - len(index)
    return Ranked(
        index,
        np.where(np.isnan(masses), u[index], masses) if len(index) else np.zeros(0),
        u[index],
        np.full(len(index), np.nan),
        skipped,
        mass=np.asarray(masses, dtype=np.float64),
        members=np.asarray(members, dtype=np.int64),
    )


def near_duplicates(Z: np.ndarray, labelled: np.ndarray, threshold: float) -> list[list[int]]:
    """Each candidate's near-duplicates (similarity >= `threshold`): candidates, and labelled rows as len(Z) + i.

    One search of the candidates and the labelled rows together (`embedder.neighbours`: exact below
    `embedder.EXACT_ROWS` rows).
    """
    graph = neighbours(np.concatenate([Z, labelled]).astype(np.float32), k=0, threshold=threshold)
    near: list[list[int]] = [[] for _ in range(len(Z))]
    for i, j in zip(graph.i.tolist(), graph.j.tolist()):  # i < j: i is always a candidate
        if i < len(Z):
            near[i].append(j)
            if j < len(Z):
                near[j].append(i)
    return near


def rank(
    strategy: str,
    probs: np.ndarray,
    Z: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    threshold: float,
    *,
    seed: int = 0,
) -> Ranked:
    """Rank candidates by `strategy` ('uncertainty', 'diversity' or 'hybrid'; `seed` seeds hybrid's k-means)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}.")
    if budget < 1:
        raise ValueError(f"the budget must be at least 1 photo; got {budget}.")
    if strategy == "uncertainty":
        return rank_uncertainty(probs, budget)
    if strategy == "diversity":
        return rank_diversity(Z, labelled, budget)
    return rank_hybrid(probs, Z, labelled, budget, threshold, seed=seed)
