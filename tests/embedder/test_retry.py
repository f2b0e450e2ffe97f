"""Failures that can be retried: recorded with the limits they depend on, re-attempted when those rise."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import photo
from PIL import Image

from embedder import Backbone, extract, info, open_cache
from embedder.cache import Batch, CacheWriter, Failure, Row
from embedder.extraction.shards import read_shard, write_shard

TINY = Backbone(size=96, weights=None)
SMALL, LARGER = 1_000_000, 5_000_000


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A photo, a 4 Mpx image and a copy of it (same bytes), a 9 Mpx image, and a truncated JPEG."""
    root = tmp_path / "mixed"
    root.mkdir()
    photo((200, 10, 10), seed=1).save(root / "good.jpg")
    Image.new("L", (2000, 2000), 128).save(root / "big.png")
    shutil.copy(root / "big.png", root / "big-copy.png")
    Image.new("L", (3000, 3000), 64).save(root / "huge.png")
    noise = root / "noise.jpg"
    Image.effect_noise((200, 200), 50).convert("RGB").save(noise)
    (root / "truncated.jpg").write_bytes(noise.read_bytes()[:3000])
    noise.unlink()
    return root


def cached_paths(out: Path) -> set[str]:
    with open_cache(out) as cache:
        return set(cache.backbone().paths)


def failures_table(out: Path) -> dict[str, tuple[str, dict]]:
    """path -> (reason, limits) as stored, read with plain h5py."""
    with h5py.File(out, "r") as handle:
        table = handle["backbones"][TINY.key]["failures"]
        return {
            path: (reason, json.loads(limits) if limits else {})
            for path, reason, limits in zip(
                table["path"].asstr()[...], table["reason"].asstr()[...], table["limits"].asstr()[...]
            )
        }


