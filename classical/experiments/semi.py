"""Semi-supervised models for the learning curve: the unlabelled rows of the cache put to work.

At each learning-curve point the labelled subset is joined by the rows without a label: the cache's
unlabelled rows (label -1: a flat folder extracted into the same cache with the same backbone) and the
training rows whose labels the point holds back. Three models, built on scikit-learn's, use them:

- `semi-self-training`: `SelfTrainingClassifier` around the point's best classical head (the one with
  the best CV accuracy at that point and seed, with its selected hyper-parameters): it fits the head,
  adds the unlabelled rows it predicts with probability >= `SELF_TRAINING_THRESHOLD` as labelled,
  and refits, at most `SELF_TRAINING_ITERATIONS` times.
- `semi-agreement`: the point's best-CV linear head (`LINEAR_HEADS`; the best classical one if the
  sweep has none) self-trained on the rows where it and label spreading agree
  (`AgreementSelfTraining`): in each of `AGREEMENT_ROUNDS` rounds the head, refitted from scratch,
  takes the agreed rows it and label spreading are together most sure of, class by class in
  proportion to the labelled classes, a growing share of the unlabelled rows each round. Two views
  that err differently (a linear boundary, a neighbourhood graph) filter each other's mistakes, which
  neither `SelfTrainingClassifier` (the head's own confidence) nor the graph alone do.
- `semi-label-spreading`: `LabelSpreading` on a kNN graph (`LABEL_SPREADING_NEIGHBOURS` neighbours,
  `LABEL_SPREADING_ALPHA` of each node's labels from its neighbours) of the embeddings power-normalised
  (signed square root, then unit L2 norm: the audit's similarity, the Hellinger kernel on ReLU6
  features), reduced by PCA to `LABEL_SPREADING_COMPONENTS` dimensions (fitted on the rows it is given,
  labelled and unlabelled: no label is used) and L2-normalised again.

All use fixed parameters: with a few labels per class there is no honest way to cross-validate
them. The graph's were chosen on the flowers at 10 labels per class on a development split (seed 1),
not on any run's test split (README, "Learning curves"): the PCA step gave +2.5 points over the same
graph on the full embeddings there; alpha 0.9 instead of scikit-learn's 0.2 lets labels travel along
chains of neighbours (with 0.2 they fade within a few hops and far rows get no label at all). A row
whose neighbours no label reaches (a graph component without a labelled row) gets no probabilities
from scikit-learn (a RuntimeWarning, and the first class): none of the flowers' test rows at 5 or 10
labels per class. Unlabelled rows that are copies or near-duplicates of a test image are left out (as the split
keeps duplicates on one side), so no test photo is seen in training, not even without its label.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer
from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

from classical.data.near_duplicates import (
    DEFAULT_THRESHOLD,
    find_near_duplicates,
    normalise,
)
from classical.data.rows import backbone_rows
from embedder import open_cache

logger = logging.getLogger(__name__)

SELF_TRAINING, AGREEMENT, LABEL_SPREADING = "semi-self-training", "semi-agreement", "semi-label-spreading"
SEMI_MODELS = (SELF_TRAINING, AGREEMENT, LABEL_SPREADING)
AGREEMENT_ROUNDS = (0.2, 0.4, 0.6, 0.8, 1.0)  # share of the unlabelled rows each round may add
LINEAR_HEADS = ("lr", "svm-linear")  # agreement's head: a view unlike the graph's (a k-NN head would echo it)
SELF_TRAINING_THRESHOLD = 0.75
SELF_TRAINING_ITERATIONS = 10
LABEL_SPREADING_NEIGHBOURS = 10
LABEL_SPREADING_ALPHA = 0.9
LABEL_SPREADING_COMPONENTS = 64
DESCRIPTION = (
    f"{SELF_TRAINING}: SelfTrainingClassifier (threshold {SELF_TRAINING_THRESHOLD}, at most "
    f"{SELF_TRAINING_ITERATIONS} iterations) around the point's classical head with the best CV accuracy, "
    f"with its selected parameters; {AGREEMENT}: the point's best-CV linear head ({', '.join(LINEAR_HEADS)}) refitted "
    f"{len(AGREEMENT_ROUNDS)} times on the labelled "
    "rows plus the unlabelled rows where it and label spreading agree, most confident first, per class in "
    f"proportion to the labelled classes, up to {AGREEMENT_ROUNDS[0]:.0%}..{AGREEMENT_ROUNDS[-1]:.0%} of the "
    f"unlabelled rows; {LABEL_SPREADING}: LabelSpreading on a {LABEL_SPREADING_NEIGHBOURS}-NN "
    f"graph of the power-normalised embeddings, PCA to {LABEL_SPREADING_COMPONENTS} dimensions, L2 norm "
    f"(alpha {LABEL_SPREADING_ALPHA}); all fixed, not searched, "
    "and fed the cache's unlabelled rows plus the training rows whose labels the point holds back"
)


@dataclass
class Unlabeled:
    """The cache's rows without a label that may be used in training (none is a copy of a test image)."""

    X: np.ndarray
    paths: np.ndarray
    in_cache: int  # unlabelled rows of the backbone in the cache
    left_out: int  # of those: non-finite, or copies / near-duplicates of a test image

    def record(self) -> dict[str, Any]:
        return {
            "in_cache": self.in_cache,
            "used": len(self.X),
            "left_out": self.left_out,
            "left_out_why": "non-finite embeddings, or copies / near-duplicates of a test image",
        }


