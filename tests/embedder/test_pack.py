"""`embedder pack`: one self-contained file, rows bit-identical, read by every command and h5py, growing again."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import blobs, write_cache
from test_cache_damage import flip_bytes, one_line_error, segment_of
from typer.testing import CliRunner

from embedder import CacheError, open_cache, pack
from embedder.cache import Batch, CacheWriter, Failure, Row, verify
from embedder.cli import app

runner = CliRunner()
COLUMNS = ("embeddings", "sha256", "path", "label", "file_size", "mtime_ns")


def grow(cache: Path, key: str, count: int, *, start: int, label: str = "ant", failures: tuple = ()) -> None:
    """One more commit of `count` rows (a new segment) and failures into backbone `key`."""
    with open_cache(cache) as opened:
        provenance, dim = opened[key].provenance, opened[key].dim
    rng = np.random.default_rng(start)
    rows = [Row(f"more/{i:05d}.jpg", rng.bytes(32).hex(), label, 10 + i, 20 + i) for i in range(start, start + count)]
    with CacheWriter(cache) as writer:
        writer.begin(key, {k: v for k, v in provenance.items() if k not in ("created", "updated")})
        writer.write_batch(
            key, Batch(embeddings=rng.random((count, dim), dtype=np.float32), rows=rows, failures=list(failures))
        )


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """Two backbones, each over several segments, with failures and an unlabeled class."""
    path = tmp_path / "src" / "photos.h5"
    path.parent.mkdir()
    X, labels = blobs(per_class=30, dim=24)
    avg = write_cache(path, X, labels)
    grow(path, avg, 17, start=0, failures=(Failure("broken.jpg", "ab" * 32, "not an image", 3, 4),))
    grow(path, avg, 5, start=100, label="")
    X, labels = blobs(per_class=10, dim=8, seed=1)
    maximum = write_cache(path, X, labels, pooling="max")
    grow(path, maximum, 9, start=200)
    assert len(list(path.with_name(path.name + ".segments").rglob("*.h5"))) == 5
    return path


def rows_of(path: Path) -> dict[str, dict]:
    """Every backbone's columns, class names, provenance and failures, read with plain h5py."""
    with h5py.File(path, "r") as handle:
        return {
            key: {
                **{name: group[name][...] for name in COLUMNS},
                "class_names": list(group.attrs["class_names"]),
                "attrs": {k: v for k, v in group.attrs.items() if k not in ("class_names", "updated")},
                "failures": {name: group["failures"][name][...] for name in group["failures"]},
            }
            for key, group in handle["backbones"].items()
        }


def datasets(path: Path) -> list[h5py.Dataset]:
    found: list = []
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, obj: found.append((name, obj.is_virtual)) if isinstance(obj, h5py.Dataset) else None
        )
    return found


def test_pack_round_trip_is_bit_identical_self_contained_and_sound(cache: Path, tmp_path: Path) -> None:
    before = rows_of(cache)
    packed = tmp_path / "elsewhere" / "one.h5"
    packed.parent.mkdir()
    summary = pack(cache, packed)
    assert summary.rows == {key: len(value["path"]) for key, value in before.items()} and len(summary.rows) == 2
    found = datasets(packed)
    assert found and not any(virtual for _, virtual in found)  # plain HDF5, no virtual dataset
    assert not packed.with_name(packed.name + ".segments").exists()
    shutil.rmtree(cache.parent)  # the original and its segments are gone: the packed file stands alone
    after = rows_of(packed)
    assert after.keys() == before.keys()
    for key in before:
        for name in (*COLUMNS, "class_names", "attrs", "failures"):
            if isinstance(before[key][name], dict):
                assert before[key][name].keys() == after[key][name].keys(), (key, name)
                for field in before[key][name]:
                    np.testing.assert_array_equal(before[key][name][field], after[key][name][field])
            else:
                np.testing.assert_array_equal(before[key][name], after[key][name])
        assert before[key]["embeddings"].tobytes() == after[key]["embeddings"].tobytes()  # bit for bit
    with h5py.File(packed, "r") as handle:
        for group in handle["backbones"].values():
            assert group["embeddings"].fletcher32 and group["label"].fletcher32 and group["sha256"].fletcher32
            assert set(group["index"]) == {"path_hash", "path_row", "sha", "sha_row"}
    assert verify(packed) == []
    result = runner.invoke(app, ["verify", str(packed)])
    assert result.exit_code == 0 and "sound" in result.output


