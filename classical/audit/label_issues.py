"""Label-issue candidates: cleanlab's confident learning on out-of-fold probabilities of the embeddings.

The model is the sweep's `lr` pipeline (StandardScaler -> multinomial LogisticRegression, C = 0.1),
its probabilities come from stratified k-fold cross-validation on the labelled rows, so no image is
scored by a model that saw it. `cleanlab.filter.find_label_issues` (prune by noise rate) picks the
candidates, ranked by `cleanlab.rank.get_label_quality_scores` (self-confidence: the out-of-fold
probability of the given label; low = suspicious). cleanlab is imported here only.

Up to MAX_EXACT_BYTES of rows (256 MiB: 50,000 x 1,280 float32) the model sees the raw embeddings and
each fold's model is fitted on all the other folds (`cross_val_predict`). Past that (a million rows
would take hours and hold several copies of the rows), the features are the COMPONENTS (128) principal
components of the normalised rows (`embedder.normalise`; the projection fitted on a seeded sample of at
most FIT_ROWS rows), and each fold's model is fitted on at most FIT_ROWS rows, a seeded sample of the
other folds (`folds`): each row is still scored by a model that never saw it. The result says which
(`features`, `fit_rows`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import numpy as np

from embedder import normalise

METHOD = (
    "cleanlab.filter.find_label_issues (prune_by_noise_rate) on out-of-fold probabilities of "
    "StandardScaler + LogisticRegression(C=0.1), stratified {cv}-fold cross_val_predict (seed {seed}); "
    "ranked by cleanlab.rank.get_label_quality_scores (self_confidence, low = suspicious)"
)
LARGE_METHOD = (
    "cleanlab.filter.find_label_issues (prune_by_noise_rate) on out-of-fold probabilities of "
    "StandardScaler + LogisticRegression(C=0.1) on {components} principal components of the normalised "
    "embeddings, stratified {cv}-fold (seed {seed}), each fold's model fitted on at most {fit_rows:,} rows "
    "sampled from the other folds; ranked by cleanlab.rank.get_label_quality_scores (self_confidence, low = "
    "suspicious)"
)
MAX_EXACT_BYTES = 256 * 2**20  # rows up to this size: cross_val_predict on the raw embeddings
COMPONENTS = 128  # principal components past MAX_EXACT_BYTES
FIT_ROWS = 50_000  # rows each fold's model (and the projection) is fitted on past MAX_EXACT_BYTES
BLOCK_ROWS = 65_536  # rows projected at a time


class Fold(NamedTuple):
    """Rows a fold's model is fitted on, and the rows it scores (never among them)."""

    fit: np.ndarray
    score: np.ndarray


def skip_reason(y: np.ndarray, class_names: list[str], cv: int) -> str | None:
    """Why label issues cannot be computed on these labels (None: they can)."""
    labelled = y[y >= 0]
    if not len(labelled):
        return f"no labelled rows ({len(y)} unlabelled): label issues need class labels"
    counts = Counter(labelled.tolist())
    if len(counts) < 2:
        return (
            f"only one class ({class_names[next(iter(counts))]}, {len(labelled)} images): "
            "label issues need at least 2 classes"
        )
    small = {class_names[c]: n for c, n in sorted(counts.items()) if n < cv}
    if small:
        return (
            f"{cv}-fold cross-validation needs at least {cv} images per class; too few in "
            f"{', '.join(f'{name} ({n})' for name, n in small.items())}"
        )
    return None


