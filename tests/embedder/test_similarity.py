"""The similarity index: exact answers, freshness as the cache changes, the approximate path, search by file/path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedder import CacheError, normalise, open_cache
from embedder.cache import Batch, CacheWriter, Failure, Row
from embedder.cache.similarity import Plan, VectorIndex, index_dir, key_dir, neighbours, outgrown, plan_for
from embedder.cache.verify import verify
from tests.conftest import blobs, make_dataset, write_cache


def brute(X: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    """The k most similar rows by a plain numpy product."""
    return np.argsort(-(normalise(X) @ normalise(q[None])[0]), kind="stable")[:k].tolist()


def add_rows(cache: Path, key: str, X: np.ndarray, paths: list[str], *, seed: int = 1) -> None:
    """Append (or, for cached paths, replace) rows through the cache's writer."""
    rng = np.random.default_rng(seed)
    with CacheWriter(cache) as writer:
        writer.begin(key, open_cache_provenance(cache, key))
        rows = [Row(p, rng.bytes(32).hex(), p.split("/")[0], 1, 1) for p in paths]
        writer.write_batch(key, Batch(embeddings=np.asarray(X, np.float32), rows=rows))


def open_cache_provenance(cache: Path, key: str) -> dict:
    with open_cache(cache) as opened:
        return opened[key].provenance


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, str, np.ndarray]:
    X, labels = blobs(per_class=20)
    path = tmp_path / "c.h5"
    return path, write_cache(path, X, labels), X


def test_search_is_exact_and_leaves_the_query_out(cache: tuple) -> None:
    path, key, X = cache
    with open_cache(path) as opened:
        rows = opened[key]
        paths = rows.paths.tolist()
        found = rows.similar([paths[5]], k=4)[0]
        assert [m.row for m in found] == [r for r in brute(X, X[5], 5) if r != 5][:4]
        assert found[0].path == paths[found[0].row] and found[0].label == paths[found[0].row].split("/")[0]
        by_vector = rows.search(X[5], k=1)[0]
        assert by_vector[0].row == 5 and by_vector[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert rows.index().describe()["plan"]["kind"] == "exact"
    assert (key_dir(path, key) / "meta.json").is_file() and key_dir(path, key).parent == index_dir(path)


def test_append_adds_only_the_new_rows(cache: tuple) -> None:
    path, key, X = cache
    with open_cache(path) as opened:
        opened[key].index()
    new = np.abs(np.random.default_rng(7).normal(3, 1, (3, X.shape[1]))).astype(np.float32)
    add_rows(path, key, new, ["ant/new-0.jpg", "ant/new-1.jpg", "ant/new-2.jpg"])
    with open_cache(path) as opened:
        rows = opened[key]
        index = rows.index()
        assert index.history[-1] | {"at": None} == {
            "at": None,
            "event": "refreshed",
            "rows": len(X) + 3,
            "added": 3,
            "removed": 0,
        }
        assert index.vectors.ntotal == len(X) + 3
        assert rows.search(new[1], k=1)[0][0].path == "ant/new-1.jpg"
    add_rows(path, key, new[:1], ["ant/new-3.jpg"], seed=2)
    with open_cache(path) as opened, pytest.raises(CacheError, match="stale similarity index"):
        opened[key].index(refresh=False)


def test_a_changed_or_removed_photo_is_never_returned(cache: tuple) -> None:
    path, key, X = cache
    with open_cache(path) as opened:
        paths = opened[key].paths.tolist()
        opened[key].index()
    changed = np.abs(np.random.default_rng(3).normal(9, 1, (1, X.shape[1]))).astype(np.float32)
    add_rows(path, key, changed, [paths[4]], seed=5)  # same path, new bytes: the row keeps its place
    with CacheWriter(path) as writer:  # rows 0 and 1 become failures: removed, the rows after move up
        writer.begin(key, open_cache_provenance(path, key))
        failures = [Failure(p, "f" * 64, "now unreadable", 1, 2) for p in paths[:2]]
        writer.write_batch(key, Batch(embeddings=np.zeros((0, X.shape[1]), np.float32), failures=failures))
    with open_cache(path) as opened:
        rows = opened[key]
        now = rows.load()
        assert len(now) == len(X) - 2
        for q in (X[0], X[4], X[10], changed[0]):
            found = [m.row for m in rows.search(q, k=5)[0]]
            assert found == brute(now, q, 5)
            assert not {paths[0], paths[1]} & {m.path for m in rows.search(q, k=len(now))[0]}
        assert rows.search(X[4], k=1)[0][0].similarity < 0.99  # the old embedding of the changed photo is gone
        assert rows.search(changed[0], k=1)[0][0].path == paths[4]
        assert rows.index().vectors.ntotal == len(now)
    assert verify(path) == []


def test_an_index_of_another_backbone_is_refused_naming_both(cache: tuple) -> None:
    path, key, _ = cache
    with open_cache(path) as opened:
        opened[key].index()
    other = key.replace("synthetic", "other")
    meta = json.loads((key_dir(path, key) / "meta.json").read_text())
    meta["key"] = other
    (key_dir(path, key) / "meta.json").write_text(json.dumps(meta))
    with open_cache(path) as opened, pytest.raises(CacheError, match=f"{other}.*{key}"):
        opened[key].index()
    assert any(other in problem for problem in verify(path))


def test_verify_finds_an_index_of_other_vectors(cache: tuple, tmp_path: Path) -> None:
    path, key, X = cache
    other = tmp_path / "other.h5"
    write_cache(other, X[::-1].copy(), ["ant"] * len(X))
    for cache_path in (path, other):
        with open_cache(cache_path) as opened:
            opened[key].index()
    meta = json.loads((key_dir(path, key) / "meta.json").read_text())
    other_meta = json.loads((key_dir(other, key) / "meta.json").read_text())
    shutil.copy(key_dir(other, key) / other_meta["faiss_file"], key_dir(path, key) / meta["faiss_file"])
    problems = verify(path)
    assert len(problems) == 1 and "sampled rows" in problems[0]


def test_the_plan_follows_the_row_count() -> None:
    assert plan_for(1_000).kind == "exact"
    big = plan_for(100_000)
    assert (big.kind, big.nlist, big.nprobe, big.trained_on) == ("ivf-sq8", 1024, 8, 40 * 1024)
    assert plan_for(1_000_000).nlist == 4096
    assert outgrown(big, 200_000) is None
    assert "10x" in outgrown(big, 10 * big.trained_on + 1)
    assert "exact" in outgrown(big, 1_000)


def test_the_approximate_graph_finds_the_near_pairs() -> None:
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 4, (30, 64))
    base = np.abs(centres[rng.integers(0, 30, 3000)] + rng.normal(0, 0.7, (3000, 64))).astype(np.float32)
    copies = base[:50] * np.exp(rng.normal(0, 0.02, (50, 64))).astype(np.float32)
    Z = normalise(np.concatenate([base, copies]))
    exact = neighbours(Z, k=10, threshold=0.98)
    approx = neighbours(Z, k=10, threshold=0.98, exact_rows=0)
    assert exact.exact and not approx.exact and approx.graph_k == 20
    pairs = set(zip(exact.i.tolist(), exact.j.tolist()))
    assert {(r, 3000 + r) for r in range(50)} <= pairs
    found = set(zip(approx.i.tolist(), approx.j.tolist()))
    assert {(r, 3000 + r) for r in range(50)} <= found and len(found & pairs) >= 0.95 * len(pairs)
    dots = np.einsum("ij,ij->i", Z[approx.i], Z[approx.j])  # the similarities reported are the exact ones
    np.testing.assert_allclose(approx.similarity, dots, atol=1e-5)
    assert (approx.similarity >= 0.98).all()
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.neighbours, exact.neighbours)])
    assert recall >= 0.9


