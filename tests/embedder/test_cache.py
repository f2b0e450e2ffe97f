"""The cache file: documented layout, lazy reader, lock, schema checks, journal replay, atomic swap."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_dataset

from embedder import Backbone, CacheError, CacheLockedError, extract, open_cache
from embedder.cache import SCHEMA_VERSION, Batch, CacheWriter

TINY = Backbone(size=96, weights=None)


@pytest.fixture
def cache_file(dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cache.h5"
    extract(dataset, out, TINY, progress=False)
    return out


def test_layout_is_readable_with_plain_h5py(cache_file: Path) -> None:
    with h5py.File(cache_file, "r") as handle:
        assert handle.attrs["schema_version"] == SCHEMA_VERSION
        group = handle["backbones"][TINY.key]
        embeddings = group["embeddings"]
        assert embeddings.dtype == np.float32 and embeddings.shape == (12, 1280)
        assert embeddings.is_virtual  # rows live in segment files next to the cache, each checksummed
        [(_, segment, name, _)] = embeddings.virtual_sources()
        with h5py.File(cache_file.parent / segment) as stored:
            assert name == "embeddings" and stored[name].fletcher32 and stored["sha256"].fletcher32
        assert group["sha256"].dtype == np.dtype("S64") and group["label"].dtype == np.int32
        assert len(group["path"]) == len(group["file_size"]) == len(group["mtime_ns"]) == 12
        assert list(group.attrs["class_names"]) == ["blue", "green", "red"]
        assert set(group["failures"]) == {"path", "sha256", "reason", "file_size", "mtime_ns", "limits"}


def test_reader_is_lazy_and_complete(cache_file: Path) -> None:
    with open_cache(cache_file) as cache:
        rows = cache.backbone()
        assert isinstance(rows.embeddings, h5py.Dataset)  # nothing loaded until sliced
        assert rows.embeddings[2:4].shape == (2, 1280)
        assert rows.load().shape == (12, 1280)
        assert rows.class_counts() == {"blue": 4, "green": 4, "red": 4}
        assert rows.failures == []
        with pytest.raises(KeyError, match="has no backbone 'nope'"):
            cache["nope"]


def test_backbone_without_key_needs_a_single_backbone(cache_file: Path, dataset: Path) -> None:
    extract(dataset, cache_file, Backbone(size=96, weights=None, pooling="max"), progress=False)
    with open_cache(cache_file) as cache, pytest.raises(CacheError, match="holds 2 backbones"):
        cache.backbone()


def test_cache_path_that_is_a_directory(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="is a directory; pass a file path"):
        extract(dataset, tmp_path, TINY, progress=False)


def test_file_that_is_not_a_cache_is_left_alone(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes.h5"
    out.write_text("my notes")
    with pytest.raises(CacheError, match="is not an HDF5 file"):
        extract(dataset, out, TINY, progress=False)
    assert out.read_text() == "my notes"


def test_other_schema_version_is_refused_and_kept(cache_file: Path, dataset: Path) -> None:
    with h5py.File(cache_file, "a") as handle:
        handle.attrs["schema_version"] = 99
    before = cache_file.read_bytes()
    for action in (lambda: open_cache(cache_file), lambda: extract(dataset, cache_file, TINY, progress=False)):
        with pytest.raises(
            CacheError, match="written with schema version 99; this embedder reads and writes version 1"
        ):
            action()
    assert cache_file.read_bytes() == before


def test_second_writer_gets_a_clear_error(cache_file: Path, dataset: Path) -> None:
    with CacheWriter(cache_file):
        with pytest.raises(CacheLockedError, match=rf"being written by another process \(pid {os.getpid()}"):
            extract(dataset, cache_file, TINY, progress=False)
        with open_cache(cache_file) as cache:  # readers still work
            assert len(cache.backbone()) == 12
    assert extract(dataset, cache_file, TINY, progress=False).cached == 12  # lock released


def test_reader_keeps_a_consistent_view_while_the_file_is_replaced(cache_file: Path, dataset: Path) -> None:
    with open_cache(cache_file) as before:
        make_dataset(dataset, per_class=2, start=60)
        extract(dataset, cache_file, TINY, progress=False)
        assert len(before.backbone()) == 12 and before.backbone().load().shape == (12, 1280)
    with open_cache(cache_file) as after:
        assert len(after.backbone()) == 18


def test_failed_merge_keeps_the_file_and_the_journal(
    cache_file: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(dataset, per_class=1, start=70)
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        if Path(dst) == cache_file:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CacheError, match="no space left on the disk .* previous content is intact .* rerun"):
        extract(dataset, cache_file, TINY, progress=False)
    with open_cache(cache_file) as cache:
        assert len(cache.backbone()) == 12  # the old file, intact
    assert list((cache_file.parent / "cache.h5.journal" / TINY.key).glob("*.npz"))
    monkeypatch.setattr(os, "replace", real_replace)
    summary = extract(dataset, cache_file, TINY, progress=False)  # replays the journal first
    assert (summary.embedded, summary.cached) == (0, 15)
    assert not (cache_file.parent / "cache.h5.journal").exists()
    assert not list(cache_file.parent.glob("cache.h5.tmp-*"))


def test_replay_is_idempotent_and_skips_unreadable_batches(cache_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    with open_cache(cache_file) as cache:
        rows = cache.backbone()
        paths, shas, embeddings = list(rows.paths), list(rows.sha256), rows.load()
    with CacheWriter(cache_file) as writer:
        writer.begin(TINY.key, TINY.provenance())
        # a batch that repeats an existing row: replay must not duplicate it
        writer.write_batch(TINY.key, Batch(embeddings=embeddings[:1], rows=[(paths[0], shas[0], "blue", 1, 2)]))
        (writer.journal / TINY.key / "00000099.npz").write_bytes(b"half a batch")
    assert "skipping unreadable journal batch" in caplog.text
    with open_cache(cache_file) as cache:
        rows = cache.backbone()
        assert len(rows) == 12 and list(rows.paths) == paths
        np.testing.assert_array_equal(rows.load(), embeddings)


def test_open_missing_cache(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"does not exist; create it with `embedder extract SOURCE --out"):
        open_cache(tmp_path / "none.h5")


def segment_files(cache: Path, key: str) -> dict[str, tuple[int, int]]:
    """The segment files of a backbone, with their inode and modification time."""
    with h5py.File(cache) as handle:
        files = {file for _, file, _, _ in handle["backbones"][key]["embeddings"].virtual_sources()}
    return {file: ((cache.parent / file).stat().st_ino, (cache.parent / file).stat().st_mtime_ns) for file in files}


def test_growing_writes_only_what_is_added(cache_file: Path, dataset: Path) -> None:
    with open_cache(cache_file) as cache:
        before = cache.backbone().load()
    first = segment_files(cache_file, TINY.key)
    extract(dataset, cache_file, Backbone(size=96, weights=None, pooling="max"), progress=False)  # another backbone
    assert segment_files(cache_file, TINY.key) == first  # never rewritten
    make_dataset(dataset, per_class=1, start=50)  # 3 new images of the same backbone
    assert extract(dataset, cache_file, TINY, progress=False).embedded == 3
    grown = segment_files(cache_file, TINY.key)
    assert set(first) < set(grown) and all(grown[f] == first[f] for f in first)  # one new segment, the old kept
    with open_cache(cache_file) as cache:
        rows = cache[TINY.key]
        np.testing.assert_array_equal(rows.load()[:12], before)
        assert len(rows) == 15 and len(set(rows.paths)) == 15


def test_a_changed_file_replaces_its_row_in_place(cache_file: Path, dataset: Path) -> None:
    with open_cache(cache_file) as cache:
        paths, before = list(cache.backbone().paths), cache.backbone().load()
    changed = dataset / paths[4]
    make_dataset(dataset, per_class=1, start=90)
    (dataset / "blue" / "blue_090.jpg").replace(changed)  # other bytes under the same path
    summary = extract(dataset, cache_file, TINY, progress=False)
    assert summary.embedded == 3  # the changed file and the two new images
    with open_cache(cache_file) as cache:
        rows = cache.backbone()
        assert list(rows.paths)[:12] == paths and len(rows) == 14  # same position, no duplicate
        after = rows.load()
        assert not np.allclose(after[4], before[4]) and np.array_equal(
            np.delete(after[:12], 4, 0), np.delete(before, 4, 0)
        )
