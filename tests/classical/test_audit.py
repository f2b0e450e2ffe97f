"""The audit on synthetic embeddings: blocked search = brute force, planted faults found, bad input, leaky splits."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_cache
from typer.testing import CliRunner

from classical import LabeledEmbeddings, Split, audit, make_split, sweep
from classical.audit.label_issues import skip_reason
from classical.audit.outliers import flag, scores
from classical.cli import app
from classical.data.near_duplicates import (
    DEFAULT_THRESHOLD,
    components,
    exact_pairs,
    normalise,
    search,
)
from classical.data.splits import load_or_make_split

runner = CliRunner()


def features(
    per_class: int = 30, classes: tuple[str, ...] = ("ant", "bee", "cat"), dim: int = 64, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Sparse non-negative stand-ins for pooled ReLU features: distinct rows stay below the threshold."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(2, 1, (len(classes), dim)) * (rng.uniform(size=(len(classes), dim)) < 0.4)
    X = np.concatenate([np.maximum(centres[c] + rng.normal(0, 1.2, (per_class, dim)), 0) for c in range(len(classes))])
    return X.astype(np.float32), [name for name in classes for _ in range(per_class)]


def planted(per_class: int = 30, seed: int = 0) -> tuple[np.ndarray, list[str], dict]:
    """Features with 3 near-duplicates (row + tiny noise), 2 mislabelled rows and 1 far outlier appended."""
    X, labels = features(per_class=per_class, seed=seed)
    rng = np.random.default_rng(seed + 1)
    classes = sorted(set(labels), key=labels.index)
    originals = [0, per_class + 1, 2 * per_class + 2]
    copies = X[originals] * (1 + rng.normal(0, 0.01, (3, X.shape[1])))
    far = np.abs(rng.normal(0, 1, (1, X.shape[1]))) * 12 * (rng.uniform(size=(1, X.shape[1])) > 0.8)
    X = np.concatenate([X, copies, far]).astype(np.float32)
    n = len(labels)
    labels = labels + [labels[o] for o in originals] + [classes[0]]
    labels[5] = labels[per_class + 5] = classes[2]  # a class-0 and a class-1 row labelled as class 2
    paths = [f"{label}/{i:04d}.jpg" for i, label in enumerate(labels)]
    truth = {
        "pairs": {(paths[o], paths[n + c]) for c, o in enumerate(originals)},
        "mislabelled": {paths[5], paths[per_class + 5]},
        "outlier": paths[n + 3],
    }
    return X, labels, {**truth, "paths": paths}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    folder = tmp_path_factory.mktemp("audit")
    X, labels, truth = planted()
    write_cache(folder / "c.h5", X, labels, paths=truth["paths"])
    result = audit(folder / "c.h5", folder / "run")
    return folder, result, truth


def test_blocked_search_equals_brute_force() -> None:
    rng = np.random.default_rng(3)
    X = np.abs(rng.normal(size=(53, 16))).astype(np.float32)
    X[10] = X[3] * 1.01
    X[40] = X[3]
    Z = normalise(X)
    S = Z @ Z.T
    np.fill_diagonal(S, -np.inf)
    threshold = float(np.sort(S[np.triu_indices(53, 1)])[-20])  # the 20 most similar pairs
    found = search(X, threshold=threshold, k=4, block_rows=7, block_cols=5)
    expected = {(a, b) for a, b in zip(*np.nonzero(np.triu(threshold <= S, 1)))}
    assert set(zip(found.i.tolist(), found.j.tolist())) == expected and len(found.i) == 20
    assert np.all(np.diff(found.cosine) <= 0)
    np.testing.assert_allclose(found.knn, -np.sort(-S, axis=1)[:, :4], atol=1e-6)
    alone = search(X, threshold=threshold, block_rows=8, block_cols=8)  # no kNN: upper triangle only
    assert set(zip(alone.i.tolist(), alone.j.tolist())) == expected


def test_normalise_is_signed_square_root_then_unit_norm() -> None:
    Z = normalise(np.array([[4.0, 0.0, 9.0], [-4.0, 1.0, 0.0]]))
    np.testing.assert_allclose(Z[0], np.array([2, 0, 3]) / np.sqrt(13), rtol=1e-6)
    np.testing.assert_allclose(Z[1], np.array([-2, 1, 0]) / np.sqrt(5), rtol=1e-6)
    assert Z.dtype == np.float32


def test_components_and_exact_pairs() -> None:
    root = components(6, np.array([0, 3, 4]), np.array([1, 4, 5]))
    assert root.tolist() == [0, 0, 2, 3, 3, 3]
    assert exact_pairs(np.array(["a", "b", "a", "a"])) == {(0, 2), (0, 3), (2, 3)}


def test_outlier_fence_flags_the_far_row_only() -> None:
    score = np.r_[np.random.default_rng(0).normal(0.2, 0.01, 200), 0.6]
    rows, cutoff = flag(score)
    assert rows.tolist() == [200] and 0.2 < cutoff < 0.6
    assert scores(np.array([[0.9, 0.7]])).tolist() == pytest.approx([0.2])


def test_audit_finds_the_planted_faults(audited) -> None:
    folder, result, truth = audited
    found = {(p["a"], p["b"]) for p in result["near_duplicates"]}
    assert truth["pairs"] <= found
    assert len(found) <= len(truth["pairs"]) + 1  # distinct blob members are not flagged en masse
    issues = [issue["path"] for issue in result["label_issues"]]
    assert truth["mislabelled"] <= set(issues[:5])
    assert {issue["suggested"] for issue in result["label_issues"] if issue["path"] in truth["mislabelled"]} == {
        "ant",
        "bee",
    }
    assert truth["outlier"] in {o["path"] for o in result["outliers"]}
    assert len(result["outliers"]) <= 3
    on_disk = json.loads((folder / "run" / "audit.json").read_text())
    assert on_disk["summary"] == result["summary"]
    assert on_disk["summary"]["near_duplicates"] == len(on_disk["near_duplicates"])
    assert on_disk["near_duplicates_method"]["threshold"] == DEFAULT_THRESHOLD
    pair = on_disk["near_duplicates"][0]
    assert set(pair) >= {"a", "b", "cosine", "same_label", "splits"} and pair["same_label"] is True
    assert pair["splits"] == [None, None] and on_disk["split"] is None  # no split in the run directory
    assert set(on_disk["label_issues"][0]) >= {"path", "given", "suggested", "score"}
    assert on_disk["label_issues_skipped"] is None
    assert (folder / "run" / "plots" / "embedding_map.png").stat().st_size > 10_000
    assert on_disk["seconds"] > 0 and "seconds" in on_disk["label_issues_method"]


@pytest.mark.parametrize("case", ["one class", "too few per class", "unlabelled only"])
def test_bad_input_still_reports_near_duplicates_and_outliers(tmp_path: Path, case: str) -> None:
    X, labels, _truth = planted(per_class=8)
    if case == "one class":
        labels = ["ant"] * len(labels)
        expected = "only one class"
    elif case == "too few per class":
        labels = [
            label if i % 4 == 0 or label == "ant" else "cat" if label == "bee" else "bee"
            for i, label in enumerate(labels)
        ]
        labels[1:3] = ["owl", "owl"]
        expected = "at least 5 images per class; too few in owl (2)"
    else:
        labels = [""] * len(labels)
        expected = "no labelled rows"
    write_cache(tmp_path / "c.h5", X, labels, paths=[f"img/{i:04d}.jpg" for i in range(len(labels))])
    result = audit(tmp_path / "c.h5", tmp_path / "run", plot=case != "one class")
    assert expected in result["label_issues_skipped"] and result["label_issues"] == []
    assert result["label_issues_method"]["skipped"] == result["label_issues_skipped"]
    assert len(result["near_duplicates"]) >= 3  # the planted copies, whatever the labels
    assert f"img/{len(labels) - 1:04d}.jpg" in {o["path"] for o in result["outliers"]}
    if case == "unlabelled only":
        assert result["unlabelled"] == len(labels) and result["near_duplicates"][0]["same_label"] is None


def test_skip_reason_counts_folds() -> None:
    assert skip_reason(np.array([0] * 5 + [1] * 5), ["a", "b"], 5) is None
    assert "b (4)" in skip_reason(np.array([0] * 5 + [1] * 4), ["a", "b"], 5)
    assert "no labelled rows" in skip_reason(np.array([-1, -1]), ["a"], 5)


def rows(X: np.ndarray, y: np.ndarray) -> LabeledEmbeddings:
    paths = np.array([f"c{label}/{i}.jpg" for i, label in enumerate(y)])
    return LabeledEmbeddings(
        X=X,
        y=y,
        class_names=["c0", "c1", "c2"],
        paths=paths,
        sha256=np.array([f"{i:064x}" for i in range(len(y))]),
        backbone_key="k",
        provenance={},
        cache="c.h5",
    )


def test_split_keeps_near_duplicate_clusters_in_one_part() -> None:
    X, _labels = features(per_class=40)
    y = np.repeat([0, 1, 2], 40)
    rng = np.random.default_rng(0)
    chain = [0, 1, 2, 3]  # a chain of near-duplicates: 0~1, 1~2, 2~3 (one cluster of four)
    for a, b in itertools.pairwise(chain):
        X[b] = X[a] * (1 + rng.normal(0, 0.01, X.shape[1]))
    X[50] = X[45] * 1.001
    data = rows(X.astype(np.float32), y)
    plain = make_split(data.paths, data.sha256, data.y, data.class_names, seed=0)
    assert not plain.near_duplicates_grouped and plain.near_duplicate_threshold is None
    for seed in range(6):
        split = make_split(data.paths, data.sha256, data.y, data.class_names, seed=seed, X=data.X)
        assert len({split.assignment[data.paths[i]] for i in chain}) == 1
        assert split.assignment[data.paths[45]] == split.assignment[data.paths[50]]
        assert split.near_duplicates_grouped and split.near_duplicate_clusters == 2
        assert split.near_duplicate_threshold == DEFAULT_THRESHOLD


def test_split_without_near_duplicates_is_unchanged_and_old_files_load(tmp_path: Path) -> None:
    X, _ = features(per_class=30)
    data = rows(X, np.repeat([0, 1, 2], 30))
    assert len(search(X).i) == 0
    plain = make_split(data.paths, data.sha256, data.y, data.class_names, seed=4)
    grouped = make_split(data.paths, data.sha256, data.y, data.class_names, seed=4, X=data.X)
    assert grouped.assignment == plain.assignment and grouped.id == plain.id
    assert grouped.near_duplicates_grouped and grouped.near_duplicate_clusters == 0
    record = json.loads(
        json.dumps(
            {
                "id": plain.id,
                "seed": 4,
                "fractions": [0.7, 0.15, 0.15],
                "backbone_key": "k",
                "assignment": plain.assignment,
            }
        )
    )
    (tmp_path / "split.json").write_text(json.dumps(record))  # written before near-duplicate grouping
    old = Split.load(tmp_path / "split.json")
    assert old.assignment == plain.assignment and not old.near_duplicates_grouped and old.near_duplicate_clusters == 0
    stored = load_or_make_split(tmp_path / "new", data, seed=4)
    assert Split.load(tmp_path / "new" / "split.json") == stored and stored.near_duplicates_grouped


def test_the_threshold_rises_where_every_photo_is_close_to_its_nearest_neighbour() -> None:
    from classical.data.near_duplicates import effective_threshold, find_near_duplicates

    assert effective_threshold(0.9, np.full(100, 0.80)) == 0.9  # a loose domain (the flowers: median 0.80)
    assert effective_threshold(0.9, np.full(100, 0.91)) == pytest.approx(1 - 0.6 * 0.09)  # blood cells: median 0.91
    rng = np.random.default_rng(0)
    tight = 1 + 0.05 * rng.normal(size=(200, 64))  # distinct rows that all look alike, and one copy among them
    tight = np.concatenate([tight, tight[:1] * 1.0001]).astype(np.float32)
    found, threshold = find_near_duplicates(tight, threshold=0.9)
    assert threshold > 0.99 and [(int(a), int(b)) for a, b in zip(found.i, found.j)] == [(0, 200)]


def test_sweep_on_an_older_split_reports_straddling_pairs(tmp_path: Path) -> None:
    X, labels = features(per_class=30)
    X = np.concatenate([X, X[:30] * 1.002]).astype(np.float32)  # each class-0 row gets a near-copy
    labels = labels + labels[:30]
    paths = [f"{label}/{i:04d}.jpg" for i, label in enumerate(labels)]
    write_cache(tmp_path / "c.h5", X, labels, paths=paths)
    from classical import load_labeled

    data = load_labeled(tmp_path / "c.h5")
    old = make_split(data.paths, data.sha256, data.y, data.class_names, backbone_key=data.backbone_key)
    (tmp_path / "old").mkdir()
    old.save(tmp_path / "old" / "split.json")
    record = json.loads((tmp_path / "old" / "split.json").read_text())
    for key in ("near_duplicates_grouped", "near_duplicate_clusters", "near_duplicate_threshold"):
        record.pop(key)
    (tmp_path / "old" / "split.json").write_text(json.dumps(record))
    report = sweep(
        tmp_path / "c.h5",
        tmp_path / "old",
        models=["lr"],
        grids={"lr": {"C": [0.1]}},
        cv=3,
        progress=False,
        embedding_cost=False,
    )
    result = json.loads((tmp_path / "old" / "audit.json").read_text())
    straddle = [p for p in result["near_duplicates"] if p["straddles"]]
    train_test = [p for p in straddle if sorted(p["splits"]) == ["test", "train"]]
    assert len(result["near_duplicates"]) == 30 and len(straddle) > 5
    assert result["straddling"]["count"] == len(straddle) == report["audit"]["straddling"]
    assert result["straddling"]["train_test"] == len(train_test) == result["summary"]["straddling_train_test"] > 0
    assert result["split"]["near_duplicates_grouped"] is False
    assert sorted(map(sorted, result["straddling"]["pairs"])) == sorted(sorted([p["a"], p["b"]]) for p in straddle)

    new = sweep(
        tmp_path / "c.h5",
        tmp_path / "new",
        models=["lr"],
        grids={"lr": {"C": [0.1]}},
        cv=3,
        progress=False,
        embedding_cost=False,
    )
    grouped = json.loads((tmp_path / "new" / "audit.json").read_text())
    assert grouped["straddling"]["count"] == 0 == new["audit"]["straddling"]
    threshold = grouped["near_duplicates_method"]["threshold"]  # raised: these rows are all close to each other
    assert grouped["near_duplicates_method"]["base_threshold"] == DEFAULT_THRESHOLD < threshold
    assert grouped["split"] == {
        "id": new["split"]["id"],
        "near_duplicates_grouped": True,
        "near_duplicate_clusters": 30,
        "near_duplicate_threshold": pytest.approx(threshold),
    }
    assert all(p["splits"][0] == p["splits"][1] is not None for p in grouped["near_duplicates"])


def test_cli_audit_and_sweep_without_audit(tmp_path: Path) -> None:
    X, labels, truth = planted()
    write_cache(tmp_path / "c.h5", X, labels, paths=truth["paths"])
    result = runner.invoke(
        app, ["audit", str(tmp_path / "c.h5"), "--out", str(tmp_path / "run"), "--no-plot", "--threshold", "0.95"]
    )
    assert result.exit_code == 0, result.output
    assert "near-duplicate pairs" in result.output and "label-issue candidates" in result.output
    written = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert written["near_duplicates_method"]["threshold"] == 0.95 and written["map"] is None
    swept = runner.invoke(
        app,
        [
            "sweep",
            str(tmp_path / "c.h5"),
            "--out",
            str(tmp_path / "run2"),
            "--models",
            "knn",
            "--no-audit",
            "--no-embedding-cost",
            "--cv",
            "3",
            "--no-progress",
        ],
    )
    assert swept.exit_code == 0, swept.output
    assert not (tmp_path / "run2" / "audit.json").exists()
    assert "audit" not in json.loads((tmp_path / "run2" / "report.json").read_text())