def test_vector_index_adds_and_removes_by_id() -> None:
    rng = np.random.default_rng(1)
    Z = normalise(np.abs(rng.normal(0, 1, (500, 16))))
    index = VectorIndex.create(Plan("ivf-sq8", nlist=8, nprobe=8), 16, Z)
    index.add(Z, np.arange(1000, 1500))
    assert index.remove(np.array([1000, 1001])) == 2
    _, ids = index.search(Z[:3], 1)
    assert ids[2, 0] == 1002 and 1000 not in ids and 1001 not in ids


def test_cli_similar_by_file_and_by_cached_path(tmp_path: Path) -> None:
    from embedder.cli import app

    photos = tmp_path / "photos"
    make_dataset(photos, per_class=3)
    cache = tmp_path / "c.h5"
    runner = CliRunner()
    tiny = ["--size", "96", "--alpha", "0.35", "--weights", "none", "--runtime", "keras", "--no-progress"]
    assert runner.invoke(app, ["extract", str(photos), "--out", str(cache), *tiny]).exit_code == 0
    query = photos / "red" / "red_001.jpg"
    out = runner.invoke(app, ["similar", str(cache), str(query), "red/red_000.jpg", "--k", "2", "--format", "json"])
    assert out.exit_code == 0, out.output
    by_file, by_path = (json.loads(line) for line in out.stdout.splitlines())
    assert by_file["kind"] == "image" and by_file["matches"][0]["path"] == "red/red_001.jpg"
    assert by_file["matches"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert by_path["kind"] == "cached" and "red/red_000.jpg" not in [m["path"] for m in by_path["matches"]]
    assert len(by_path["matches"]) == 2 and by_path["matches"][0]["label"] in ("red", "green", "blue")
    text = runner.invoke(app, ["similar", str(cache), "red/red_000.jpg", "--k", "1"])
    assert text.exit_code == 0 and text.stdout.splitlines()[0] == "red/red_000.jpg (cached photo):"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    bad = runner.invoke(app, ["similar", str(cache), str(broken)])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert str(broken) in bad.stderr and "cannot be decoded" in bad.stderr
    nowhere = runner.invoke(app, ["similar", str(cache), "no/such.jpg"])
    assert nowhere.exit_code == 2 and "neither an image file nor a path" in nowhere.stderr
    assert runner.invoke(app, ["verify", str(cache)]).exit_code == 0
