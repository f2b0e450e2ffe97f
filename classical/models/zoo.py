"""The model zoo: scikit-learn Pipelines with the preprocessing that suits each model, and grids.

Every preprocessing step sits inside its Pipeline, so cross-validation never leaks statistics
from validation folds. Grids are small on purpose (the default sweep of 1,250 photos takes
about a minute on 2 cores); override them with a JSON or TOML file (see `load_grids`).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.base import BaseEstimator, clone
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from classical.models.dense import DenseHead


@dataclass(frozen=True)
class ModelSpec:
    """A named model: how to build it, the grid searched by default, and how it is selected.

    kind "classical": searched by stratified k-fold CV on train + validation.
    kind "neural": trained on train, selected by accuracy on the validation split.
    calibrated: has no predict_proba of its own; probabilities come from sigmoid calibration.
    """

    name: str
    kind: str
    build: Callable[[int], BaseEstimator]
    grid: dict[str, list[Any]]
    calibrated: bool = False
    description: str = ""


def _lr(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("reduce", "passthrough"),
            ("clf", LogisticRegression(max_iter=2000, random_state=seed)),
        ]
    )


def _svm_linear(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("reduce", "passthrough"),
            ("clf", LinearSVC(dual=True, max_iter=20000, random_state=seed)),
        ]
    )


def _svm_rbf(seed: int) -> Pipeline:
    return Pipeline(
        [("scale", StandardScaler()), ("reduce", "passthrough"), ("clf", SVC(kernel="rbf", random_state=seed))]
    )


def _rf(seed: int) -> Pipeline:
    return Pipeline([("reduce", "passthrough"), ("clf", RandomForestClassifier(random_state=seed))])


def _knn(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("normalize", Normalizer()),
            ("reduce", "passthrough"),
            ("clf", KNeighborsClassifier(metric="cosine", algorithm="brute")),
        ]
    )


def _dense(seed: int) -> DenseHead:
    return DenseHead(seed=seed)


ZOO = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "lr",
            "classical",
            _lr,
            {"clf__C": [0.01, 0.1, 1.0, 10.0]},
            description="standardize, multinomial logistic regression",
        ),
        ModelSpec(
            "svm-linear",
            "classical",
            _svm_linear,
            {"clf__C": [0.0005, 0.005, 0.05]},
            calibrated=True,
            description="standardize, linear SVM (LinearSVC), sigmoid-calibrated probabilities",
        ),
        ModelSpec(
            "svm-rbf",
            "classical",
            _svm_rbf,
            {"clf__C": [1.0, 10.0], "clf__gamma": ["scale", 0.0002, 0.0001]},
            calibrated=True,
            description="standardize, RBF SVM, sigmoid-calibrated probabilities",
        ),
        ModelSpec(
            "rf",
            "classical",
            _rf,
            {"clf__n_estimators": [300], "clf__max_features": ["sqrt", 0.05]},
            description="random forest on the raw embeddings",
        ),
        ModelSpec(
            "knn",
            "classical",
            _knn,
            {"clf__n_neighbors": [1, 5, 15], "clf__weights": ["uniform", "distance"]},
            description="L2-normalize, k-nearest neighbours, cosine distance",
        ),
        ModelSpec(
            "dense",
            "neural",
            _dense,
            {"learning_rate": [1e-3, 3e-3], "dropout": [0.0, 0.2]},
            description="Keras Dense softmax head on the frozen base's embeddings (recipe 2)",
        ),
    )
}
MODEL_NAMES = tuple(ZOO)


def expand_grid(spec: ModelSpec, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Turn user-friendly grid keys into Pipeline parameters.

    "C" means "clf__C" (keys without "__" address the classifier); "pca": [null, 128] searches
    over no reduction vs PCA to 128 components (0 also means none, for TOML).
    """
    expanded: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid for '{spec.name}': '{key}' must map to a non-empty list. Received: {values!r}")
        if key == "pca":
            expanded["reduce"] = ["passthrough" if not n else PCA(n_components=n, random_state=0) for n in values]
        elif spec.kind == "classical" and "__" not in key:
            expanded[f"clf__{key}"] = values
        else:
            expanded[key] = values
    check_grid(spec, expanded)
    return expanded


def _step_of(estimator: BaseEstimator, key: str) -> tuple[BaseEstimator, str]:
    """The estimator a grid key addresses and its own parameter name ("clf__C" -> the classifier, "C")."""
    *steps, parameter = key.split("__")
    for step in steps:
        estimator = estimator.get_params()[step]
    return estimator, parameter


def check_grid(spec: ModelSpec, grid: dict[str, list[Any]]) -> None:
    """Every key a parameter of the model and every value one it accepts (scikit-learn's own constraints)."""
    known = spec.build(0).get_params()
    for key, values in grid.items():
        short = "pca" if key == "reduce" else key.removeprefix("clf__")
        if key not in known:
            own = sorted(k.removeprefix("clf__") for k in known if k.startswith("clf__") and k.count("__") == 1)
            raise ValueError(
                f"grid for '{spec.name}': unknown parameter '{short}'; "
                f"its parameters: {', '.join(own or sorted(known))}"
            )
        for value in values:
            step, parameter = _step_of(clone(spec.build(0)), key)
            if isinstance(step, str):  # "passthrough" placeholder: replaced by the value itself
                continue
            checked = value if isinstance(value, BaseEstimator) else step.set_params(**{parameter: value})
            try:
                checked._check_params() if hasattr(checked, "_check_params") else checked._validate_params()
            except ValueError as exc:
                raise ValueError(f"grid for '{spec.name}': parameter '{short}' cannot be {value!r}: {exc}") from None
            except TypeError:
                default = known[key]
                raise ValueError(
                    f"grid for '{spec.name}': parameter '{short}' cannot be {value!r} (a "
                    f"{type(value).__name__}); give values like its default {default!r}."
                ) from None


def load_grids(path: str | os.PathLike) -> dict[str, dict[str, list[Any]]]:
    """Read grids from JSON or TOML: {model name: {parameter: [values]}}, e.g. {"lr": {"C": [0.1, 1]}}."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file '{path}' does not exist.")
    text = path.read_text()
    try:
        grids = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(
            f"grid file '{path}' is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}"
        ) from exc
    unknown = set(grids) - set(ZOO)
    if unknown:
        raise ValueError(f"grid file '{path}' names unknown models {sorted(unknown)}; known: {', '.join(ZOO)}")
    for name, grid in grids.items():
        if not isinstance(grid, dict):
            raise ValueError(f"grid file '{path}': '{name}' must map parameters to lists of values. Received: {grid!r}")
        try:
            expand_grid(ZOO[name], grid)
        except ValueError as exc:
            raise ValueError(f"grid file '{path}': {exc}") from None
    return grids


def grid_for(name: str, overrides: dict[str, dict[str, list[Any]]] | None = None) -> dict[str, list[Any]]:
    """The searched grid of a model: the user's override if given, else the default."""
    spec = ZOO[name]
    if overrides and name in overrides:
        return expand_grid(spec, overrides[name])
    return dict(spec.grid)
