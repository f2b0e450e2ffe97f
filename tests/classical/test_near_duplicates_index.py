"""Near-duplicates from the similarity index's k-NN graph: the exact all-pairs answer below EXACT_ROWS, the projected
HNSW graph with exact similarities and saturated rows above; the audit at scale (rows read once, label issues on
principal components with sampled folds)."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import write_cache
from PIL import Image

from classical import audit
from classical.audit import summary_line
from classical.audit.label_issues import find, folds
from classical.data.near_duplicates import (
    DEFAULT_THRESHOLD,
    components,
    effective_threshold,
    find_near_duplicates,
    normalise,
    search,
)
from classical.data.splits import make_split
from embedder import EXACT_ROWS, GRAPH_K, neighbours, open_cache


def exact_reference(Z: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """What the audit computed before the index: the exact blocked product, then the raised threshold."""
    found = search(Z, threshold=DEFAULT_THRESHOLD, k=max(k, 1), normalised=True)
    threshold = effective_threshold(DEFAULT_THRESHOLD, found.knn[:, 0])
    keep = found.cosine >= threshold
    return found.i[keep], found.j[keep], found.cosine[keep], found.knn[:, :k], threshold


def planted_rows(n: int, dim: int, copies: int, seed: int = 0) -> np.ndarray:
    """n non-negative rows, the last `copies` near-copies of row 0 (more than the graph's neighbours per row)."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(0.5, 1.0, (n, dim)).astype(np.float32)
    X[n - copies :] = X[0] * np.exp(rng.normal(0, 0.03, (copies, dim))).astype(np.float32)
    X[1:40:2] = X[2:41:2] * np.exp(rng.normal(0, 0.03, (20, dim))).astype(np.float32)  # 20 plain pairs
    return X


@pytest.fixture(scope="module")
def real_caches(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small caches of the shared flowers and blood cells (real weights), each with a few edited copies planted."""
    from embedder import Backbone, extract

    root = tmp_path_factory.mktemp("index-real")
    backbone = Backbone(weights=str(shared / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"))
    caches = {}
    for name, per_class in (("flowers", 12), ("blood_cells", 10)):
        photos = root / name
        for folder in sorted(p for p in (shared / "data" / name).iterdir() if p.is_dir()):
            (photos / folder.name).mkdir(parents=True)
            files = sorted(folder.glob("*.jpg")) or sorted(folder.glob("*.*"))
            for path in files[:per_class]:
                shutil.copy(path, photos / folder.name / path.name)
            with Image.open(files[0]) as image:  # a re-encoded and a rescaled copy of the class's first photo
                image = image.convert("RGB")
                image.save(photos / folder.name / "copy-jpeg.jpg", quality=60)
                image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(
                    photos / folder.name / "copy-small.jpg"
                )
        caches[name] = root / f"{name}.h5"
        extract(photos, caches[name], backbone, progress=False)
    return caches


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["flowers", "blood_cells"])
def test_graph_gives_the_exact_pairs_and_components_on_real_caches(real_caches: dict[str, Path], name: str) -> None:
    with open_cache(real_caches[name]) as cache:
        rows = cache.backbone()
        X, paths = rows.load(), list(rows.paths)
    Z = normalise(X)
    assert len(Z) < EXACT_ROWS
    i, j, cosine, knn, threshold = exact_reference(Z)
    found, effective = find_near_duplicates(Z, threshold=DEFAULT_THRESHOLD, k=10, normalised=True)
    assert len(i) >= 3  # the planted copies at least
    assert np.array_equal(found.i, i) and np.array_equal(found.j, j)
    assert np.allclose(found.cosine, cosine, atol=1e-6) and np.allclose(found.knn, knn, atol=1e-6)
    assert round(effective, 6) == round(threshold, 6)
    assert np.array_equal(components(len(Z), found.i, found.j), components(len(Z), i, j))
    assert found.saturated == 0 and found.graph_k == 0 and found.search.startswith("exact")
    copies = {paths[b] for b in j.tolist()} | {paths[a] for a in i.tolist()}
    assert any("copy-" in p for p in copies)


@pytest.mark.real_data
def test_audit_on_the_index_matches_the_exact_pairs(real_caches: dict[str, Path], tmp_path: Path) -> None:
    result = audit(real_caches["flowers"], tmp_path / "run", plot=False, cv=2)
    with open_cache(real_caches["flowers"]) as cache:
        rows = cache.backbone()
        Z, paths = normalise(rows.load()), [str(p) for p in rows.paths]
    i, j, _, _, _ = exact_reference(Z)
    assert {(p["a"], p["b"]) for p in result["near_duplicates"]} >= {(paths[a], paths[b]) for a, b in zip(i, j)}
    assert result["summary"]["near_duplicate_saturated_rows"] == 0
    assert result["near_duplicates_method"]["search"].startswith("k-NN graph of the similarity index: exact")


def test_split_grouping_uses_the_graph_components() -> None:
    X = planted_rows(300, 32, 5)
    paths = [f"{'abc'[i % 3]}/{i:04d}.jpg" for i in range(300)]
    sha = [f"{i:064x}" for i in range(300)]
    split = make_split(paths, sha, np.arange(300) % 3, ["a", "b", "c"], X=X)
    assert split.near_duplicates_grouped
    i, j, *_ = exact_reference(normalise(X))
    roots = components(300, i, j)
    assert split.near_duplicate_clusters == sum(np.bincount(roots)[np.unique(roots)] > 1)


def test_above_the_exact_threshold_pairs_come_from_the_graph_and_saturated_rows_are_counted() -> None:
    n, copies = EXACT_ROWS + 500, GRAPH_K + 5  # a photo with more near-duplicates than the graph keeps per row
    Z = normalise(planted_rows(n, 48, copies))
    found, threshold = find_near_duplicates(Z, threshold=DEFAULT_THRESHOLD, k=10, normalised=True)
    exact = search(Z, threshold=threshold, normalised=True)
    assert found.search.startswith("approximate") and found.graph_k == GRAPH_K
    assert found.saturated == copies + 1  # the original and each of its copies
    truth = set(zip(exact.i.tolist(), exact.j.tolist()))
    got = set(zip(found.i.tolist(), found.j.tolist()))
    assert len(truth) >= (copies + 1) * copies // 2 + 20
    assert len(truth & got) / len(truth) >= 0.98 and (found.cosine >= threshold).all()
    assert found.knn.shape == (n, 10) and (np.diff(found.knn, axis=1) <= 0).all()


def test_audit_json_and_summary_report_saturated_rows(tmp_path: Path) -> None:
    n, copies = EXACT_ROWS + 200, GRAPH_K + 3
    X = planted_rows(n, 24, copies)
    labels = ["ant", "bee"] * (n // 2)
    write_cache(tmp_path / "cache.h5", X, labels)
    result = audit(tmp_path / "cache.h5", tmp_path / "run", plot=False, cv=2)
    method = result["near_duplicates_method"]
    assert result["summary"]["near_duplicate_saturated_rows"] == method["saturated_rows"] == copies + 1
    assert method["graph_k"] == GRAPH_K and str(copies + 1) in method["saturated_note"]
    assert f"{copies + 1} rows with more than {GRAPH_K} near-duplicates" in summary_line(result)
    written = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert written["summary"]["near_duplicate_saturated_rows"] == copies + 1
    old = {**written, "summary": {k: v for k, v in written["summary"].items() if k != "near_duplicate_saturated_rows"}}
    assert "rows with more than" not in summary_line(old)  # an audit.json from before the index still reads


def test_the_projection_is_searched_and_every_similarity_reported_is_exact() -> None:
    n, dim, copies = 3000, 160, GRAPH_K + 4
    Z = normalise(planted_rows(n, dim, copies))
    exact = search(Z, threshold=0.95, k=10, normalised=True)
    graph = neighbours(Z, k=10, threshold=0.95, exact_rows=1000)
    assert graph.method.kind == "hnsw" and graph.method.factory == "PCA128,HNSW32"
    assert (graph.method.components, graph.method.trained_on, graph.method.candidates) == (128, n, 40)
    assert graph.graph_k == GRAPH_K and "128 principal components" in graph.method.describe()
    np.testing.assert_allclose(graph.similarity, np.einsum("ij,ij->i", Z[graph.i], Z[graph.j]), atol=1e-5)
    rows = np.arange(n)[:, None]
    np.testing.assert_allclose(graph.knn, np.einsum("ij,ikj->ik", Z, Z[graph.neighbours]), atol=1e-5)
    assert (graph.neighbours != rows).all() and (np.diff(graph.knn, axis=1) <= 0).all()
    assert (graph.similarity >= 0.95).all()
    truth = set(zip(exact.i.tolist(), exact.j.tolist()))
    assert set(zip(graph.i.tolist(), graph.j.tolist())) == truth  # the 20 plain pairs and the whole group
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(graph.neighbours.tolist(), exact_knn(Z, 10))])
    assert recall >= 0.9  # the candidates come from the projection; the kept neighbours are nearly the exact ones


def exact_knn(Z: np.ndarray, k: int) -> list[list[int]]:
    sims = Z @ Z.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :k].tolist()


def test_saturated_groups_get_every_pair_from_the_exact_product() -> None:
    n, dim, copies = 2000, 48, 2 * GRAPH_K  # a group of 41 near-copies: each has 40 near-duplicates
    Z = normalise(planted_rows(n, dim, copies))
    graph = neighbours(Z, k=10, threshold=0.95, exact_rows=0)
    assert graph.method.kind == "hnsw" and graph.saturated == copies + 1
    group = [0, *range(n - copies, n)]
    expected = {(a, b) for x, a in enumerate(group) for b in group[x + 1 :]}
    got = set(zip(graph.i.tolist(), graph.j.tolist()))
    assert expected <= got  # 820 pairs, 20 edges per row could hold at most 820 only by luck of ordering
    exact = search(Z, threshold=0.95, normalised=True)
    assert got == set(zip(exact.i.tolist(), exact.j.tolist()))
    np.testing.assert_allclose(graph.similarity, np.einsum("ij,ij->i", Z[graph.i], Z[graph.j]), atol=1e-5)


def test_load_normalised_reads_in_blocks_holds_the_rows_once_and_drops_non_finite_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.gamma(0.5, 1.0, (3000, 256)).astype(np.float32)
    X[7, 3], X[2500, 0] = np.inf, np.nan  # one infinite component, one NaN component
    write_cache(tmp_path / "c.h5", X, ["ant", "bee"] * 1500)
    with open_cache(tmp_path / "c.h5") as cache:
        rows = cache.backbone()
        X = rows.load()  # the cache's row order
        finite = np.flatnonzero(np.isfinite(X).all(axis=1))
        assert len(finite) == 2998
        tracemalloc.start()
        Z, kept = rows.load_normalised(block_rows=100)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        whole = rows.load_normalised(block_rows=10_000)
    assert np.array_equal(kept, finite) and np.array_equal(whole.rows, finite)
    np.testing.assert_array_equal(Z, normalise(X[finite]))
    np.testing.assert_array_equal(whole.Z, Z)
    assert peak < 1.2 * X.nbytes  # the rows once plus a block; normalise(load()) holds them twice


def test_folds_are_sampled_past_the_fit_limit_and_never_score_a_row_they_fitted() -> None:
    labels = np.arange(1000) % 3
    parts = folds(labels, cv=5, seed=0, fit_rows=300)
    scored = np.concatenate([f.score for f in parts])
    assert np.array_equal(np.sort(scored), np.arange(1000))  # each row scored once
    for fold in parts:
        assert len(fold.fit) == 300 and not set(fold.fit.tolist()) & set(fold.score.tolist())
    assert [len(f.fit) for f in folds(labels, cv=5, seed=0)] == [800] * 5  # no limit: all the other folds


def test_label_issues_past_the_exact_size_use_principal_components_and_sampled_folds() -> None:
    rng = np.random.default_rng(0)
    centres = rng.gamma(2, 1, (3, 64)) * (rng.uniform(size=(3, 64)) < 0.4)
    y = np.arange(1500) % 3
    X = np.maximum(centres[y] + rng.normal(0, 0.8, (1500, 64)), 0).astype(np.float32)
    given = y.copy()
    given[[4, 10, 20]] = (y[[4, 10, 20]] + 1) % 3  # three flipped labels
    names = ["ant", "bee", "cat"]
    small = find(X, given, names, cv=5)
    large = find(X, given, names, cv=5, max_exact_bytes=X.nbytes - 1, components=16, fit_rows=400)
    assert (small["features"], small["fit_rows"]) == ("embeddings", None)
    assert (large["features"], large["fit_rows"]) == ("16 principal components of the normalised embeddings", 400)
    assert "at most 400 rows" in large["method"] and large["n_scored"] == 1500
    assert {4, 10, 20} <= {i["row"] for i in large["issues"]} and {4, 10, 20} <= {i["row"] for i in small["issues"]}
    normalised = find(normalise(X), given, names, cv=5, normalised=True, components=16, fit_rows=400)
    assert normalised["issues"] == large["issues"]  # normalised rows in: the same components, the same findings


def test_a_large_audit_reads_normalised_rows_and_finds_the_same_pairs_and_outliers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = planted_rows(2000, 64, 5)
    X[100] = rng.gamma(0.5, 1.0, 64).astype(np.float32) * 40 * (rng.uniform(size=64) > 0.9)  # a far row
    X[1500, 2] = np.inf
    write_cache(tmp_path / "c.h5", X, ["ant", "bee"] * 1000)
    small = audit(tmp_path / "c.h5", tmp_path / "small", plot=False, cv=3)
    large = audit(tmp_path / "c.h5", tmp_path / "large", plot=False, cv=3, large_bytes=X.nbytes // 2)
    assert small["label_issues_method"]["features"] == "embeddings"
    method = large["label_issues_method"]
    assert method["features"] == "64 principal components of the normalised embeddings" and method["fit_rows"] == 50_000
    assert large["left_out"] == small["left_out"] == ["ant/1500.jpg"]
    assert large["near_duplicates"] == small["near_duplicates"] and len(large["near_duplicates"]) >= 20
    assert large["outliers"] == small["outliers"] and large["outliers"][0]["path"] == "ant/0100.jpg"
    written = json.loads((tmp_path / "large" / "audit.json").read_text())
    assert written["label_issues_method"]["features"] == method["features"]
    assert written["near_duplicates_method"]["graph"]["kind"] == "exact"