def load_unlabeled(
    cache: str | os.PathLike, backbone: str, *, test_X: np.ndarray, test_sha256: np.ndarray
) -> Unlabeled:
    """The unlabelled rows of `backbone` in `cache`, without those that duplicate a test image."""
    with open_cache(cache) as opened:
        rows = backbone_rows(opened, backbone)
        unlabeled = rows.labels < 0
        if not unlabeled.any():
            return Unlabeled(
                X=np.zeros((0, rows.dim), np.float32), paths=np.array([], dtype=str), in_cache=0, left_out=0
            )
        X, paths, sha256 = rows.load()[unlabeled], rows.paths[unlabeled], rows.sha256[unlabeled]
    keep = np.isfinite(X).all(axis=1) & ~np.isin(sha256, test_sha256)
    if len(test_X) and keep.any():
        found, _ = find_near_duplicates(np.concatenate([test_X, X[keep]]), threshold=DEFAULT_THRESHOLD)
        n_test = len(test_X)
        crossing = np.concatenate([found.j[found.i < n_test], found.i[found.j < n_test]])
        near = np.unique(crossing[crossing >= n_test] - n_test)
        keep[np.flatnonzero(keep)[near]] = False
    left_out = int((~keep).sum())
    if left_out:
        logger.warning(
            "semi-supervised: %d of %d unlabelled rows of %s left out (non-finite, or copies of test images)",
            left_out,
            len(keep),
            cache,
        )
    return Unlabeled(
        X=np.ascontiguousarray(X[keep], np.float32), paths=paths[keep], in_cache=len(keep), left_out=left_out
    )


def label_spreading(rows: int, dim: int) -> Pipeline:
    """LabelSpreading on a kNN graph of the power-normalised, PCA-reduced embeddings (for `rows` x `dim` inputs)."""
    return Pipeline(
        [
            ("normalise", FunctionTransformer(normalise)),
            ("reduce", PCA(n_components=min(LABEL_SPREADING_COMPONENTS, rows, dim), random_state=0)),
            ("unit", Normalizer()),
            (
                "spread",
                LabelSpreading(
                    kernel="knn",
                    n_neighbors=min(LABEL_SPREADING_NEIGHBOURS, rows - 1),
                    alpha=LABEL_SPREADING_ALPHA,
                    max_iter=1000,
                ),
            ),
        ]
    )


def self_training(head: BaseEstimator) -> SelfTrainingClassifier:
    """Self-training around an (unfitted copy of a) classical head with predict_proba."""
    return SelfTrainingClassifier(clone(head), threshold=SELF_TRAINING_THRESHOLD, max_iter=SELF_TRAINING_ITERATIONS)