def test_refusals_record_their_limit_and_a_larger_limit_retries_them(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    first = extract(folder, out, TINY, max_pixels=SMALL, progress=False)
    assert (first.embedded, first.retried) == (1, {})
    table = failures_table(out)
    assert {path: limits for path, (_, limits) in table.items()} == {
        "big.png": {"max_pixels": SMALL},
        "big-copy.png": {"max_pixels": SMALL},  # same bytes, same refusal
        "huge.png": {"max_pixels": SMALL},
        "truncated.jpg": {},  # no limit would admit a truncated file
    }
    assert "over the limit of 1 Mpx" in table["big.png"][0] and table["big-copy.png"][0] == table["big.png"][0]
    assert {f["path"]: f["limits"] for f in info(out)["backbones"][0]["failures"]}["huge.png"] == {"max_pixels": SMALL}

    before = out.read_bytes()
    for limit in (SMALL, SMALL // 2):  # the same or a stricter limit: nothing is read again, the file is untouched
        again = extract(folder, out, TINY, max_pixels=limit, progress=False)
        assert (again.embedded, again.retried, len(again.failed), again.cached) == (0, {}, 4, 1)
        assert out.read_bytes() == before

    raised = extract(folder, out, TINY, max_pixels=LARGER, progress=False)
    why = f"--max-pixels was raised from {SMALL} to {LARGER}"
    assert raised.retried == {"big.png": why, "big-copy.png": why, "huge.png": why}
    assert (raised.embedded, raised.reused, raised.cached) == (1, 1, 1)  # the copy reuses big.png's embedding
    assert f"retried   3 recorded failure(s) (3 because {why}): 2 now in the cache, 1 failed again" in str(raised)
    assert cached_paths(out) == {"big-copy.png", "big.png", "good.jpg"}
    table = failures_table(out)
    assert set(table) == {"huge.png", "truncated.jpg"}
    assert table["huge.png"][1] == {"max_pixels": LARGER} and "over the limit of 5 Mpx" in table["huge.png"][0]

    settled = extract(folder, out, TINY, max_pixels=LARGER, progress=False)  # refused again under 5 Mpx: settled
    assert (settled.embedded, settled.retried, settled.cached) == (0, {}, 3)


def test_retry_failed_reads_every_recorded_failure_again(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    photo((10, 10, 200), seed=2).save(folder / "later.jpg")
    fixed = (folder / "later.jpg").read_bytes()
    (folder / "later.jpg").write_bytes(b"XXXX" + fixed[4:])  # broken header, same size as the fixed file
    stat = (folder / "later.jpg").stat()
    first = extract(folder, out, TINY, max_pixels=SMALL, progress=False)
    assert "later.jpg" in {f.path for f in first.failed}
    (folder / "later.jpg").write_bytes(fixed)  # repaired in place, size and modification time kept
    os.utime(folder / "later.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert extract(folder, out, TINY, max_pixels=SMALL, progress=False).retried == {}  # looks unchanged: not read

    retried = extract(folder, out, TINY, max_pixels=SMALL, retry_failed=True, progress=False)
    why = "--retry-failed was given"
    assert retried.retried == dict.fromkeys(["big-copy.png", "big.png", "huge.png", "later.jpg", "truncated.jpg"], why)
    assert "later.jpg" in cached_paths(out)
    assert set(failures_table(out)) == {"big-copy.png", "big.png", "huge.png", "truncated.jpg"}
    assert f"retried   5 recorded failure(s) (5 because {why}): 1 now in the cache, 4 failed again" in str(retried)


def test_new_bytes_that_failed_under_a_smaller_limit_are_decoded_not_refused_by_hash(
    folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache.h5"
    extract(folder, out, TINY, max_pixels=SMALL, progress=False)
    (folder / "big.png").unlink()
    (folder / "big-copy.png").rename(folder / "moved.png")  # a new path; its hash failed under 1 Mpx
    summary = extract(folder, out, TINY, max_pixels=LARGER, progress=False)
    assert (summary.embedded, set(summary.retried)) == (1, {"huge.png"})
    assert cached_paths(out) == {"good.jpg", "moved.png"}


def drop_limits(out: Path) -> None:
    """Make `out` look written before the limits column existed."""
    with h5py.File(out, "r+") as handle:
        del handle["backbones"][TINY.key]["failures"]["limits"]


def test_a_cache_without_the_limits_column_still_reads_and_retries_on_request(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    extract(folder, out, TINY, max_pixels=SMALL, progress=False)
    drop_limits(out)
    described = info(out)["backbones"][0]["failures"]
    assert {f["path"] for f in described} == {"big-copy.png", "big.png", "huge.png", "truncated.jpg"}
    assert all(f["limits"] == {} for f in described)
    kept = extract(folder, out, TINY, max_pixels=LARGER, progress=False)  # limits unknown: kept as they are
    assert (kept.retried, len(kept.failed)) == ({}, 4)
    retried = extract(folder, out, TINY, max_pixels=LARGER, retry_failed=True, progress=False)
    assert len(retried.retried) == 4 and set(failures_table(out)) == {"huge.png", "truncated.jpg"}


def test_journal_batches_and_shards_without_the_limits_column_still_read(tmp_path: Path) -> None:
    batch = Batch(
        embeddings=np.ones((1, 3), np.float32),
        rows=[Row("a.jpg", "a" * 64, "", 10, 1)],
        failures=[Failure("b.jpg", "b" * 64, "too big", 20, 2, '{"max_pixels": 5}')],
    )
    write_shard(tmp_path / "shard.h5", batch, {"backbone_key": "k"})
    with h5py.File(tmp_path / "shard.h5", "r+") as handle:
        del handle["failures"]["limits"]
    assert read_shard(tmp_path / "shard.h5", "k").failures == [Failure("b.jpg", "b" * 64, "too big", 20, 2, "")]

    out = tmp_path / "cache.h5"
    with CacheWriter(out) as cache:
        cache.begin("k", {"dim": 3})
        cache.write_batch("k", batch)
        written = next((tmp_path / "cache.h5.journal" / "k").glob("*.npz"))
        with np.load(written) as arrays:
            old = {name: arrays[name] for name in arrays.files if name != "failures.limits"}
        with open(written, "wb") as handle:
            np.savez(handle, **old)
    with open_cache(out) as reader:
        assert reader["k"].failures == [Failure("b.jpg", "b" * 64, "too big", 20, 2, "")]
