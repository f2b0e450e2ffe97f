"""`Embedder` as a scikit-learn transformer: pipelines, searches, pickling, paths and arrays."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from embedder import Embedder, ImageError, InputRangeError, decode_image


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(size=96, weights=None).fit()


def labelled_paths(dataset: Path) -> tuple[list[str], list[str]]:
    paths = sorted(str(p) for p in dataset.rglob("*.jpg"))
    return paths, [Path(p).parent.name for p in paths]


def test_init_only_stores_parameters() -> None:
    estimator = Embedder(alpha=0.6, size=7)  # invalid, but __init__ does no work
    assert estimator.get_params()["alpha"] == 0.6
    with pytest.raises(ValueError, match="Received: alpha=0.6"):
        estimator.fit()


def test_paths_and_arrays_give_the_same_embeddings(embedder: Embedder, dataset: Path) -> None:
    paths, _ = labelled_paths(dataset)
    from_paths = embedder.transform(paths[:5])
    pixels = np.stack([decode_image(Path(p).read_bytes(), size=96) for p in paths[:5]])
    assert from_paths.shape == (5, 1280) and from_paths.dtype == np.float32
    np.testing.assert_allclose(embedder.transform(pixels), from_paths, atol=1e-6)
    np.testing.assert_allclose(embedder.transform(list(pixels.astype(np.float32))), from_paths, atol=1e-6)
    assert embedder.get_feature_names_out()[0] == "embedding0"


def test_already_scaled_arrays_are_refused(embedder: Embedder) -> None:
    with pytest.raises(InputRangeError, match="already scaled"):
        embedder.transform(np.random.default_rng(0).uniform(0, 1, (2, 96, 96, 3)))


def test_unreadable_path_names_the_file(embedder: Embedder, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    with pytest.raises(ImageError, match=r"bad.jpg: not an image"):
        embedder.transform([str(bad)])


def test_pipeline_and_grid_search_over_embedder_parameters(dataset: Path) -> None:
    paths, labels = labelled_paths(dataset)
    pipeline = make_pipeline(Embedder(size=96, weights=None), LogisticRegression(max_iter=500))
    search = GridSearchCV(pipeline, {"embedder__pooling": ["avg", "max"]}, cv=2).fit(paths, labels)
    assert search.best_params_["embedder__pooling"] in ("avg", "max")
    assert search.score(paths, labels) > 0.9  # red, green and blue discs are easy
    restored = pickle.loads(pickle.dumps(search.best_estimator_))
    assert "encoder_" not in restored.named_steps["embedder"].__dict__
    assert list(restored.predict(paths)) == list(search.predict(paths))


def test_clone_gives_an_unfitted_copy(embedder: Embedder) -> None:
    copy = clone(embedder)
    assert copy.get_params() == embedder.get_params() and not hasattr(copy, "backbone_")
    assert embedder.backbone_key_.startswith("mobilenet_v2-1.0-96-random-")
