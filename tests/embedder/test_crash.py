"""Crash safety, the hard way: kill -9 a real extraction process at random moments, then resume."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset

from embedder import open_cache

pytestmark = pytest.mark.slow


def command(source: Path, out: Path, program: str = "-m embedder.cli") -> list[str]:
    return [
        sys.executable,
        *program.split(),
        "-v",
        "extract",
        str(source),
        "--out",
        str(out),
        "--size",
        "96",
        "--weights",
        "none",
        "--batch-size",
        "8",
        "--no-progress",
    ]


def read_rows(out: Path) -> tuple[list[str], list[str], list[int], np.ndarray]:
    with open_cache(out) as cache:
        rows = cache.backbone()
        return list(rows.paths), list(rows.sha256), list(rows.labels), rows.load()


def start_extraction(source: Path, out: Path) -> subprocess.Popen:
    """Start an extraction; return once it has planned its work (start-up and journal replay done)."""
    process = subprocess.Popen(command(source, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    planned = threading.Event()

    def watch() -> None:
        for line in process.stderr:
            if "images to read" in line:
                planned.set()
        planned.set()

    threading.Thread(target=watch, daemon=True).start()
    planned.wait(timeout=120)
    return process


def test_kill_minus_nine_at_random_moments_loses_nothing_finished(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    make_dataset(source, per_class=100)  # 300 images: 38 batches of 8
    clean = tmp_path / "clean.h5"
    subprocess.run(command(source, tmp_path / "warm.h5"), check=True, capture_output=True)  # export ONNX once
    subprocess.run(command(source, clean), check=True, capture_output=True)
    expected = read_rows(clean)

    rng = random.Random(int(os.environ.get("CRASH_TEST_SEED", "0")))
    out = tmp_path / "crashed.h5"
    journal = out.with_name(out.name + ".journal")
    kills = 0
    for _ in range(6):
        # a random moment: after 0-5 batches of this run are journaled, plus up to 20 ms (mid-batch, mid-write)
        batches = rng.randint(0, 5)
        process = start_extraction(source, out)  # returns after start-up and the replay of the last journal
        while process.poll() is None and len(list(journal.glob("*/*.npz"))) < batches:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.02))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        if out.exists():  # after any kill the file opens and holds only finished, unique, correct rows
            paths, shas, labels, embeddings = read_rows(out)
            assert len(paths) == len(set(paths))
            index = {path: i for i, path in enumerate(expected[0])}
            for path, sha, label, embedding in zip(paths, shas, labels, embeddings):
                i = index[path]
                assert (sha, label) == (expected[1][i], expected[2][i])
                np.testing.assert_allclose(embedding, expected[3][i], atol=1e-5)
    assert kills == 6, "an extraction finished before its kill"
    assert 0 < len(read_rows(out)[0]) < len(expected[0]), "the kills should have left partial progress"
    subprocess.run(command(source, out), check=True, capture_output=True)
    paths, shas, labels, embeddings = read_rows(out)
    assert (paths, shas, labels) == expected[:3]  # row by row, same order
    np.testing.assert_allclose(embeddings, expected[3], atol=1e-5)
    assert not journal.exists()


def prefill(out: Path, rows: int) -> None:
    """`rows` earlier rows under the backbone key of `command` (random embeddings): a large cache to grow."""
    from embedder import Backbone
    from embedder.cache import Batch, CacheWriter, Row

    backbone = Backbone(size=96, weights=None)
    rng = np.random.default_rng(0)
    with CacheWriter(out) as writer:
        writer.begin(backbone.key, backbone.provenance())
        for start in range(0, rows, 4096):
            count = min(4096, rows - start)
            writer.write_batch(
                backbone.key,
                Batch(
                    embeddings=rng.random((count, backbone.dim), dtype=np.float32),
                    rows=[
                        Row(f"earlier/{i:06d}.jpg", rng.bytes(32).hex(), "earlier", 1, 1)
                        for i in range(start, start + count)
                    ],
                ),
            )


@pytest.mark.parametrize("earlier", [0, 30_000], ids=["small cache", "large cache"])
def test_kill_minus_nine_during_the_merge_keeps_the_previous_file(tmp_path: Path, earlier: int) -> None:
    from embedder.cache import verify

    source = tmp_path / "photos"
    make_dataset(source, per_class=20)
    out = tmp_path / "cache.h5"
    if earlier:
        prefill(out, earlier)
    subprocess.run(command(source, out), check=True, capture_output=True)
    before = read_rows(out)
    make_dataset(source, per_class=40, start=20)  # 120 more images: 15 batches to merge
    slow = f"{Path(__file__).with_name('slow_merge.py')}"
    rng = random.Random(1)
    for _ in range(3):
        process = subprocess.Popen(command(source, out, slow), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not [p for p in tmp_path.rglob("*.tmp-*") if "cache.h5" in str(p)] and process.poll() is None:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.25))  # the slowed merge (a segment, then the cache file) takes about 0.3 s
        assert process.poll() is None, "the merge finished before the kill"
        process.send_signal(signal.SIGKILL)
        process.wait()
        paths, shas, labels, embeddings = read_rows(out)
        assert (paths, shas, labels) == before[:3]  # the previous file, untouched
        np.testing.assert_array_equal(embeddings, before[3])
        assert verify(out) == []
    subprocess.run(command(source, out), check=True, capture_output=True)
    clean = tmp_path / "clean.h5"
    subprocess.run(command(source, clean), check=True, capture_output=True)
    expected, got = read_rows(clean), read_rows(out)
    assert len(got[0]) == earlier + 180 and got[0][:earlier] == before[0][:earlier]
    got = tuple(column[earlier:] for column in got)
    assert set(got[0]) == set(expected[0]) and len(got[0]) == len(expected[0]) == 180
    index = {path: i for i, path in enumerate(expected[0])}
    for path, sha, embedding in zip(got[0], got[1], got[3]):
        assert sha == expected[1][index[path]]
        np.testing.assert_allclose(embedding, expected[3][index[path]], rtol=1e-4, atol=1e-5)  # batch-size float noise
    assert verify(out) == []
    assert not [p for p in tmp_path.rglob("*.tmp-*") if "cache.h5" in str(p)]