def test_a_packed_file_grows_again_and_finds_similar_photos(cache: Path, tmp_path: Path) -> None:
    packed = tmp_path / "packed.h5"
    pack(cache, packed)
    key = "mobilenet_v2-1.0-96-random-synthetic-avg-crop-fp32"
    with open_cache(packed) as opened:
        old = opened[key].load()
        hits = opened[key].similar(["ant/0000.jpg"], k=3)[0]  # the similarity index is built on first use
        assert len(hits) == 3 and all(hit.path != "ant/0000.jpg" for hit in hits)
        assert opened[key].index(refresh=False).row_count == len(old)
    grow(packed, key, 6, start=500)
    with open_cache(packed) as opened:
        grown = opened[key].load()
        assert len(grown) == len(old) + 6
        np.testing.assert_array_equal(grown[: len(old)], old)
        assert "more/00500.jpg" in set(opened[key].paths)
        assert len(opened[key].similar(["more/00500.jpg"], k=2)[0]) == 2  # the index is refreshed, not stale
    assert verify(packed) == []
    result = runner.invoke(app, ["info", str(packed)])
    assert result.exit_code == 0 and f"rows      {len(old) + 6} x 24" in result.output


def test_pack_command_and_existing_out(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "packed.h5"
    result = runner.invoke(app, ["pack", str(cache), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"packed {90 + 17 + 5 + 30 + 9} rows of 2 backbone(s) into {out}" in result.output
    stamp = out.stat().st_mtime_ns
    one_line_error(runner.invoke(app, ["pack", str(cache), "--out", str(out)]), "already exists", "--force")
    assert out.stat().st_mtime_ns == stamp
    one_line_error(runner.invoke(app, ["pack", str(cache), "--out", str(cache)]), "is the cache itself")
    with open_cache(out) as opened:
        opened.backbone("mobilenet_v2-1.0-96-random-synthetic-max-crop-fp32").index()  # an index of the old file
    assert runner.invoke(app, ["pack", str(cache), "--out", str(out), "--force"]).exit_code == 0
    assert verify(out) == []
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_pack_refuses_a_damaged_cache_and_writes_nothing(cache: Path, tmp_path: Path) -> None:
    with open_cache(cache) as opened:
        first = opened["mobilenet_v2-1.0-96-random-synthetic-max-crop-fp32"].load()[0]
    flip_bytes(segment_of(cache, "max"), first.tobytes())
    out = tmp_path / "packed.h5"
    with pytest.raises(CacheError, match=r"is damaged: .*embeddings cannot be read, nothing was packed"):
        pack(cache, out)
    assert not out.exists() and not [p for p in tmp_path.rglob("*") if p.name.startswith("packed.h5")]
    one_line_error(runner.invoke(app, ["pack", str(cache), "--out", str(out)]), f"cache '{cache}' is damaged")


def test_pack_refuses_a_cache_with_a_missing_segment_or_bad_values(cache: Path, tmp_path: Path) -> None:
    segment = segment_of(cache, "max")
    moved = segment.rename(tmp_path / "aside.h5")
    with pytest.raises(CacheError, match=f"nothing was packed: .*segment .*{segment.name} is missing"):
        pack(cache, tmp_path / "packed.h5")
    moved.rename(segment)
    with h5py.File(segment, "a") as handle:  # written through HDF5: checksums hold, the values do not
        handle["embeddings"][2] = np.nan
    with pytest.raises(CacheError, match=r"nothing was packed: .*1 embedding row\(s\) hold NaN"):
        pack(cache, tmp_path / "packed.h5")
    assert not (tmp_path / "packed.h5").exists()


def test_a_packed_file_is_swept(cache: Path, tmp_path: Path) -> None:
    from classical.cli import app as classical_app

    packed = tmp_path / "packed.h5"
    pack(cache, packed)
    result = runner.invoke(
        classical_app,
        [
            "sweep",
            str(packed),
            "--out",
            str(tmp_path / "run"),
            "--models",
            "lr",
            "--backbone",
            "mobilenet_v2-1.0-96-random-synthetic-max-crop-fp32",
            "--cv",
            "2",
            "--n-jobs",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "report.json").is_file()


@pytest.mark.slow
def test_embedder_extract_grows_a_packed_file(tmp_path: Path) -> None:
    from conftest import make_dataset

    photos = tmp_path / "photos"
    make_dataset(photos, per_class=2)
    tiny = ["--size", "96", "--weights", "none", "--no-progress"]
    cache = tmp_path / "cache.h5"
    assert runner.invoke(app, ["extract", str(photos), "--out", str(cache), *tiny]).exit_code == 0
    packed = tmp_path / "moved" / "packed.h5"
    packed.parent.mkdir()
    assert runner.invoke(app, ["pack", str(cache), "--out", str(packed)]).exit_code == 0
    with open_cache(packed) as opened:
        before = opened.backbone().load()
    make_dataset(photos, per_class=2, start=2)  # two more photos per class
    result = runner.invoke(app, ["extract", str(photos), "--out", str(packed), *tiny])
    assert result.exit_code == 0, result.output
    assert "6 embedded" in result.output and "6 cached" in result.output
    with open_cache(packed) as opened:
        grown = opened.backbone().load()
    assert len(grown) == 12
    np.testing.assert_array_equal(grown[:6], before)
    assert verify(packed) == []
