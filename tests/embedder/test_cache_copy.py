"""Copies of a cache never share storage: real files copied the way users copy them (cp, cp -r, rename)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import blobs, write_cache
from test_cache_damage import one_line_error
from test_pack import grow
from typer.testing import CliRunner

import embedder.cache.merge as merge
from embedder import CacheError, open_cache
from embedder.cache import verify
from embedder.cli import app

runner = CliRunner()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache of three segments (60 rows, then 17 more, then 5 more)."""
    path = tmp_path / "src" / "photos.h5"
    path.parent.mkdir()
    X, labels = blobs(per_class=30, dim=24)
    key = write_cache(path, X, labels)
    grow(path, key, 17, start=0)
    grow(path, key, 5, start=100)
    return path


def snapshot(path: Path) -> dict[str, np.ndarray]:
    with open_cache(path) as opened:
        rows = opened.backbone()
        return {"embeddings": rows.load(), "label": rows.labels, "path": rows.paths}


def key_of(path: Path) -> str:
    with open_cache(path) as opened:
        return opened.keys[0]


def proper_copy(cache: Path, dest: Path) -> Path:
    """`cp -r photos.h5 photos.h5.segments DEST/` then renaming both to `copy.h5` / `copy.h5.segments`."""
    dest.mkdir()
    shutil.copy2(cache, dest / "copy.h5")
    shutil.copytree(cache.with_name(cache.name + ".segments"), dest / "copy.h5.segments")
    return dest / "copy.h5"


def test_small_file_copied_alone_fails_loudly_on_every_use(cache: Path) -> None:
    copy = cache.with_name("copy.h5")
    shutil.copy(cache, copy)  # `cp photos.h5 copy.h5`, same folder
    for use in (lambda: open_cache(copy), lambda: grow(copy, key_of(cache), 3, start=500)):
        with pytest.raises(CacheError) as error:
            use()
        message = str(error.value)
        assert "\n" not in message
        assert f"'{copy.with_name('copy.h5.segments')}', which does not exist" in message
        assert f"a copy of '{cache.resolve()}'" in message
        assert f"cp -r {cache} {cache}.segments DEST/" in message and f"embedder pack {cache} --out copy.h5" in message
    assert not copy.with_name("copy.h5.segments").exists()  # the failed write created nothing
    for command in (["info", str(copy)], ["verify", str(copy)], ["similar", str(copy), "x.jpg"]):
        one_line_error(runner.invoke(app, command), "copy.h5.segments", "embedder pack")


def test_original_keeps_working_after_a_lone_copy(cache: Path) -> None:
    before = snapshot(cache)
    shutil.copy(cache, cache.with_name("copy.h5"))
    grow(cache, key_of(cache), 4, start=300)
    after = snapshot(cache)
    assert np.array_equal(after["embeddings"][: len(before["path"])], before["embeddings"])
    assert verify(cache) == []


def test_h5py_label_write_to_a_lone_same_folder_copy_leaves_the_original_unchanged(cache: Path) -> None:
    """`cp photos.h5 copy.h5`, then a label set with plain h5py `r+`: labels are each small file's own."""
    original = snapshot(cache)
    copy = cache.with_name("copy.h5")
    shutil.copy(cache, copy)
    with h5py.File(copy, "r+") as handle:
        labels = handle["backbones"][key_of(cache)]["label"]
        assert not labels.is_virtual
        labels[:3] = (labels[:3] + 1) % 2
        changed = labels[:3]
    with h5py.File(copy, "r") as handle:  # the copy holds its own change
        assert np.array_equal(handle["backbones"][key_of(cache)]["label"][:3], changed)
    after = snapshot(cache)
    assert all(np.array_equal(after[name], original[name]) for name in original)
    assert verify(cache) == []


