"""Which photos to label next (`classical suggest`) and their labels back in (`classical label`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, make_dataset, write_cache
from typer.testing import CliRunner

from classical import DataError
from classical.cli import app
from classical.labelling import import_labels, label_studio_tasks, rank, read_labels, suggest, write_suggestions
from classical.labelling.ranking import margin_uncertainty
from embedder import CacheError, open_cache

runner = CliRunner()


def run_cli(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    """Distinct photos as the similarity sees them: unit rows far apart (|cosine| well below 0.9)."""
    X = rng.normal(size=(n, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("strategy", ["uncertainty", "hybrid"])
def test_a_point_near_the_decision_boundary_outranks_a_confident_one(strategy: str) -> None:
    rng = np.random.default_rng(0)
    Z = unit(rng, 3)
    probs = np.array([[0.97, 0.03], [0.52, 0.48], [0.9, 0.1]])
    ranked = rank(strategy, probs, Z, unit(rng, 2), budget=3, threshold=0.99)
    assert ranked.index[0] == 1
    if strategy == "uncertainty":
        assert list(ranked.index) == [1, 2, 0]
    assert margin_uncertainty(probs)[1] > margin_uncertainty(probs)[0]
    assert np.all(np.diff(rank("uncertainty", probs, Z, Z[:0], 3, 0.9).score) <= 0)


def test_two_copies_of_a_photo_are_not_both_suggested_nor_a_copy_of_a_labelled_one() -> None:
    rng = np.random.default_rng(1)
    base = unit(rng, 6)
    labelled = base[:1]
    # candidates: a copy of the labelled photo, two copies of one photo, and four distinct photos
    Z = np.concatenate([base[:1], base[1:2], base[1:2], base[2:6]])
    probs = np.tile([0.5, 0.5], (len(Z), 1))  # equally uncertain: only the similarity decides
    probs[1:3] = [0.51, 0.49]
    ranked = rank("hybrid", probs, Z, labelled, budget=7, threshold=0.9)
    picked = set(ranked.index.tolist())
    assert 0 not in picked  # a near-duplicate of a labelled photo
    assert len(picked & {1, 2}) == 1  # one of the two copies
    assert len(ranked.index) == 5 and ranked.skipped_near_duplicates == 2
    # diversity alone does not pick a copy while anything farther is left either
    spread = set(rank("diversity", probs, Z, labelled, 5, 0.9).index.tolist())
    assert 0 not in spread and len(spread & {1, 2}) == 1


def group(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float = 0.08) -> np.ndarray:
    """`n` distinct photos around `centre`: cosine to it about 0.99, to each other about 0.99 (under 0.999)."""
    X = centre + spread * rng.normal(size=(n, len(centre))) / np.sqrt(len(centre))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_hybrid_picks_a_boundary_photo_before_a_confident_one() -> None:
    rng = np.random.default_rng(2)
    a, b = unit(rng, 2, dim=32)
    Z = np.concatenate([group(rng, a, 6), group(rng, b, 6)])
    probs = np.tile([0.95, 0.05], (12, 1))
    probs[:6] = [0.52, 0.48]  # the first group sits on the decision boundary
    ranked = rank("hybrid", probs, Z, Z[:0], budget=2, threshold=0.999)
    assert ranked.index[0] < 6 and ranked.index[1] >= 6  # one pick per cluster, the uncertain cluster first
    # the pool is the 5 x budget = 10 most uncertain: the boundary group and 4 of the confident one
    assert ranked.mass[0] > ranked.mass[1] and list(ranked.members) == [6, 4]
    assert ranked.score[0] == ranked.mass[0] and ranked.uncertainty[0] == pytest.approx(0.96)
    (only,) = rank("hybrid", probs, Z, Z[:0], budget=1, threshold=0.999).index
    assert only < 6


def test_two_uncertain_groups_give_one_pick_each() -> None:
    rng = np.random.default_rng(3)
    a, b = unit(rng, 2, dim=32)
    Z = np.concatenate([group(rng, a, 8), group(rng, b, 8)])
    probs = np.tile([0.6, 0.4], (16, 1))
    probs[:8] = [0.5, 0.5]  # the first group is a little more uncertain: all of uncertainty's picks
    assert set(rank("uncertainty", probs, Z, Z[:0], 2, 0.999).index.tolist()) <= set(range(8))
    picks = rank("hybrid", probs, Z, Z[:0], budget=2, threshold=0.999).index
    assert sorted(p // 8 for p in picks) == [0, 1]
    # the pick is the photo nearest its group's centre (the photos are equally uncertain within a group)
    centre = Z[:8].mean(axis=0)
    assert picks[0] == int(np.argmax(Z[:8] @ centre / np.linalg.norm(centre)))


def test_copies_in_clusters_of_their_own_are_not_both_suggested() -> None:
    rng = np.random.default_rng(4)
    base = unit(rng, 4)
    edited = base[0] + 0.2 * unit(rng, 1)[0]  # an edited copy of photo 0: similarity about 0.98
    Z = np.concatenate([base, (edited / np.linalg.norm(edited))[None]]).astype(np.float32)
    assert Z[0] @ Z[4] > 0.95
    probs = np.tile([0.7, 0.3], (5, 1))
    probs[[0, 4]] = [0.5, 0.5]  # the copies are the most uncertain
    ranked = rank("hybrid", probs, Z, Z[:0], budget=5, threshold=0.95)  # 5 clusters: every photo its own
    assert len(set(ranked.index.tolist()) & {0, 4}) == 1 and sorted(ranked.index) in ([0, 1, 2, 3], [1, 2, 3, 4])
    assert ranked.skipped_near_duplicates == 1


@pytest.fixture
def swept(tmp_path: Path) -> tuple[Path, Path]:
    """A synthetic cache (every third row unlabelled) and a run with an lr model swept on it."""
    X, labels = blobs(per_class=24, classes=("ant", "bee"), dim=16, spread=2.5)
    labels = [label if i % 3 else "" for i, label in enumerate(labels)]
    cache = tmp_path / "c.h5"
    write_cache(cache, X, labels, paths=[f"/photos/{i:03d}.jpg" for i in range(len(labels))])
    code, output = run_cli(
        "sweep", cache, "--out", tmp_path / "run", "--models", "lr", "--cv", "2", "--no-progress", "--no-audit",
        "--no-embedding-cost",
    )  # fmt: skip
    assert code == 0, output
    return cache, tmp_path / "run"


def test_label_studio_file_has_the_documented_task_shape(swept: tuple[Path, Path]) -> None:
    cache, run = swept
    result = suggest(cache, run, budget=5)
    assert len(result.rows) == 5 and result.unlabelled == 16
    # hybrid: 5 clusters of the 16 candidates, each pick ranked by its cluster's uncertainty mass
    assert all(
        row["reason"].startswith("representative of uncertain photos: nearest the centre") for row in result.rows
    )
    assert [row["score"] for row in result.rows] == sorted((row["score"] for row in result.rows), reverse=True)
    tasks = json.loads(write_suggestions(result, run, "label-studio").read_text())
    assert len(tasks) == 5
    for task, row in zip(tasks, result.rows):
        assert set(task) == {"data", "predictions"} and task["data"] == {"image": row["path"]}
        (prediction,) = task["predictions"]
        assert set(prediction) == {"model_version", "score", "result"} and 0 <= prediction["score"] <= 1
        (item,) = prediction["result"]
        assert item == {
            "from_name": "choice",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [row["label"]]},
        }
        assert row["label"] in ("ant", "bee")
    assert tasks == label_studio_tasks(result)


def snapshot(cache: Path) -> tuple[list[int], bytes, list[str]]:
    with open_cache(cache) as opened:
        rows = opened.backbone()
        return rows.labels.tolist(), rows.load().tobytes(), list(rows.paths)


def test_label_import_is_atomic_and_leaves_embeddings_bit_identical(swept: tuple[Path, Path], tmp_path: Path) -> None:
    cache, _ = swept
    labels, embeddings, paths = snapshot(cache)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,label\n{paths[0]},bee\n/nowhere/x.jpg,ant\n{paths[3]},wasp\n")
    with pytest.raises(CacheError) as raised:
        import_labels(cache, bad)
    assert "/nowhere/x.jpg" in str(raised.value) and "wasp" in str(raised.value)
    assert snapshot(cache) == (labels, embeddings, paths)  # nothing half-applied
    good = tmp_path / "good.csv"
    good.write_text(f"path,label\n{paths[0]},bee\n{paths[3]},ant\n")
    update = import_labels(cache, good)
    assert sorted(update.changed) == sorted([paths[0], paths[3]])
    after, after_embeddings, after_paths = snapshot(cache)
    assert after_embeddings == embeddings and after_paths == paths
    assert (
        after[0] == 1
        and after[3] == 0
        and [a for i, a in enumerate(after) if i not in (0, 3)] == [b for i, b in enumerate(labels) if i not in (0, 3)]
    )


def test_label_studio_exports_are_read(tmp_path: Path) -> None:
    full = tmp_path / "export.json"
    full.write_text(
        json.dumps(
            [
                {"data": {"image": "/a.jpg"}, "annotations": [{"result": [{"type": "choices", "value": {"choices": ["ant"]}}]}]},
                {"data": {"image": "/b.jpg"}, "annotations": [{"was_cancelled": True, "result": []}]},
                {"data": {"image": "/c.jpg"}, "annotations": []},
            ]
        )
    )  # fmt: skip
    assert read_labels(full) == {"/a.jpg": "ant"}
    minimal = tmp_path / "min.json"
    minimal.write_text(json.dumps([{"image": "/a.jpg", "choice": "bee"}, {"image": "/b.jpg"}]))
    assert read_labels(minimal) == {"/a.jpg": "bee"}
    twice = tmp_path / "twice.csv"
    twice.write_text("path,label\n/a.jpg,ant\n/a.jpg,bee\n")
    with pytest.raises(DataError, match="two labels"):
        read_labels(twice)


def test_fewer_unlabelled_rows_than_the_budget_is_said(swept: tuple[Path, Path]) -> None:
    cache, run = swept
    code, output = run_cli("suggest", cache, "--run", run, "--budget", "40")
    assert code == 0, output
    assert "warning: only 16 unlabelled rows" in output
    with open(run / "suggest.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][0] == "path" and 1 <= len(rows) - 1 <= 16
    record = json.loads((run / "suggest.json").read_text())
    assert [row["path"] for row in record["suggestions"]] == [row[0] for row in rows[1:]]
    assert record["warnings"] and 'id="suggestions"' in (run / "report.html").read_text()


@pytest.mark.slow
def test_the_cli_end_to_end_on_a_tiny_extracted_cache(tmp_path: Path) -> None:
    from embedder.cli import app as embedder_app

    photos, unlabelled = tmp_path / "photos", tmp_path / "unlabelled"
    make_dataset(photos, per_class=6)
    make_dataset(tmp_path / "more", per_class=3, start=50)
    unlabelled.mkdir()
    for path in sorted((tmp_path / "more").rglob("*.jpg")):  # a flat folder: photos without a label
        path.rename(unlabelled / path.name)
    cache = tmp_path / "c.h5"
    for folder, labels in ((photos, "folders"), (unlabelled, "none")):
        extracted = runner.invoke(
            embedder_app,
            [
                "extract",
                str(folder),
                "-o",
                str(cache),
                "--weights",
                "none",
                "--size",
                "96",
                *("--labels", labels, "--no-progress"),
            ],
        )
        assert extracted.exit_code == 0, extracted.output
    code, output = run_cli(
        "sweep", cache, "--out", tmp_path / "run", "--models", "lr", "--cv", "2", "--no-progress", "--no-audit",
        "--no-embedding-cost",
    )  # fmt: skip
    assert code == 0, output
    code, output = run_cli("suggest", cache, "--run", tmp_path / "run", "--budget", "4", "--format", "label-studio")
    assert code == 0, output
    assert "of 9 unlabelled photos suggested (hybrid, model lr" in output
    tasks = json.loads((tmp_path / "run" / "suggest.label-studio.json").read_text())
    assert 1 <= len(tasks) <= 4
    page = (tmp_path / "run" / "report.html").read_text()
    section = page[page.index('id="suggestions"') :]
    assert section.count('src="thumbnails/') == len(tasks)  # the suggested photos, as thumbnails
    # the labeller accepts the model's pre-annotations: the export carries them as annotations
    export = [{"data": t["data"], "annotations": [{"result": t["predictions"][0]["result"]}]} for t in tasks]
    (tmp_path / "export.json").write_text(json.dumps(export))
    before, embeddings, paths = snapshot(cache)
    code, output = run_cli("label", cache, tmp_path / "export.json")
    assert code == 0, output
    after, after_embeddings, _ = snapshot(cache)
    assert after_embeddings == embeddings
    changed = [paths[i] for i in range(len(paths)) if before[i] != after[i]]
    assert sorted(changed) == sorted(t["data"]["image"] for t in tasks) and all(
        before[paths.index(p)] == -1 for p in changed
    )
    code, output = run_cli("label", cache, tmp_path / "missing.csv")
    assert code == 2 and "does not exist" in output
