"""Learning curves and semi-supervised models on generated embeddings: parallel strands of points, one per class.

Strands are the case semi-supervised learning is made for: a few labels per class leave most of each
strand far from any labelled point (k-NN and linear models err there), while a kNN graph of all the
rows follows each strand from end to end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import write_cache
from typer.testing import CliRunner

from classical import DataError, load_labeled, sweep
from classical.cli import app
from classical.data.splits import load_or_make_split
from classical.experiments.curves import ALL, draw_subset, parse_points, plan_curve, run_curve
from classical.experiments.semi import AgreementSelfTraining, label_spreading
from classical.experiments.sweep import sorted_test

CLASSES = ("ant", "bee", "cat")
FAST = {"lr": {"C": [0.1, 1.0]}, "knn": {"n_neighbors": [1, 3]}, "dense": {"learning_rate": [0.01]}}


def strands(
    per_class: int, *, dim: int = 16, length: float = 10.0, gap: float = 0.75, noise: float = 0.02, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Parallel line segments `gap` apart, one per class, `length` long, with a little noise (non-negative)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    X = [
        1
        + rng.uniform(0, length, (per_class, 1)) * basis[0]
        + gap * basis[1 + c]
        + noise * rng.normal(size=(per_class, dim))
        for c in range(len(CLASSES))
    ]
    return np.abs(np.concatenate(X)).astype(np.float32), np.repeat(np.arange(len(CLASSES)), per_class)


def strand_cache(path: Path, *, per_class: int = 100, unlabeled: int = 0, copies: int = 0) -> Path:
    """A cache of labelled strands, `unlabeled` more strand rows without a label, and `copies` of labelled rows
    added again without a label (near-duplicates: the ones of test images must be left out)."""
    X, y = strands(per_class + unlabeled // len(CLASSES) + 1)
    order = np.random.default_rng(1).permutation(len(X))
    labelled, rest = order[: per_class * len(CLASSES)], order[per_class * len(CLASSES) :][:unlabeled]
    extra = np.concatenate([X[rest], X[labelled[:copies]]])
    labels = [CLASSES[c] for c in y[labelled]] + [""] * len(extra)
    paths = [f"{label}/{i:04d}.jpg" if label else f"unlabelled/{i:04d}.jpg" for i, label in enumerate(labels)]
    write_cache(path, np.concatenate([X[labelled], extra]), labels, paths=paths)
    return path


@pytest.fixture(scope="module")
def semi_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("curves")
    cache = strand_cache(folder / "c.h5", unlabeled=90, copies=30)
    report = sweep(
        cache,
        folder / "run",
        models=["lr", "knn"],
        grids=FAST,
        cv=3,
        n_jobs=1,
        progress=False,
        embedding_cost=False,
        audit=False,
        learning_curve="2,4,25",
        curve_seeds=3,
        semi_supervised=True,
    )
    return folder, report


def test_curve_rises_and_semi_supervision_helps_at_few_labels(semi_run: tuple[Path, dict]) -> None:
    curve = semi_run[1]["learning_curve"]
    assert curve["per_class"] == [2, 4, 25, ALL] and curve["seeds"] == 3 and curve["seed_values"] == [0, 1, 2]
    assert set(curve["models"]) == {"lr", "knn", "semi-label-spreading", "semi-self-training", "semi-agreement"}
    assert curve["images"][:3] == [6, 12, 75] and curve["folds"] == [2, 3, 3, 3]
    for name, means in curve["models"].items():
        assert len(means) == len(curve["std"][name]) == 4 and all(len(row) == 3 for row in curve["accuracies"][name])
    knn = curve["models"]["knn"]
    assert knn[0] < knn[2] - 0.1 and knn[0] < knn[3] - 0.1  # more labels, better k-NN
    for point, margin in ((0, 0.1), (1, 0.02)):  # 2 and 4 labels per class: unlabelled rows carry labels along strands
        supervised = max(curve["models"][name][point] for name in ("lr", "knn"))
        assert curve["models"]["semi-label-spreading"][point] > supervised + margin, curve["models"]
        assert curve["models"]["semi-agreement"][point] > supervised + margin, curve["models"]
    assert curve["kinds"] == {
        "lr": "classical",
        "knn": "classical",
        "semi-label-spreading": "semi-supervised",
        "semi-self-training": "semi-supervised",
        "semi-agreement": "semi-supervised",
    }


def test_all_point_reuses_the_sweeps_rows(semi_run: tuple[Path, dict]) -> None:
    report = semi_run[1]
    curve = report["learning_curve"]
    for row in report["models"]:
        assert curve["accuracies"][row["name"]][-1][0] == pytest.approx(row["test_accuracy"])


def test_copies_of_test_images_are_left_out_and_the_full_label_test_is_paired(semi_run: tuple[Path, dict]) -> None:
    folder, report = semi_run
    data = load_labeled(folder / "c.h5")
    test_rows = set(load_or_make_split(folder / "run", data).indices(data.paths)["test"].tolist())
    copied_test = sum(1 for row in range(30) if row in test_rows)  # the copies are of the first 30 labelled rows
    assert copied_test > 0
    unlabeled = report["learning_curve"]["unlabeled"]
    assert unlabeled["in_cache"] == 120 and unlabeled["left_out"] >= copied_test
    assert unlabeled["used"] == 120 - unlabeled["left_out"]
    heads = report["learning_curve"]["semi_heads"]
    assert len(heads) == 4 and all(len(seeds) == 3 for seeds in heads)
    for seeds in heads:
        for used in seeds:
            assert used["semi-agreement"] == "lr" and used["semi-self-training"] in ("lr", "knn")
            assert used["semi-label-spreading"] == used["semi-self-training"]
    full = report["learning_curve"]["full_labels"]
    assert full["not_run"] is None and full["unlabeled_rows"] == unlabeled["used"]
    assert {test["semi"] for test in full["tests"]} == {"semi-self-training", "semi-agreement", "semi-label-spreading"}
    for test in full["tests"]:
        assert test["n_test"] == report["split"]["n_test"] and 0 <= test["p_value"] <= 1
        assert test["helped"] == (test["significant"] and test["difference"] > 0)
        assert test["supervised"] in ("lr", "knn")


def test_curve_in_report_files(semi_run: tuple[Path, dict]) -> None:
    run = semi_run[0] / "run"
    assert (run / "plots" / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (run / "report.md").read_text()
    assert "## Learning curve" in markdown and "| model | kind | 2 / class | 4 / class | 25 / class |" in markdown
    assert "![learning_curve](plots/learning_curve.png)" in markdown and "At full labels" in markdown
    page = (run / "report.html").read_text()
    assert 'id="learning-curve"' in page and "semi-label-spreading" in page and "learning_curve.png" in page
    assert json.loads((run / "report.json").read_text())["learning_curve"]["per_class"] == [2, 4, 25, "all"]


def test_seeds_make_the_curve_reproducible(tmp_path: Path) -> None:
    data = load_labeled(strand_cache(tmp_path / "c.h5", per_class=40))
    split = load_or_make_split(tmp_path / "run", data)
    parts = sorted_test(split.indices(data.paths), data)
    plan = plan_curve("3,6", data, parts, semi_supervised=True)
    options = {"overrides": FAST, "seeds": 2, "folds": 3, "n_jobs": 1, "progress": False}
    first = run_curve(plan, data, parts, ["knn"], seed=0, **options)
    again = run_curve(plan, data, parts, ["knn"], seed=0, **options)
    assert first["accuracies"] == again["accuracies"]
    assert not np.array_equal(draw_subset(plan.pool, data.y, 3, 0), draw_subset(plan.pool, data.y, 3, 1))
    subset = draw_subset(plan.pool, data.y, 3, 0)
    assert np.bincount(data.y[subset]).tolist() == [3, 3, 3] and set(subset) <= set(plan.pool)
    assert first["full_labels"]["not_run"].startswith("the cache holds no unlabelled rows")


def test_capped_points_warn_naming_the_class(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = load_labeled(strand_cache(tmp_path / "c.h5", per_class=20))
    parts = load_or_make_split(tmp_path / "run", data).indices(data.paths)
    pool = np.concatenate([parts["train"], parts["val"]])
    counts = np.bincount(data.y[pool])
    with caplog.at_level(logging.WARNING):
        plan = plan_curve("5,40,60", data, parts)
    smallest = CLASSES[int(counts.argmin())]
    assert plan.per_class == [5, int(counts.min()), ALL]
    assert f"40 images per class capped to {counts.min()}, the training images of class '{smallest}'" in caplog.text
    assert plan.capped == [
        {"requested": 40, "used": int(counts.min()), "class": smallest},
        {"requested": 60, "used": int(counts.min()), "class": smallest},
    ]


@pytest.mark.parametrize(
    ("text", "points"),
    [("5,10,25,50", [5, 10, 25, 50, ALL]), ("10, 5,all,5", [5, 10, ALL]), ("all", [ALL]), ([25, "2"], [2, 25, ALL])],
)
def test_parse_points(text: str | list, points: list) -> None:
    assert parse_points(text) == points


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "at least 2"),
        ("-3", "at least 2"),
        ("1", "at least 2"),
        ("five", "whole numbers"),
        ("2.5", "whole numbers"),
    ],
)
def test_bad_points_are_rejected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_points(text)


def test_semi_supervised_without_anything_unlabelled_is_refused(tmp_path: Path) -> None:
    cache = strand_cache(tmp_path / "c.h5", per_class=20)
    with pytest.raises(DataError, match="holds no unlabelled rows .* holds no labels back"):
        sweep(
            cache,
            tmp_path / "run",
            models=["lr"],
            grids=FAST,
            cv=3,
            n_jobs=1,
            progress=False,
            embedding_cost=False,
            audit=False,
            semi_supervised=True,
        )
    assert not (tmp_path / "run" / "report.json").exists()  # refused before any model is fitted


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--learning-curve", "0"], "at least 2 images per class"),
        (["--learning-curve", "5,ten"], "Received: 'ten'"),
        (["--semi-supervised"], "nothing to learn from"),
        (["--learning-curve", "5", "--curve-seeds", "0"], "curve_seeds"),
    ],
)
def test_cli_bad_curve_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    cache = strand_cache(tmp_path / "c.h5", per_class=20)
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            str(cache),
            "--out",
            str(tmp_path / "run"),
            "--models",
            "lr",
            "--no-audit",
            "--no-embedding-cost",
            "--no-progress",
            *args,
        ],
    )
    assert result.exit_code == 2 and "error:" in result.output and message in result.output, result.output
    assert "Traceback" not in result.output


def test_dense_head_takes_part(tmp_path: Path) -> None:
    cache = strand_cache(tmp_path / "c.h5", per_class=30)
    report = sweep(
        cache,
        tmp_path / "run",
        models=["dense"],
        grids=FAST,
        cv=3,
        n_jobs=1,
        progress=False,
        embedding_cost=False,
        audit=False,
        learning_curve="5",
        curve_seeds=1,
    )
    curve = report["learning_curve"]
    assert curve["kinds"] == {"dense": "neural"} and all(0 <= value <= 1 for value in curve["models"]["dense"])
    assert curve["std"]["dense"] == [None, None]  # one seed: no spread


def test_agreement_self_training_adds_agreed_rows_and_keeps_the_labels_it_was_given() -> None:
    """Labels 1, 4 and 7 (not 0..k-1), 2 labelled rows per strand: the agreed rows carry the head along its strands."""
    X, y = strands(60, seed=3)
    y = np.array([1, 4, 7])[y]
    labelled = np.concatenate([np.flatnonzero(y == label)[:2] for label in (1, 4, 7)])
    partial = np.full(len(y), -1)
    partial[labelled] = y[labelled]
    from sklearn.linear_model import LogisticRegression

    head = LogisticRegression(C=1.0, max_iter=1000)
    alone = head.fit(X[labelled], y[labelled]).score(X, y)
    model = AgreementSelfTraining(head, label_spreading(len(X), X.shape[1])).fit(X, partial)
    assert set(model.classes_) == {1, 4, 7} and set(model.predict(X)) <= {1, 4, 7}
    assert 0 < model.pseudo_labeled_ <= len(X) - len(labelled)
    assert model.predict_proba(X).shape == (len(X), 3)
    assert model.score(X, y) > alone + 0.05, (model.score(X, y), alone)