def folds(labels: np.ndarray, *, cv: int, seed: int, fit_rows: int | None = None) -> list[Fold]:
    """Stratified `cv`-fold folds of `labels`; each fold's fit rows a seeded sample of at most `fit_rows` (None: all)."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    out = []
    for fit, score in splitter.split(np.zeros((len(labels), 1)), labels):
        if fit_rows is not None and len(fit) > fit_rows:
            fit = np.sort(rng.choice(fit, fit_rows, replace=False))
        out.append(Fold(fit, score))
    return out


def find(
    X: np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    *,
    cv: int = 5,
    seed: int = 0,
    n_jobs: int | None = None,
    normalised: bool = False,
    max_exact_bytes: int = MAX_EXACT_BYTES,
    components: int = COMPONENTS,
    fit_rows: int = FIT_ROWS,
) -> dict[str, Any]:
    """Candidates among the rows with y >= 0: {"issues": [{"row", "given", "suggested", "score", ...}], "skipped",
    "method", "features", "fit_rows"}.

    `X`: raw embeddings, or normalised ones (`normalised=True`, e.g. `CachedBackbone.load_normalised()`).
    Raw rows of at most `max_exact_bytes` get the exact method; larger or normalised rows the principal
    components and sampled folds (see the module).
    """
    exact = not normalised and X.nbytes <= max_exact_bytes
    method = (
        METHOD.format(cv=cv, seed=seed)
        if exact
        else LARGE_METHOD.format(cv=cv, seed=seed, components=min(components, X.shape[1]), fit_rows=fit_rows)
    )
    how = {
        "method": method,
        "features": "embeddings"
        if exact
        else f"{min(components, X.shape[1])} principal components of the normalised embeddings",
        "fit_rows": None if exact else fit_rows,
    }
    reason = skip_reason(y, class_names, cv)
    if reason:
        return {"issues": [], "skipped": reason, "n_scored": 0, **how}
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rows = np.flatnonzero(y >= 0)
    present = np.unique(y[rows])
    labels = np.searchsorted(present, y[rows])  # cleanlab wants classes 0..K-1, each present
    if exact:
        probs = _exact_probabilities(X[rows], labels, cv=cv, seed=seed, n_jobs=n_jobs)
    else:
        P = _components(X, rows, normalised=normalised, components=components, fit_rows=fit_rows, seed=seed)
        probs = _sampled_probabilities(P, labels, len(present), cv=cv, seed=seed, fit_rows=fit_rows)
    flagged = find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    suggested = probs.argmax(axis=1)
    issues = []
    for r in sorted(np.flatnonzero(flagged).tolist(), key=lambda r: (scores[r], r)):
        issues.append(
            {
                "row": int(rows[r]),
                "given": class_names[present[labels[r]]],
                "suggested": class_names[present[suggested[r]]],
                "score": round(float(scores[r]), 6),
                "suggested_probability": round(float(probs[r, suggested[r]]), 6),
            }
        )
    return {
        "issues": issues,
        "skipped": None,
        "n_scored": len(rows),
        "oof_accuracy": round(float((suggested == labels).mean()), 6),
        **how,
    }


def _model() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))


def _exact_probabilities(X: np.ndarray, labels: np.ndarray, *, cv: int, seed: int, n_jobs: int | None) -> np.ndarray:
    from sklearn.model_selection import cross_val_predict

    splits = [(fold.fit, fold.score) for fold in folds(labels, cv=cv, seed=seed)]
    return cross_val_predict(_model(), X, labels, cv=splits, method="predict_proba", n_jobs=n_jobs)


def _components(
    X: np.ndarray, rows: np.ndarray, *, normalised: bool, components: int, fit_rows: int, seed: int
) -> np.ndarray:
    """The principal components of the normalised `rows` of X, fitted on a seeded sample, projected in blocks."""
    from sklearn.decomposition import PCA

    prepare = (lambda part: part) if normalised else normalise
    sample = np.sort(np.random.default_rng(seed).permutation(rows)[:fit_rows])
    pca = PCA(n_components=min(components, X.shape[1], len(sample)), svd_solver="covariance_eigh")
    # "covariance_eigh": the D x D covariance and its eigenvectors, seconds where an SVD of the rows takes minutes
    pca.fit(prepare(X[sample]))
    P = np.empty((len(rows), pca.n_components_), np.float32)
    for start in range(0, len(rows), BLOCK_ROWS):
        P[start : start + BLOCK_ROWS] = pca.transform(prepare(X[rows[start : start + BLOCK_ROWS]]))
    return P


def _sampled_probabilities(
    P: np.ndarray, labels: np.ndarray, n_classes: int, *, cv: int, seed: int, fit_rows: int
) -> np.ndarray:
    """Out-of-fold probabilities, each fold's model fitted on a sample of at most `fit_rows` other rows."""
    probs = np.zeros((len(P), n_classes))
    for fold in folds(labels, cv=cv, seed=seed, fit_rows=fit_rows):
        model = _model().fit(P[fold.fit], labels[fold.fit])
        probs[np.ix_(fold.score, model.classes_)] = model.predict_proba(P[fold.score])
    return probs
