"""The first "auto" run on a machine embeds with the Keras reference at once and hands over to the fastest runtime."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_dataset

from embedder import Backbone, decode_image, extract, open_cache
from embedder.extraction import local
from embedder.inputs import load_file
from embedder.runtimes import Handover, KerasEncoder, compare, handover, runtime_cache_dir, within_parity
from embedder.runtimes.exports import onnx_backbone

TINY = Backbone(size=96, weights=None, pooling="max")


@pytest.fixture
def fresh_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty EMBEDDER_CACHE_DIR: no export, no runtime chosen yet."""
    folder = tmp_path / "runtime-cache"
    monkeypatch.setenv("EMBEDDER_CACHE_DIR", str(folder))
    return folder


def choice(backbone: Backbone) -> dict:
    return json.loads((runtime_cache_dir() / "auto" / f"{backbone.key}-fp32.json").read_text())


def test_embeds_with_the_reference_at_once_then_hands_over_to_the_fastest(fresh_machine: Path) -> None:
    handover = Handover(TINY)
    assert handover.runtime == "keras"
    reference = KerasEncoder(TINY)
    rng = np.random.default_rng(7)
    deadline = time.monotonic() + 300
    while handover.runtime == "keras" and time.monotonic() < deadline:  # the export runs in the background meanwhile
        images = rng.integers(0, 256, (8, 96, 96, 3)).astype(np.uint8)
        assert within_parity(compare(reference(images), handover(images)))
    remembered = choice(TINY)
    assert handover.runtime == remembered["runtime"] != "keras"
    assert remembered["measured_on"] == "real batches" and set(remembered["images_per_second"]) == {"onnx", "openvino"}
    assert handover.images["keras"] > 0 and handover.images[handover.runtime] > 0
    images = rng.integers(0, 256, (8, 96, 96, 3)).astype(np.uint8)
    assert within_parity(compare(reference(images), handover(images)))


def wait_for(condition: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_run_that_switches_runtimes_writes_every_row(fresh_machine: Path, tmp_path: Path) -> None:
    source = tmp_path / "photos"
    make_dataset(source, per_class=16)  # 48 images, 12 batches of 4
    # real parts, in a forced order: the reference embeds the first batch before the export starts, and
    # the second half of the photos is read once the fast runtimes are ready
    made: list[Handover] = []
    loaded = itertools.count()

    def start(*args: Any, **kwargs: Any) -> Handover:
        made.append(handover.start_encoder(*args, **kwargs))
        return made[-1]

    def export_once_the_reference_has_embedded(*args: Any, **kwargs: Any) -> Path:
        wait_for(lambda: bool(made) and made[0].images["keras"] > 0)
        return onnx_backbone(*args, **kwargs)

    def load_second_half_once_prepared(*args: Any, **kwargs: Any) -> Any:
        if next(loaded) >= 24:
            wait_for(lambda: made[0].prepared)
        return load_file(*args, **kwargs)

    out = tmp_path / "cache.h5"
    with pytest.MonkeyPatch.context() as forced:
        forced.setattr(local, "start_encoder", start)
        forced.setattr(handover, "onnx_backbone", export_once_the_reference_has_embedded)
        forced.setattr(local, "load_file", load_second_half_once_prepared)
        summary = extract(source, out, TINY, batch_size=4, progress=False)
    assert summary.embedded == 48 and summary.failed == []
    assert isinstance(made[0], Handover) and made[0].images["keras"] >= 4 and made[0].images["keras"] < 48
    assert summary.runtime.startswith(choice(TINY)["runtime"]) and "before the handover: keras" in summary.runtime
    with open_cache(out) as cache:
        rows = cache[TINY.key]
        paths, embeddings = list(rows.paths), rows.load()
    assert sorted(paths) == sorted(str(p.relative_to(source)) for p in source.rglob("*.jpg"))
    pixels = np.stack([decode_image((source / path).read_bytes(), size=96) for path in paths])
    assert within_parity(compare(KerasEncoder(TINY)(pixels), embeddings))  # every row, from whichever runtime
    again = extract(source, tmp_path / "again.h5", TINY, batch_size=4, progress=False)
    assert again.runtime == choice(TINY)["runtime"]  # chosen: later runs go straight to it


def test_a_run_too_short_to_time_the_runtimes_still_chooses(fresh_machine: Path, dataset: Path, tmp_path: Path) -> None:
    summary = extract(dataset, tmp_path / "cache.h5", TINY, progress=False)  # 12 images: one batch
    assert summary.embedded == 12
    assert choice(TINY)["measured_on"] == "test images" and choice(TINY)["runtime"] in ("onnx", "openvino")


@pytest.mark.slow
def test_kill_minus_nine_during_the_export_then_resume(fresh_machine: Path, tmp_path: Path) -> None:
    """Killed while the reference embeds and the export runs: the resumed run completes, every row once."""
    source = tmp_path / "photos"
    make_dataset(source, per_class=100)  # 300 images
    out = tmp_path / "cache.h5"
    command = [
        sys.executable,
        "-m",
        "embedder.cli",
        "-v",
        "extract",
        str(source),
        "--out",
        str(out),
        "--size",
        "96",
        "--weights",
        "none",
        "--pooling",
        "max",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "embedding with the Keras reference" in line:  # the export has just started
            time.sleep(1.0)
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (runtime_cache_dir() / "auto").exists()  # nothing chosen yet
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "0 failed" in resumed.stdout
    with open_cache(out) as cache:
        rows = cache[TINY.key]
        paths, embeddings = list(rows.paths), rows.load()
    assert len(paths) == len(set(paths)) == 300
    pixels = np.stack([decode_image((source / path).read_bytes(), size=96) for path in paths])
    assert within_parity(compare(KerasEncoder(TINY)(pixels), embeddings))
    assert choice(TINY)["runtime"] in ("onnx", "openvino")