def test_h5py_embeddings_write_through_a_lone_copy_is_found_by_verify_on_the_original(cache: Path) -> None:
    """The one write a byte copy in the same folder can still pass on (HDF5 resolves mappings by folder, not name):
    the original's recorded segment digests name the changed segment."""
    assert verify(cache) == []
    copy = cache.with_name("copy.h5")
    shutil.copy(cache, copy)
    with h5py.File(copy, "r+") as handle:
        handle["backbones"][key_of(cache)]["embeddings"][0] = 0.5
    problems = verify(cache)
    assert len(problems) == 1 and "changed after it was written" in problems[0]
    assert ".segments/" in problems[0] and "\n" not in problems[0]


def test_an_older_file_mapping_its_labels_onto_segments_gets_its_own_on_first_write(cache: Path) -> None:
    """Cache files written before labels were the small file's own still open, and their first write moves them."""
    from embedder.cache.segments import link_columns, read_runs

    key = key_of(cache)
    with h5py.File(cache, "r+") as handle:  # the layout of the previous release: `label` mapped like the rest
        group = handle["backbones"][key]
        del group["label"]
        link_columns(group, cache, read_runs(group), int(group["embeddings"].shape[1]), ("label",))
        assert group["label"].is_virtual
    before = snapshot(cache)
    grow(cache, key, 3, start=700)
    with h5py.File(cache, "r") as handle:
        assert not handle["backbones"][key]["label"].is_virtual
    assert np.array_equal(snapshot(cache)["label"][: len(before["label"])], before["label"])
    assert verify(cache) == []


def test_an_older_files_other_backbone_gets_its_own_labels_when_carried(tmp_path: Path) -> None:
    """A write to one backbone carries the others into the new small file, their mapped labels made their own."""
    from embedder.cache.segments import link_columns, read_runs

    path = tmp_path / "two.h5"
    X, labels = blobs(per_class=5, dim=8)
    grown, carried = write_cache(path, X, labels), write_cache(path, X + 1, labels, pooling="max")
    with h5py.File(path, "r+") as handle:  # both backbones in the layout of the previous release
        for key in (grown, carried):
            group = handle["backbones"][key]
            del group["label"]
            link_columns(group, path, read_runs(group), 8, ("label",))
    with open_cache(path) as opened:
        before = opened[carried].labels
    write_cache(path, X[:3] + 5, labels[:3], paths=["new/0.jpg", "new/1.jpg", "new/2.jpg"])
    with h5py.File(path, "r") as handle:
        assert not handle["backbones"][carried]["label"].is_virtual
    with open_cache(path) as opened:
        assert np.array_equal(opened[carried].labels, before) and len(opened[grown]) == len(labels) + 3
    assert verify(path) == []


def test_renamed_copy_in_another_folder_works_and_is_independent(cache: Path, tmp_path: Path) -> None:
    original = snapshot(cache)
    copy = proper_copy(cache, tmp_path / "elsewhere")
    got = snapshot(copy)  # first use maps the copy onto its own folder
    assert all(np.array_equal(got[name], original[name]) for name in original)
    assert verify(copy) == []
    with h5py.File(copy, "r") as handle:  # plain h5py now reads the copy's own segments too
        sources = handle["backbones"][key_of(copy)]["embeddings"].virtual_sources()
        assert {Path(source.file_name).parts[0] for source in sources} == {"copy.h5.segments"}
        assert np.array_equal(handle["backbones"][key_of(copy)]["embeddings"][...], original["embeddings"])
    with h5py.File(copy, "r+") as handle:  # a write through h5py to the copy ...
        handle["backbones"][key_of(copy)]["label"][0] = 2
    assert snapshot(copy)["label"][0] == 2
    assert np.array_equal(snapshot(cache)["label"], original["label"])  # ... leaves the original unchanged
    grow(copy, key_of(copy), 6, start=400)  # growing the copy writes only into its own folder
    assert len(snapshot(copy)["path"]) == len(original["path"]) + 6
    assert all(np.array_equal(snapshot(cache)[name], original[name]) for name in original)
    assert verify(cache) == [] and verify(copy) == []


