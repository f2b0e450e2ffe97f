"""Near-duplicates from the similarity index's k-NN graph: the exact all-pairs answer below EXACT_ROWS, saturated rows above."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_cache
from PIL import Image

from classical import audit
from classical.audit import summary_line
from classical.data.near_duplicates import (
    DEFAULT_THRESHOLD,
    components,
    effective_threshold,
    find_near_duplicates,
    normalise,
    search,
)
from classical.data.splits import make_split
from embedder import EXACT_ROWS, GRAPH_K, open_cache


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
