"""Loading labelled embeddings: every bad cache gets a specific error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, write_cache

from classical import DataError, load_labeled


def test_loads_labelled_rows(tmp_path: Path) -> None:
    X, labels = blobs(per_class=5)
    key = write_cache(tmp_path / "c.h5", X, labels)
    data = load_labeled(tmp_path / "c.h5")
    assert data.X.shape == (15, 32) and data.class_names == ["ant", "bee", "cat"] and data.backbone_key == key
    assert sorted(set(data.y.tolist())) == [0, 1, 2]


def test_no_labels(tmp_path: Path) -> None:
    write_cache(tmp_path / "c.h5", np.ones((4, 8)), [""] * 4)
    with pytest.raises(DataError, match=r"has no labels \(4 unlabeled rows\)"):
        load_labeled(tmp_path / "c.h5")


def test_one_class(tmp_path: Path) -> None:
    write_cache(tmp_path / "c.h5", np.ones((4, 8)), ["ant"] * 4)
    with pytest.raises(DataError, match=r"1 class \(ant\); a classifier needs at least 2"):
        load_labeled(tmp_path / "c.h5")


def test_nan_rows_are_named(tmp_path: Path) -> None:
    X, labels = blobs(per_class=3)
    X[4, 0] = np.nan
    X[7, 2] = np.inf
    write_cache(tmp_path / "c.h5", X, labels)
    with pytest.raises(DataError, match=r"2 rows with NaN or infinite embeddings \(bee/0004.jpg, cat/0007.jpg\)"):
        load_labeled(tmp_path / "c.h5")


def test_several_backbones_need_a_choice(tmp_path: Path) -> None:
    X, labels = blobs(per_class=3)
    first = write_cache(tmp_path / "c.h5", X, labels)
    write_cache(tmp_path / "c.h5", X, labels, pooling="max")
    with pytest.raises(DataError, match="holds 2 backbones; choose one with --backbone"):
        load_labeled(tmp_path / "c.h5")
    assert load_labeled(tmp_path / "c.h5", backbone=first).backbone_key == first
    with pytest.raises(DataError, match="has no embeddings of backbone 'nope'"):
        load_labeled(tmp_path / "c.h5", backbone="nope")