def test_h5py_write_to_a_same_name_copy_elsewhere_leaves_the_original_unchanged(cache: Path, tmp_path: Path) -> None:
    original = snapshot(cache)
    dest = tmp_path / "backup"
    dest.mkdir()
    shutil.copy2(cache, dest / cache.name)
    shutil.copytree(cache.with_name("photos.h5.segments"), dest / "photos.h5.segments")
    with h5py.File(dest / cache.name, "r+") as handle:
        handle["backbones"][key_of(cache)]["label"][:3] = 1
    assert list(snapshot(dest / cache.name)["label"][:3]) == [1, 1, 1]
    assert np.array_equal(snapshot(cache)["label"], original["label"])


def test_compacting_the_original_never_deletes_rows_of_a_copy(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = proper_copy(cache, tmp_path / "copy")
    expected = snapshot(copy)
    monkeypatch.setattr(merge, "MAX_RUNS", 2)
    key = key_of(cache)
    for start in (0, 100, 0):  # edited rows (same paths again), then compaction and the writer's clean-up
        grow(cache, key, 17, start=start, label="ant")
    names = {p.name for p in cache.with_name("photos.h5.segments").rglob("*.h5")}
    assert {p.name for p in copy.with_name("copy.h5.segments").rglob("*.h5")} - names  # compacted away there only
    got = snapshot(copy)
    assert all(np.array_equal(got[name], expected[name]) for name in expected)
    assert verify(copy) == []
    assert len(snapshot(cache)["path"]) == len(expected["path"]) + 12  # more/00105-00116 are new


def test_storage_of_another_cache_under_the_copys_name_is_refused(cache: Path, tmp_path: Path) -> None:
    other = tmp_path / "other" / "photos.h5"
    other.parent.mkdir()
    X, labels = blobs(per_class=5, dim=24, seed=3)
    write_cache(other, X, labels)
    shutil.copytree(other.with_name("photos.h5.segments"), cache.with_name("copy.h5.segments"))
    shutil.copy(cache, cache.with_name("copy.h5"))
    with pytest.raises(CacheError, match="belongs to another cache"):
        open_cache(cache.with_name("copy.h5"))


def test_a_stray_segments_folder_in_the_working_directory_is_never_read(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(cache.with_name("photos.h5.segments"), work / "photos.h5.segments")
    monkeypatch.chdir(work)
    lone = tmp_path / "lone" / "photos.h5"  # the small file alone, under the same name, in a third folder
    lone.parent.mkdir()
    shutil.copy(cache, lone)
    with pytest.raises(CacheError, match="which does not exist"):
        open_cache(lone)
    one_line_error(runner.invoke(app, ["info", str(lone)]), "does not exist")
    # the cache's own segments win over a stray folder even when both are there
    for segment in (work / "photos.h5.segments").rglob("*.h5"):
        with h5py.File(segment, "r+") as handle:
            handle["embeddings"][...] = 7.0
    cached = tmp_path / "own"
    shutil.copytree(cache.parent, cached)
    assert not np.any(snapshot(cached / "photos.h5")["embeddings"] == 7.0)
    assert os.getcwd() == str(work)


def test_a_cache_without_an_id_still_opens_and_grows(cache: Path) -> None:
    """Caches written before ids (or by pack) carry none: they open, and get one on their next write."""
    with h5py.File(cache, "r+") as handle:
        del handle.attrs["cache_id"], handle.attrs["written_as"]
    cache.with_name("photos.h5.segments").joinpath("OWNER").unlink()
    rows = len(snapshot(cache)["path"])
    grow(cache, key_of(cache), 2, start=600)
    assert len(snapshot(cache)["path"]) == rows + 2
    with h5py.File(cache, "r") as handle:
        assert (cache.with_name("photos.h5.segments") / "OWNER").read_text().strip() == handle.attrs["cache_id"]
