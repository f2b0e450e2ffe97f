"""The noise around a verdict: intervals of test scores, and the paired test of two models.

- Accuracy: 95% Wilson score interval over the test images (`wilson_interval`), the number of
  correct images being binomial. It stays inside [0, 1] and is sound at 0 or 1 errors, where the
  normal (Wald) interval collapses.
- Macro-F1: 95% percentile bootstrap over the test images (`bootstrap_macro_f1`): 2000
  resamples of the test images with replacement, fixed seed, macro-F1 of each resample.
- Best classical vs best neural (`paired_comparison`): the same test images, so a paired test.
  McNemar's exact test (`mcnemar_exact`): of the images exactly one model gets right, are the
  b the classical one gets right and the c the neural one gets right compatible with a fair
  coin? Two-sided binomial test of b in b + c trials, p = 0.5. The difference of accuracies is
  (b - c) / n, with a 95% interval by Newcombe's hybrid score method for paired proportions
  (`newcombe_paired_interval`; Newcombe 1998, method 10, as worked in Altman et al.,
  "Statistics with confidence", 2000, §6).
"""

from __future__ import annotations

from typing import Any

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
ALPHA = 0.05  # significance level of the paired test

TEST_NAME = "McNemar exact (two-sided binomial test on the discordant images, p = 0.5)"
CI_NAME = "Newcombe hybrid score interval for the difference of paired proportions (1998, method 10), 95%"


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion correct / n (scipy's binomtest, method "wilson")."""
    from scipy.stats import binomtest

    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be in [0, n]. Received: correct={correct}, n={n}")
    interval = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (max(0.0, float(interval.low)), min(1.0, float(interval.high)))


def macro_f1_of_counts(true_counts: np.ndarray, pred_counts: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Macro-F1 from per-class counts (last axis = classes): F1 = 2 TP / (true + predicted), 0 when both are 0.

    The same as scikit-learn's `f1_score(average="macro", labels=all classes, zero_division=0)`.
    """
    denominator = true_counts + pred_counts
    f1 = np.divide(2.0 * hits, denominator, out=np.zeros(np.shape(hits), dtype=np.float64), where=denominator > 0)
    return f1.mean(axis=-1)


def bootstrap_macro_f1(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of macro-F1: resample the test images with replacement `resamples` times."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    if n == 0:
        return (0.0, 1.0)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=(resamples, n))
    offset = (np.arange(resamples) * n_classes)[:, None]  # one block of class counters per resample
    t, p = y_true[rows] + offset, y_pred[rows] + offset
    size = resamples * n_classes
    true_counts = np.bincount(t.ravel(), minlength=size).reshape(resamples, n_classes)
    pred_counts = np.bincount(p.ravel(), minlength=size).reshape(resamples, n_classes)
    hits = np.bincount(t[t == p], minlength=size).reshape(resamples, n_classes)
    scores = macro_f1_of_counts(true_counts, pred_counts, hits)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(scores, [tail, 100 - tail])
    return (float(low), float(high))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of b successes in b + c trials at p = 0.5 (1 when b + c = 0)."""
    from scipy.stats import binomtest

    if b + c == 0:
        return 1.0
    return float(min(1.0, binomtest(int(b), int(b + c), 0.5, alternative="two-sided").pvalue))


def newcombe_paired_interval(
    both: int, b: int, c: int, neither: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """95% interval of p1 - p2 for paired proportions, Newcombe's hybrid score method (1998, method 10).

    `both`: images both models get right; `b`: only model 1; `c`: only model 2; `neither`.
    p1 = (both + b) / n, p2 = (both + c) / n. Wilson intervals (l1, u1), (l2, u2) of p1 and p2 are
    combined with phi, the correlation of the paired outcomes (numerator continuity-corrected as
    in Altman et al. 2000: ad - bc - n/2 when ad - bc > n/2, 0 when 0 <= ad - bc <= n/2):
    L = D - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2),
    U = D + sqrt((p2 - l2)^2 - 2 phi (p2 - l2)(u1 - p1) + (u1 - p1)^2).
    """
    n = both + b + c + neither
    if n == 0:
        return (-1.0, 1.0)
    p1, p2 = (both + b) / n, (both + c) / n
    l1, u1 = wilson_interval(both + b, n, confidence)
    l2, u2 = wilson_interval(both + c, n, confidence)
    product = float(both + b) * (c + neither) * (both + c) * (b + neither)
    phi = 0.0
    if product > 0:
        cross = float(both) * neither - float(b) * c
        corrected = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
        phi = corrected / np.sqrt(product)
    difference = p1 - p2
    low = difference - np.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = difference + np.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return (float(max(-1.0, low)), float(min(1.0, high)))


def paired_comparison(y_true: np.ndarray, pred_1: np.ndarray, pred_2: np.ndarray) -> dict[str, Any]:
    """Model 1 vs model 2 on the same images: difference of accuracies, its interval, McNemar's exact p."""
    y_true, pred_1, pred_2 = (np.asarray(a, dtype=np.int64) for a in (y_true, pred_1, pred_2))
    if not len(y_true) == len(pred_1) == len(pred_2):
        raise ValueError(
            f"paired predictions need the same images: {len(y_true)} labels, "
            f"{len(pred_1)} and {len(pred_2)} predictions"
        )
    right_1, right_2 = pred_1 == y_true, pred_2 == y_true
    both, b = int((right_1 & right_2).sum()), int((right_1 & ~right_2).sum())
    c, neither = int((~right_1 & right_2).sum()), int((~right_1 & ~right_2).sum())
    n = len(y_true)
    p_value = mcnemar_exact(b, c)
    return {
        "difference": (b - c) / n if n else 0.0,
        "ci": list(newcombe_paired_interval(both, b, c, neither)),
        "p_value": p_value,
        "test": TEST_NAME,
        "ci_method": CI_NAME,
        "discordant": [b, c],
        "n_test": n,
        "significant": bool(p_value < ALPHA),
    }
