"""Extraction into the cache: incremental runs, reuse by content hash, failures, several backbones."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_dataset, photo
from PIL import Image

from embedder import Backbone, decode_image, extract, info, open_cache
from embedder.runtimes import KerasEncoder

TINY = Backbone(size=96, weights=None)


def rows_by_path(cache_path: Path, key: str | None = None) -> dict[str, tuple[str, int, np.ndarray]]:
    with open_cache(cache_path) as cache:
        rows = cache.backbone(key)
        return {p: (s, int(label), e) for p, s, label, e in zip(rows.paths, rows.sha256, rows.labels, rows.load())}


def test_first_run_embeds_every_image_with_labels_hashes_and_provenance(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    summary = extract(dataset, out, TINY, batch_size=5, progress=False)
    assert (summary.total, summary.embedded, summary.cached, summary.reused, summary.failed) == (12, 12, 0, 0, [])
    with open_cache(out) as cache:
        assert cache.keys == [TINY.key]
        rows = cache.backbone()
        assert len(rows) == 12 and rows.dim == 1280 and rows.class_names == ["blue", "green", "red"]
        assert list(rows.paths) == sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*.jpg"))
        assert [rows.class_names[i] for i in rows.labels] == [p.split("/")[0] for p in rows.paths]
        for path, sha in zip(rows.paths, rows.sha256):
            assert sha == hashlib.sha256((dataset / path).read_bytes()).hexdigest()
        provenance = rows.provenance
        assert provenance["backbone_key"] == TINY.key and provenance["weights_sha256"] == TINY.weights_sha256
        assert "preprocess_input" in provenance["preprocessing"] and provenance["resize"] == "crop"
        assert provenance["version_tensorflow"] and provenance["created"] and provenance["source"] == str(dataset)
        embeddings, rows_paths = rows.load(), list(rows.paths)
    # each row is the Keras reference embedding of its decoded file, whatever runtime extracted it
    pixels = np.stack([decode_image((dataset / path).read_bytes(), size=96) for path in rows_paths[:4]])
    reference = KerasEncoder(TINY)(pixels)
    assert np.abs(embeddings[:4] - reference).max() < 1e-4


def test_second_run_computes_nothing_and_leaves_the_file_alone(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    extract(dataset, out, TINY, progress=False)
    before = out.read_bytes()
    summary = extract(dataset, out, TINY, progress=False)
    assert (summary.embedded, summary.cached, summary.runtime) == (0, 12, "none")
    assert out.read_bytes() == before


def test_grown_folder_computes_only_new_images(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    extract(dataset, out, TINY, progress=False)
    old = rows_by_path(out)
    make_dataset(dataset, per_class=1, start=50)
    summary = extract(dataset, out, TINY, progress=False)
    assert (summary.embedded, summary.cached) == (3, 12)
    new = rows_by_path(out)
    assert len(new) == 15
    for path, (sha, label, embedding) in old.items():
        assert new[path][0] == sha and new[path][1] == label and np.array_equal(new[path][2], embedding)


def test_changed_bytes_are_recomputed_in_place(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    extract(dataset, out, TINY, progress=False)
    old = rows_by_path(out)
    photo((250, 250, 0), seed=99).save(dataset / "red/red_001.jpg")
    summary = extract(dataset, out, TINY, progress=False)
    assert (summary.embedded, summary.cached) == (1, 11)
    new = rows_by_path(out)
    assert len(new) == 12
    assert new["red/red_001.jpg"][0] != old["red/red_001.jpg"][0]
    assert not np.allclose(new["red/red_001.jpg"][2], old["red/red_001.jpg"][2])


def test_identical_bytes_under_two_paths_are_computed_once(dataset: Path, tmp_path: Path) -> None:
    shutil.copy(dataset / "red/red_000.jpg", dataset / "red/copy_of_red_000.jpg")
    out = tmp_path / "cache.h5"
    summary = extract(dataset, out, TINY, progress=False)
    assert (summary.embedded, summary.reused) == (12, 1)
    shutil.copy(dataset / "blue/blue_000.jpg", dataset / "green/looks_blue.jpg")  # later run: reuse the cache
    summary = extract(dataset, out, TINY, progress=False)
    assert (summary.embedded, summary.reused, summary.cached) == (0, 1, 13)
    rows = rows_by_path(out)
    assert np.array_equal(rows["red/copy_of_red_000.jpg"][2], rows["red/red_000.jpg"][2])
    assert np.array_equal(rows["green/looks_blue.jpg"][2], rows["blue/blue_000.jpg"][2])
    assert rows["green/looks_blue.jpg"][1] != rows["blue/blue_000.jpg"][1]  # each row keeps its own label


def test_touched_file_is_rehashed_not_recomputed(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    extract(dataset, out, TINY, progress=False)
    os.utime(dataset / "red/red_000.jpg", ns=(1, 1))
    summary = extract(dataset, out, TINY, progress=False)
    assert (summary.embedded, summary.cached) == (0, 12)
    with h5py.File(out) as handle:
        group = handle["backbones"][TINY.key]
        row = list(group["path"].asstr()[...]).index("red/red_000.jpg")
        assert group["mtime_ns"][row] == 1
    assert extract(dataset, out, TINY, rehash=True, progress=False).embedded == 0


def test_second_backbone_lives_beside_the_first_untouched(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    extract(dataset, out, TINY, progress=False)
    first = rows_by_path(out, TINY.key)
    with h5py.File(out) as handle:
        first_attrs = dict(handle["backbones"][TINY.key].attrs)
    other = Backbone(size=96, weights=None, pooling="max")
    assert extract(dataset, out, other, progress=False).embedded == 12
    with open_cache(out) as cache:
        assert cache.keys == sorted([TINY.key, other.key])
    again = rows_by_path(out, TINY.key)
    assert all(np.array_equal(again[p][2], first[p][2]) and again[p][:2] == first[p][:2] for p in first)
    with h5py.File(out) as handle:
        assert {k: str(v) for k, v in handle["backbones"][TINY.key].attrs.items()} == {
            k: str(v) for k, v in first_attrs.items()
        }


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file per kind of bad input, with the reason each must be recorded with."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    good = folder / "good.jpg"
    Image.effect_noise((200, 200), 50).convert("RGB").save(good)
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:3000])
    (folder / "text.png").write_text("not a picture at all")
    Image.new("L", (2000, 2000)).save(folder / "bomb.png")
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    return {
        "empty.jpg": "empty file (0 bytes)",
        "truncated.jpg": "truncated or corrupt image data",
        "text.png": "not an image",
        "bomb.png": "over the limit of 1 Mpx",
        "dangling.jpg": "file not found",
    }


def test_bad_files_are_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    expected = write_bad_files(folder)
    out = tmp_path / "cache.h5"
    summary = extract(folder, out, TINY, max_pixels=1_000_000, progress=False)
    assert summary.embedded == 1
    reasons = {failure.path: failure.reason for failure in summary.failed}
    assert set(reasons) == set(expected)
    for path, reason in expected.items():
        assert reason in reasons[path], path
    recorded = {f["path"]: f["reason"] for f in info(out)["backbones"][0]["failures"]}
    assert recorded == reasons
    again = extract(folder, out, TINY, max_pixels=1_000_000, progress=False)  # not retried while unchanged
    assert (again.embedded, len(again.failed), again.cached) == (0, 5, 1)
    photo((10, 200, 10), seed=5).save(folder / "truncated.jpg", format="JPEG")  # fixed by the user
    fixed = extract(folder, out, TINY, max_pixels=1_000_000, progress=False)
    assert fixed.embedded == 1 and "truncated.jpg" not in {f.path for f in fixed.failed}
    assert "truncated.jpg" in rows_by_path(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_recorded(dataset: Path, tmp_path: Path) -> None:
    locked = dataset / "red/red_000.jpg"
    locked.chmod(0)
    summary = extract(dataset, tmp_path / "cache.h5", TINY, progress=False)
    assert [(f.path, f.reason) for f in summary.failed] == [
        ("red/red_000.jpg", "cannot read: permission denied; fix the file's permissions")
    ]


def test_keras_and_onnx_runtimes_agree(dataset: Path, tmp_path: Path) -> None:
    extract(dataset, tmp_path / "keras.h5", TINY, runtime="keras", progress=False)
    summary = extract(dataset, tmp_path / "onnx.h5", TINY, runtime="onnx", progress=False)
    assert summary.runtime == "onnx"
    keras_rows, onnx_rows = rows_by_path(tmp_path / "keras.h5"), rows_by_path(tmp_path / "onnx.h5")
    difference = max(np.abs(keras_rows[p][2] - onnx_rows[p][2]).max() for p in keras_rows)
    assert difference <= 1e-4


def test_int8_rows_live_in_their_own_group_and_keep_their_calibration(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    extract(dataset, out, TINY, progress=False)
    first = extract(dataset, out, TINY, precision="int8", runtime="onnx", progress=False)
    assert first.embedded == 12 and first.runtime == "onnx int8"
    with open_cache(out) as cache:
        assert len(cache.keys) == 2 and TINY.key in cache.keys
        int8 = cache[first.backbone_key]
        assert int8.provenance["precision"] == "int8" and int8.provenance["runtime"] == "onnx"
        calibration = json.loads(int8.provenance["calibration_files"])
        assert len(calibration) == 12 and int8.provenance["calibration_digest"][:8] in first.backbone_key
        fp32, reduced = rows_by_path(out, TINY.key), rows_by_path(out, first.backbone_key)
    similarity = [
        np.dot(fp32[p][2], reduced[p][2]) / np.linalg.norm(fp32[p][2]) / np.linalg.norm(reduced[p][2]) for p in fp32
    ]
    assert min(similarity) > 0.9 and not all(np.array_equal(fp32[p][2], reduced[p][2]) for p in fp32)
    make_dataset(dataset, per_class=1, start=40)  # grown folder: same calibration, same key, only new rows
    grown = extract(dataset, out, TINY, precision="int8", runtime="onnx", progress=False)
    assert grown.backbone_key == first.backbone_key and (grown.embedded, grown.cached) == (3, 12)
