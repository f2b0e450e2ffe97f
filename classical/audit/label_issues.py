"""Label-issue candidates: cleanlab's confident learning on out-of-fold probabilities of the embeddings.

The model is the sweep's `lr` pipeline (StandardScaler -> multinomial LogisticRegression, C = 0.1),
its probabilities come from stratified k-fold `cross_val_predict` on the labelled rows, so no image
is scored by a model that saw it. `cleanlab.filter.find_label_issues` (prune by noise rate) picks
the candidates, ranked by `cleanlab.rank.get_label_quality_scores` (self-confidence: the
out-of-fold probability of the given label; low = suspicious). cleanlab is imported here only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

METHOD = (
    "cleanlab.filter.find_label_issues (prune_by_noise_rate) on out-of-fold probabilities of "
    "StandardScaler + LogisticRegression(C=0.1), stratified {cv}-fold cross_val_predict (seed {seed}); "
    "ranked by cleanlab.rank.get_label_quality_scores (self_confidence, low = suspicious)"
)


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


def find(
    X: np.ndarray, y: np.ndarray, class_names: list[str], *, cv: int = 5, seed: int = 0, n_jobs: int | None = None
) -> dict[str, Any]:
    """Candidates among the rows with y >= 0: {"issues": [{"row", "given", "suggested", "score", ...}], "skipped", "method"}."""
    method = METHOD.format(cv=cv, seed=seed)
    reason = skip_reason(y, class_names, cv)
    if reason:
        return {"issues": [], "skipped": reason, "method": method, "n_scored": 0}
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = np.flatnonzero(y >= 0)
    present = np.unique(y[rows])
    labels = np.searchsorted(present, y[rows])  # cleanlab wants classes 0..K-1, each present
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, X[rows], labels, cv=folds, method="predict_proba", n_jobs=n_jobs)
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
        "method": method,
        "n_scored": len(rows),
        "oof_accuracy": round(float((suggested == labels).mean()), 6),
    }
