"""Labels back into a cache: only labels change, all or nothing, crash-safe."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, write_cache

from embedder import CacheError, open_cache, set_labels
from embedder.cache import CacheWriter, verify


def snapshot(path: Path) -> dict:
    with open_cache(path) as cache:
        rows = cache.backbone()
        return {
            "paths": list(rows.paths),
            "sha256": list(rows.sha256),
            "labels": rows.labels.tolist(),
            "names": rows.class_names,
            "embeddings": rows.load(),
        }


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    X, labels = blobs(per_class=6, classes=("ant", "bee"), dim=8)
    labels = [label if i % 3 else "" for i, label in enumerate(labels)]  # every third row unlabelled
    path = tmp_path / "c.h5"
    write_cache(path, X, labels, paths=[f"p/{i:03d}.jpg" for i in range(len(labels))])
    return path


def test_labels_change_and_nothing_else(cache: Path) -> None:
    before = snapshot(cache)
    update = set_labels(cache, {"p/000.jpg": "bee", "p/003.jpg": "ant", "p/001.jpg": "ant", "p/002.jpg": ""})
    after = snapshot(cache)
    assert update.changed == ["p/000.jpg", "p/002.jpg", "p/003.jpg"] and update.unchanged == ["p/001.jpg"]
    assert after["paths"] == before["paths"] and after["sha256"] == before["sha256"]
    assert after["embeddings"].tobytes() == before["embeddings"].tobytes()  # bit-identical
    expected = list(before["labels"])
    expected[0], expected[2], expected[3] = 1, -1, 0
    assert after["labels"] == expected and after["names"] == ["ant", "bee"]
    assert verify(cache) == []


def test_a_relabel_writes_no_segment(cache: Path) -> None:
    """Labels are the small file's own: relabelling copies no embedding, whatever the size of the change."""
    folder = cache.with_name(cache.name + ".segments")
    before = sorted(p.name for p in folder.rglob("*.h5"))
    set_labels(cache, {f"p/{i:03d}.jpg": "bee" for i in range(12)})
    assert sorted(p.name for p in folder.rglob("*.h5")) == before
    assert snapshot(cache)["labels"][:12] == [1] * 12


def test_new_classes_are_appended_only_when_asked(cache: Path) -> None:
    with pytest.raises(CacheError, match=r"no label.*'cat'"):
        set_labels(cache, {"p/000.jpg": "cat"})
    update = set_labels(cache, {"p/000.jpg": "cat"}, new_classes=True)
    assert update.new_classes == ["cat"]
    after = snapshot(cache)
    assert after["names"] == ["ant", "bee", "cat"] and after["labels"][0] == 2


def test_unknown_paths_and_classes_in_one_error_and_nothing_applied(cache: Path) -> None:
    before = snapshot(cache)
    with pytest.raises(CacheError) as error:
        set_labels(cache, {"p/000.jpg": "bee", "nope.jpg": "ant", "gone.jpg": "ant", "p/003.jpg": "wasp"})
    message = str(error.value)
    assert "no label" in message and "'gone.jpg'" in message and "'nope.jpg'" in message and "'wasp'" in message
    after = snapshot(cache)
    assert after["labels"] == before["labels"] and after["names"] == before["names"]


def test_a_later_write_keeps_the_labels(cache: Path) -> None:
    set_labels(cache, {"p/000.jpg": "bee"})
    set_labels(cache, {"p/003.jpg": "bee"})
    labels = snapshot(cache)["labels"]
    assert labels[0] == labels[3] == 1


SLOW_LABELS = """
import sys, time
import embedder.cache.merge as merge
from embedder import set_labels
write_group = merge.write_group
def slow(*args):
    print("merging", flush=True)
    time.sleep(5)
    write_group(*args)
merge.write_group = slow
set_labels(sys.argv[1], {f"p/{i:03d}.jpg": "bee" for i in range(0, 12, 3)})
"""


def test_killed_during_the_write_leaves_the_old_labels_and_the_next_writer_applies_all(cache: Path) -> None:
    before = snapshot(cache)
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SLOW_LABELS), str(cache)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "merging"  # the batch is journaled, the merge under way
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    after = snapshot(cache)
    assert after["labels"] == before["labels"] and after["embeddings"].tobytes() == before["embeddings"].tobytes()
    assert verify(cache) == []
    with CacheWriter(cache):  # the next writer replays the journaled batch: every change, none twice
        pass
    replayed = snapshot(cache)
    assert [replayed["labels"][i] for i in range(0, 12, 3)] == [1, 1, 1, 1]
    assert replayed["paths"] == before["paths"] and replayed["embeddings"].tobytes() == before["embeddings"].tobytes()
    assert verify(cache) == []
    assert not np.isnan(replayed["embeddings"]).any()
