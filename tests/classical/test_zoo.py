"""The model zoo: preprocessing inside each Pipeline, grids and their overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from classical.models.zoo import MODEL_NAMES, ZOO, expand_grid, grid_for, load_grids


def test_zoo_has_the_six_models() -> None:
    assert MODEL_NAMES == ("lr", "svm-linear", "svm-rbf", "rf", "knn", "dense")
    assert [ZOO[name].kind for name in MODEL_NAMES].count("neural") == 1


@pytest.mark.parametrize(
    ("name", "first_step"),
    [("lr", StandardScaler), ("svm-linear", StandardScaler), ("svm-rbf", StandardScaler), ("knn", Normalizer)],
)
def test_preprocessing_lives_inside_the_pipeline(name: str, first_step: type) -> None:
    model = ZOO[name].build(0)
    assert isinstance(model, Pipeline) and isinstance(model.steps[0][1], first_step)


def test_knn_uses_cosine_distance() -> None:
    assert ZOO["knn"].build(0).named_steps["clf"].metric == "cosine"


def test_default_grids_address_real_parameters() -> None:
    for name in MODEL_NAMES:
        ZOO[name].build(0).set_params(**{key: values[0] for key, values in grid_for(name).items()})


def test_short_keys_and_pca_expand() -> None:
    grid = expand_grid(ZOO["lr"], {"C": [1.0], "pca": [None, 0, 64]})
    assert grid["clf__C"] == [1.0]
    assert grid["reduce"][:2] == ["passthrough", "passthrough"] and isinstance(grid["reduce"][2], PCA)
    assert grid["reduce"][2].n_components == 64


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_grid_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"grid{suffix}"
    path.write_text(json.dumps({"lr": {"C": [0.5]}}) if suffix == ".json" else "[lr]\nC = [0.5]\npca = [0, 16]\n")
    grids = load_grids(path)
    assert grid_for("lr", grids)["clf__C"] == [0.5]
    assert grid_for("rf", grids) == ZOO["rf"].grid  # models not in the file keep their default


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"xgboost": {"depth": [1]}}', "unknown models"), ("{not json", "is not valid JSON")],
)
def test_bad_grid_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "grid.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_grids(path)


def test_grid_values_must_be_lists() -> None:
    with pytest.raises(ValueError, match="'C' must map to a non-empty list"):
        expand_grid(ZOO["lr"], {"C": 1.0})
