"""DenseHead: recipe 2 (frozen base + Dense softmax) trained on cached embeddings, as a sklearn classifier."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import log_loss

from classical import DenseHead

ROOT = Path(__file__).resolve().parents[1]
CLASSES = np.array(["cat", "dog", "fox"])


def blobs(centers: np.ndarray, per_class: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around `centers` (one per class), labelled with CLASSES."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([center + spread * rng.normal(size=(per_class, centers.shape[1])) for center in centers])
    return X.astype(np.float32), np.repeat(CLASSES[: len(centers)], per_class)


CENTERS = np.random.default_rng(0).normal(size=(3, 32))


@pytest.fixture(scope="module")
def easy() -> dict[str, np.ndarray]:
    X, y = blobs(CENTERS, 40, 0.5, seed=1)
    X_test, y_test = blobs(CENTERS, 20, 0.5, seed=2)
    return {"X": X, "y": y, "X_test": X_test, "y_test": y_test}


@pytest.fixture(scope="module")
def fitted(easy: dict[str, np.ndarray]) -> DenseHead:
    return DenseHead(learning_rate=0.05, max_epochs=20, seed=0).fit(easy["X"], easy["y"])


def test_learns_separable_blobs_with_string_classes(fitted: DenseHead, easy: dict[str, np.ndarray]) -> None:
    assert fitted.classes_.tolist() == ["cat", "dog", "fox"]
    assert fitted.n_features_in_ == 32
    assert fitted.coef_.shape == (32, 3) and fitted.coef_.dtype == np.float32
    assert fitted.intercept_.shape == (3,)
    assert np.mean(fitted.predict(easy["X_test"]) == easy["y_test"]) >= 0.95
    proba = fitted.predict_proba(easy["X_test"])
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert fitted.classes_[proba.argmax(axis=1)].tolist() == fitted.predict(easy["X_test"]).tolist()
    huge = fitted.predict_proba(easy["X_test"] * 1e4)  # logits far beyond exp's float range
    assert np.isfinite(huge).all()
    np.testing.assert_allclose(huge.sum(axis=1), 1.0, rtol=1e-6)
    assert set(fitted.history_) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == fitted.n_epochs_ for values in fitted.history_.values())


def test_early_stopping_keeps_the_best_epochs_weights() -> None:
    centers = np.random.default_rng(3).normal(size=(3, 64))
    X, y = blobs(centers, 20, 2.0, seed=4)
    X_val, y_val = blobs(centers, 20, 2.0, seed=5)
    head = DenseHead(learning_rate=0.05, patience=3, max_epochs=200).fit(X, y, validation_data=(X_val, y_val))

    val_loss = head.history_["val_loss"]
    assert head.n_epochs_ < 200
    assert head.best_epoch_ == head.n_epochs_ - head.patience
    assert val_loss[head.best_epoch_ - 1] == min(val_loss) < val_loss[-1]
    assert head.best_val_accuracy_ == head.history_["val_accuracy"][head.best_epoch_ - 1]
    # The stored weights are the best epoch's, not the last epoch's.
    kept_loss = log_loss(y_val, head.predict_proba(X_val), labels=head.classes_)
    assert kept_loss == pytest.approx(min(val_loss), rel=1e-4)


def test_same_seed_same_weights_other_seed_other_weights(easy: dict[str, np.ndarray]) -> None:
    def coef(seed: int) -> np.ndarray:
        return DenseHead(learning_rate=0.05, dropout=0.3, max_epochs=5, seed=seed).fit(easy["X"], easy["y"]).coef_

    first = coef(0)
    np.testing.assert_array_equal(coef(0), first)
    assert not np.allclose(coef(1), first)


def test_explicit_validation_data_is_what_is_scored(easy: dict[str, np.ndarray]) -> None:
    wrong = np.roll(CLASSES, 1)[np.searchsorted(CLASSES, easy["y_test"])]  # every label moved to another class
    head = DenseHead(learning_rate=0.05, patience=5, max_epochs=30).fit(
        easy["X"], easy["y"], validation_data=(easy["X_test"], wrong)
    )
    assert max(head.history_["accuracy"]) >= 0.95
    assert max(head.history_["val_accuracy"]) <= 0.2
    assert head.best_val_accuracy_ == pytest.approx(np.mean(head.predict(easy["X_test"]) == wrong), abs=1e-6)


def test_validation_labels_must_be_known(easy: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="labels absent from y: \\['emu'\\]"):
        DenseHead().fit(easy["X"], easy["y"], validation_data=(easy["X"][:2], ["cat", "emu"]))


def test_low_learning_rate_warns(easy: dict[str, np.ndarray]) -> None:
    with pytest.warns(UserWarning, match=r"relatively high learning rate .*got learning_rate=1e-05"):
        DenseHead(learning_rate=1e-5, max_epochs=1).fit(easy["X"], easy["y"])


@pytest.mark.parametrize(
    ("params", "received"),
    [
        ({"learning_rate": 0}, "learning_rate=0"),
        ({"learning_rate": -0.1}, "learning_rate=-0.1"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.5}, "dropout=-0.5"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 8.5}, "batch_size=8.5"),
        ({"max_epochs": 0}, "max_epochs=0"),
        ({"patience": -1}, "patience=-1"),
        ({"validation_fraction": 1.0}, "validation_fraction=1.0"),
    ],
)
def test_invalid_parameters_are_refused_at_fit(params: dict, received: str, easy: dict[str, np.ndarray]) -> None:
    head = DenseHead(**params)  # sklearn convention: __init__ stores, fit validates
    with pytest.raises(ValueError, match=f"Received: {received}"):
        head.fit(easy["X"], easy["y"])


def test_pickles_and_predicts_without_tensorflow(
    fitted: DenseHead, easy: dict[str, np.ndarray], tmp_path: Path
) -> None:
    for value in [*vars(fitted).values(), *fitted.history_.values()]:
        assert not type(value).__module__.startswith(("keras", "tensorflow")), value
    path = tmp_path / "head.joblib"
    joblib.dump(fitted, path)
    np.testing.assert_array_equal(joblib.load(path).predict_proba(easy["X_test"]), fitted.predict_proba(easy["X_test"]))

    np.save(tmp_path / "X.npy", easy["X_test"])
    script = (
        "import sys, joblib, numpy as np\n"
        f"head = joblib.load({str(path)!r})\n"
        f"np.save({str(tmp_path / 'proba.npy')!r}, head.predict_proba(np.load({str(tmp_path / 'X.npy')!r})))\n"
        "assert not {'tensorflow', 'keras'} & set(sys.modules), 'TensorFlow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    np.testing.assert_array_equal(np.load(tmp_path / "proba.npy"), fitted.predict_proba(easy["X_test"]))


def test_feature_count_mismatch_names_both_numbers(fitted: DenseHead) -> None:
    with pytest.raises(ValueError, match="X has 31 features, but DenseHead is expecting 32 features"):
        fitted.predict(np.zeros((2, 31)))


def test_predict_before_fit_is_refused() -> None:
    with pytest.raises(NotFittedError):
        DenseHead().predict(np.zeros((2, 32)))


def test_head_on_cached_embeddings_is_recipe_2() -> None:
    import keras

    from embedder import Backbone

    backbone = Backbone(size=96, weights=None)
    images = np.random.default_rng(0).integers(0, 256, (12, 96, 96, 3), dtype=np.uint8)
    embeddings = np.asarray(backbone.model(images))
    labels = np.arange(12) % 3
    head = DenseHead(max_epochs=3).fit(embeddings, labels, validation_data=(embeddings, labels))

    network = keras.Sequential([backbone.model, head.to_keras()])
    assert [tuple(w.shape) for w in network.trainable_weights] == [(backbone.dim, 3), (3,)]
    np.testing.assert_allclose(np.asarray(network(images)), head.predict_proba(embeddings), atol=1e-5)