class AgreementSelfTraining(ClassifierMixin, BaseEstimator):
    """Self-training of `head` on the unlabelled rows (label -1) where it and `spreading` agree, most confident first.

    `spreading`: a label-spreading pipeline (`label_spreading`); its fitted last step gives each
    unlabelled row a label distribution. Each round the head, refitted from scratch on the labelled
    rows plus the rows chosen, predicts the unlabelled rows again; the rows both give the same class
    are ranked by the product of their probabilities, and each class takes its best, up to
    `fraction` x unlabelled rows x its share of the labelled rows. `spreading_`: the fitted pipeline.
    """

    def __init__(self, head: BaseEstimator, spreading: Pipeline, rounds: tuple[float, ...] = AGREEMENT_ROUNDS) -> None:
        self.head, self.spreading, self.rounds = head, spreading, rounds

    def fit(self, X: np.ndarray, y: np.ndarray) -> AgreementSelfTraining:
        labeled = y >= 0
        X_labeled, y_labeled, X_unlabeled = X[labeled], y[labeled], X[~labeled]
        self.spreading_ = clone(self.spreading).fit(X, y)
        graph = self.spreading_[-1]
        spread = graph.label_distributions_[~labeled]
        head = clone(self.head).fit(X_labeled, y_labeled)
        if not np.array_equal(head.classes_, graph.classes_[graph.classes_ >= 0]):
            raise ValueError(f"the head's classes {head.classes_} are not label spreading's {graph.classes_}")
        share = np.bincount(np.searchsorted(head.classes_, y_labeled), minlength=len(head.classes_)) / len(y_labeled)
        chosen = np.zeros(0, dtype=int)
        for fraction in self.rounds:
            probabilities = head.predict_proba(X_unlabeled)
            joint = probabilities * spread
            agreed = (probabilities.argmax(1) == spread.argmax(1)) & (spread.sum(1) > 0)
            label = probabilities.argmax(1)
            confidence = joint.max(1) / np.maximum(joint.sum(1), 1e-12)
            quota = np.round(fraction * len(X_unlabeled) * share).astype(int)
            chosen = np.concatenate(
                [
                    candidates[np.argsort(-confidence[candidates], kind="stable")][: quota[c]]
                    for c in range(len(share))
                    for candidates in [np.flatnonzero(agreed & (label == c))]
                ]
            )
            head = clone(self.head).fit(
                np.concatenate([X_labeled, X_unlabeled[chosen]]),
                np.concatenate([y_labeled, head.classes_[label[chosen]]]),
            )
        self.head_, self.classes_, self.pseudo_labeled_ = head, head.classes_, len(chosen)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.head_.predict(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.head_.predict_proba(X)


def fit_semi(
    X: np.ndarray,
    y: np.ndarray,
    X_unlabeled: np.ndarray,
    head: BaseEstimator | None,
    *,
    agreement_head: BaseEstimator | None = None,
) -> dict[str, Any]:
    """The semi-supervised models fitted on the labelled rows (X, y) plus the unlabelled rows; by curve name.

    `head`: the classical head self-training wraps (None: no classical model in the sweep, label spreading
    alone); `agreement_head`: the one agreement self-trains (default: `head`).
    """
    X_all = np.concatenate([X, X_unlabeled])
    y_all = np.concatenate([y, np.full(len(X_unlabeled), -1, dtype=y.dtype)])
    spreading = label_spreading(*X_all.shape)
    if head is None:
        fitted = {LABEL_SPREADING: spreading.fit(X_all, y_all)}
    else:
        agreement = AgreementSelfTraining(clone(agreement_head or head), spreading).fit(X_all, y_all)
        fitted = {
            SELF_TRAINING: self_training(head).fit(X_all, y_all),
            AGREEMENT: agreement,
            LABEL_SPREADING: agreement.spreading_,
        }  # the graph agreement fitted on the same rows, not fitted twice
    return {name: fitted[name] for name in SEMI_MODELS if name in fitted}
