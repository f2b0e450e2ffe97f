"""Damage is detected, never silently used: truncation, flipped bytes, missing parts, NaN rows, a full disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import blobs, write_cache
from typer.testing import CliRunner

from embedder import CacheError, open_cache
from embedder.cache import Batch, CacheWriter, Row, verify
from embedder.cli import app

runner = CliRunner()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    X, labels = blobs(per_class=20, dim=16)
    write_cache(tmp_path / "cache.h5", X, labels)
    return tmp_path / "cache.h5"


def segment_of(cache: Path, backbone: str = "") -> Path:
    """The segment file of the first rows of the backbone whose key holds `backbone` (the only one by default)."""
    with h5py.File(cache) as handle:
        groups = [group for key, group in handle["backbones"].items() if backbone in key]
        if not backbone:
            [_] = groups
        file = groups[0]["embeddings"].virtual_sources()[0][1]
    return cache.parent / file


def one_line_error(result, *fragments: str) -> None:
    """A CLI failure that is one sentence naming the problem: no traceback."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # not raised
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def flip_bytes(path: Path, needle: bytes, count: int = 8) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at > 0, "the needle is not stored in the file"
    for i in range(count):
        data[at + i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_sound_cache_verifies(cache: Path) -> None:
    assert verify(cache) == []
    result = runner.invoke(app, ["verify", str(cache)])
    assert result.exit_code == 0 and "sound (60 rows in 1 backbone(s)" in result.output


def test_flipped_bytes_are_detected_on_read(cache: Path) -> None:
    with open_cache(cache) as opened:
        first = opened.backbone().load()[0]
    flip_bytes(segment_of(cache), first.tobytes())
    [problem] = verify(cache)
    assert "embeddings rows 0-" in problem and "fail their checksum" in problem
    with open_cache(cache) as opened, pytest.raises(CacheError, match="is damaged: reading 'embeddings'"):
        opened.backbone().load()
    one_line_error(runner.invoke(app, ["verify", str(cache)]), "fail their checksum")


def test_flipped_hashes_are_detected(cache: Path) -> None:
    with open_cache(cache) as opened:
        sha = opened.backbone().sha256[3]
    flip_bytes(segment_of(cache), sha.encode(), count=2)
    assert any("sha256 rows 0-" in problem for problem in verify(cache))


def test_truncated_file_is_one_line_for_every_command(cache: Path, dataset: Path, tmp_path: Path) -> None:
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    for command in (
        ["info", str(cache)],
        ["verify", str(cache)],
        ["extract", str(dataset), "--out", str(cache), "--weights", "none", "--size", "96"],
    ):
        one_line_error(runner.invoke(app, command), f"cache '{cache}' is damaged", "cannot be opened")
    from classical.cli import app as classical_app

    one_line_error(
        runner.invoke(classical_app, ["sweep", str(cache), "--out", str(tmp_path / "run")]),
        "is damaged",
        "extract again",
    )


def test_missing_dataset_and_foreign_layout(cache: Path, tmp_path: Path) -> None:
    with h5py.File(cache, "a") as handle:
        [group] = handle["backbones"].values()
        del group["label"]
    one_line_error(runner.invoke(app, ["info", str(cache)]), "has no dataset label")
    assert "dataset label missing" in verify(cache)[0]
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = np.zeros(3)
    one_line_error(runner.invoke(app, ["info", str(foreign)]), "not a bottleneck-lab embeddings cache")
    assert "not a bottleneck-lab embeddings cache" in verify(foreign)[0]


def test_missing_segment_is_named(cache: Path) -> None:
    segment = segment_of(cache)
    segment.unlink()
    with pytest.raises(CacheError, match=f"segment file .*{segment.name} of backbone .* is missing"):
        open_cache(cache).backbone()
    assert f"segment {segment} is missing" in verify(cache)[0]


def test_values_are_checked(cache: Path) -> None:
    with h5py.File(segment_of(cache), "a") as handle:  # written through HDF5: checksums stay valid
        handle["embeddings"][5] = np.nan
        handle["sha256"][7] = b"not a hash".ljust(64, b"x")
    with h5py.File(cache, "a") as handle:  # labels are the small file's own
        next(iter(handle["backbones"].values()))["label"][9] = 17
    problems = verify(cache)
    assert any("1 embedding row(s) hold NaN" in p for p in problems)
    assert any("1 content hash(es) are not 64 hex digits" in p for p in problems)
    assert any("labels outside -1..2" in p for p in problems)


def test_duplicate_paths_are_found(tmp_path: Path) -> None:
    X, labels = blobs(per_class=2, dim=4)
    path = tmp_path / "dup.h5"
    write_cache(path, X, labels)
    with h5py.File(segment_of(path), "a") as handle:
        handle["path"][1] = handle["path"][0]
    assert any("1 path(s) appear more than once" in p for p in verify(path))


def fill_disk(folder: Path, leave: int) -> Path:
    """Fill the file system of `folder` but `leave` bytes."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as handle:
        handle.truncate(0)
        chunk = b"\0" * (1 << 20)
        left = free - leave
        while left > 0:
            handle.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return filler


@pytest.fixture
def small_disk(tmp_path: Path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_during_a_merge_keeps_everything(small_disk: Path) -> None:
    X, labels = blobs(per_class=20, dim=256)
    cache = small_disk / "cache.h5"
    key = write_cache(cache, X, labels)
    with open_cache(cache) as opened:
        provenance, before = opened.backbone().provenance, opened.backbone().load()
    extra = np.random.default_rng(1).random((2000, 256), dtype=np.float32)  # 2 MB: the journal fits, the merge not
    rows = [Row(f"new/{i:05d}.jpg", os.urandom(32).hex(), "new", 1, 1) for i in range(len(extra))]
    filler = fill_disk(small_disk, leave=3 << 20)
    with (
        pytest.raises(CacheError, match="no space left on the disk .* previous content is intact .* rerun"),
        CacheWriter(cache) as writer,
    ):
        writer.begin(key, provenance)
        writer.write_batch(key, Batch(embeddings=extra, rows=rows))
    with open_cache(cache) as opened:
        np.testing.assert_array_equal(opened.backbone().load(), before)  # the previous content, intact
    assert not [p for p in small_disk.rglob("*") if ".tmp-" in p.name]  # no temporary file left behind
    assert list((small_disk / "cache.h5.journal" / key).glob("*.npz"))  # the finished batch waits
    filler.unlink()
    with CacheWriter(cache):  # the next writer, with space, completes from the journal
        pass
    with open_cache(cache) as opened:
        assert len(opened.backbone()) == 60 + 2000
    assert verify(cache) == []


# ---- damage is a sentence: every command, on the real CLI

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {  # each command, on cache {cache}; {photos} and {tmp} are filled in
    "info": ["embedder.cli", "info", "{cache}"],
    "verify": ["embedder.cli", "verify", "{cache}"],
    "similar": ["embedder.cli", "similar", "{cache}", "red/red_000.jpg", "--k", "2"],
    "index": ["embedder.cli", "index", "{cache}"],
    "pack": ["embedder.cli", "pack", "{cache}", "--out", "{tmp}/packed.h5"],
    "extract": ["embedder.cli", "extract", "{photos}", "--out", "{cache}", "--size", "96", "--weights", "none"],
    "sweep": ["classical.cli", "sweep", "{cache}", "--out", "{tmp}/run", "--models", "lr", "--n-jobs", "1"],
}


def flip_small_file(cache: Path) -> Path:
    """64 flipped bytes in the small file's lookup table of content hashes (a checksummed chunk)."""
    with h5py.File(cache) as handle:
        [group] = handle["backbones"].values()
        at = group["index/sha"].id.get_chunk_info(0).byte_offset + 8
    data = bytearray(cache.read_bytes())
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    cache.write_bytes(bytes(data))
    return cache


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def delete_dataset(cache: Path, name: str = "embeddings") -> Path:
    with h5py.File(cache, "a") as handle:
        [group] = handle["backbones"].values()
        del group[name]
    return cache


DAMAGE = {  # what is done to the cache -> the file the one line names
    "small-file-flipped-bytes": lambda cache: flip_small_file(cache),
    "segment-truncated": lambda cache: truncate(segment_of(cache)),
    "embeddings-deleted": lambda cache: delete_dataset(cache),
    "segment-missing": lambda cache: (segment_of(cache).unlink(), segment_of(cache))[1],
    "small-file-truncated": lambda cache: truncate(cache),
}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache written by a real `embedder extract` (the rows of `embedder extract` itself, with its segment)."""
    from conftest import make_dataset

    from embedder import Backbone, extract

    folder = tmp_path_factory.mktemp("extracted")
    make_dataset(folder / "photos")
    (folder / "cache").mkdir()
    extract(folder / "photos", folder / "cache" / "cache.h5", Backbone(size=96, weights=None), progress=False)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_command_on_a_damaged_cache_says_one_line_naming_the_file(
    damage: str, extracted: Path, tmp_path: Path
) -> None:
    shutil.copytree(extracted / "cache", tmp_path / "cache")  # the cache with its segments, as the docs say
    cache = tmp_path / "cache" / "cache.h5"
    named = DAMAGE[damage](cache)
    before = {p: p.read_bytes() for p in cache.parent.rglob("*.h5")}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command, args in COMMANDS.items():
        filled = [a.format(cache=cache, photos=extracted / "photos", tmp=tmp_path) for a in args]
        result = subprocess.run(
            [sys.executable, "-m", *filled, "--no-progress"]
            if command in ("extract", "sweep")
            else [sys.executable, "-m", *filled],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert result.returncode != 0, (damage, command, lines)
        assert len(lines) == 1 and "Traceback" not in lines[0], (damage, command, lines)
        assert str(named) in lines[0] or f"'{cache}'" in lines[0], (damage, command, lines)
        assert "restore" in lines[0].lower(), (damage, command, lines)  # and what to do
    assert {p: p.read_bytes() for p in cache.parent.rglob("*.h5")} == before  # no write proceeded
    assert not cache.with_name(cache.name + ".journal").exists()
    assert not (tmp_path / "packed.h5").exists()


def test_a_write_never_proceeds_on_a_damaged_cache(cache: Path, dataset: Path) -> None:
    delete_dataset(cache)
    result = runner.invoke(app, ["extract", str(dataset), "--out", str(cache), "--size", "96", "--weights", "none"])
    one_line_error(result, f"cache '{cache}' is damaged, nothing was written", "dataset embeddings missing")
    assert not cache.with_name(cache.name + ".journal").exists()
    with pytest.raises(CacheError, match="nothing was written: .*dataset embeddings missing"), CacheWriter(cache):
        pass


def test_verify_lists_every_problem_and_keeps_reading(tmp_path: Path) -> None:
    X, labels = blobs(per_class=7000, dim=8)  # 21000 rows: three blocks of reading
    cache = tmp_path / "cache.h5"
    write_cache(cache, X, labels)
    maximum = write_cache(cache, X[:50], labels[:50], pooling="max")
    with open_cache(cache) as opened:
        rows = opened.backbone("mobilenet_v2-1.0-96-random-synthetic-avg-crop-fp32").load()
    flip_bytes(segment_of(cache, "avg"), rows[3].tobytes())  # block 0
    flip_bytes(segment_of(cache, "avg"), rows[20500].tobytes())  # block 2: found after block 0 failed
    with h5py.File(segment_of(cache, "avg"), "a") as handle:
        handle["embeddings"][9000] = np.nan  # block 1: a value problem among checksum problems
    with h5py.File(cache) as handle:
        at = handle["backbones"][maximum]["index/sha"].id.get_chunk_info(0).byte_offset + 8
    data = bytearray(cache.read_bytes())
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    cache.write_bytes(bytes(data))
    problems = verify(cache)
    assert any("embeddings rows 0-8191, 16384-20999 fail their checksum" in p and "-avg-" in p for p in problems), (
        problems
    )
    assert any("1 embedding row(s) hold NaN" in p for p in problems), problems
    assert any("table index/sha of the cache file cannot be read" in p and "-max-" in p for p in problems), problems
    result = runner.invoke(app, ["verify", str(cache)])
    assert result.exit_code == 1 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert result.output.count(f"{cache}: backbone") == len(problems) >= 3
