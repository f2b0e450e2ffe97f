"""Test metrics of a model's probabilities, with their 95% intervals, and its prediction cost per image."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
)

from classical.report.uncertainty import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_macro_f1,
    wilson_interval,
)


def score(
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    *,
    bootstrap_seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Test metrics of class probabilities (n, n_classes) against true class indices.

    `test_accuracy_ci`: 95% Wilson score interval over the test images; `macro_f1_ci`: 95%
    percentile bootstrap over the test images (`resamples` resamples, seed `bootstrap_seed`).
    `test_predictions`: the predicted class index of each test image, in the order of `y_true`, and
    `test_confidence` the probability the model gave it (the sweep passes the test images sorted by path, the order of the report's
    `split.test_paths`; see `align_predictions` for rows computed in another order).
    """
    y_true = np.asarray(y_true)
    labels = np.arange(len(class_names))
    y_pred = np.argmax(proba, axis=1)
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    correct = int((y_pred == y_true).sum())
    return {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_accuracy_ci": list(wilson_interval(correct, len(y_true))),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "macro_f1_ci": list(
            bootstrap_macro_f1(y_true, y_pred, len(class_names), resamples=resamples, seed=bootstrap_seed)
        ),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-15, 1), labels=labels)),
        "n_test": len(y_true),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class_f1": {name: float(f) for name, f in zip(class_names, per_class)},
        "test_predictions": [int(p) for p in y_pred],
        "test_confidence": [round(float(p), 4) for p in np.max(proba, axis=1)],
    }


def latency_ms(predict: Any, X: np.ndarray, min_seconds: float = 0.2) -> float:
    """Milliseconds per row of `predict(X)`, repeated until `min_seconds` have passed."""
    predict(X[:1])  # warm-up
    calls, started = 0, time.perf_counter()
    while True:
        predict(X)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return 1000 * elapsed / (calls * len(X))
