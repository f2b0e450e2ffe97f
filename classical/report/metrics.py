"""Test metrics of a model's probabilities, and its prediction cost per image."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, log_loss


def score(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Test metrics of class probabilities (n, n_classes) against true class indices."""
    labels = np.arange(len(class_names))
    y_pred = np.argmax(proba, axis=1)
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-15, 1), labels=labels)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class_f1": {name: float(f) for name, f in zip(class_names, per_class)},
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
