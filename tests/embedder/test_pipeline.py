"""The decode-and-encode pipeline: input order, failures and skipped files, overlap of the workers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from embedder.inputs import LoadedFile, load_and_encode, load_file


def mean_colour(pixels: np.ndarray) -> np.ndarray:
    """A real, cheap 'encoder': the mean colour of each image."""
    return pixels.reshape(len(pixels), -1, 3).mean(axis=1)


def test_every_item_comes_back_in_order_with_its_own_output(tmp_path: Path) -> None:
    colours = [(10 * k, 255 - 10 * k, 100) for k in range(13)]
    paths = []
    for k, colour in enumerate(colours):
        paths.append(tmp_path / f"{k:02d}.png")
        Image.new("RGB", (40, 30), colour).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths.insert(5, tmp_path / "broken.png")
    paths.insert(9, tmp_path / "missing.png")
    calls: list[int] = []

    def encode(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return mean_colour(pixels)

    rows = list(load_and_encode(paths, lambda path: load_file(path, size=16), encode, batch_size=4, workers=2))
    assert [item for item, _, _ in rows] == paths
    outputs = [output for path, loaded, output in rows if loaded.error is None]
    assert np.allclose(outputs, colours, atol=1)
    errors = {path.name: loaded.error for path, loaded, output in rows if output is None}
    assert set(errors) == {"broken.png", "missing.png"} and all(errors.values())
    assert sum(calls) == 13 and max(calls) <= 4  # only decoded images reach the encoder, in batches
    assert all(loaded.pixels is None for _, loaded, _ in rows)  # pixels are dropped once encoded


def test_skipped_files_are_hashed_but_neither_decoded_nor_encoded(tmp_path: Path) -> None:
    paths = []
    for k in range(6):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (20, 20), (40 * k, 0, 0)).save(paths[-1])
    skip = {load_file(paths[2], size=8).sha256}
    rows = list(
        load_and_encode(
            paths, lambda path: load_file(path, size=8, skip=skip.__contains__), mean_colour, batch_size=2, workers=2
        )
    )
    assert [output is None for _, _, output in rows] == [False, False, True, False, False, False]
    assert rows[2][1].sha256 in skip and rows[2][1].error is None


def test_workers_decode_while_another_batch_is_encoded() -> None:
    running, most = [0], [0]
    lock = threading.Lock()

    def load(k: int) -> LoadedFile:
        return LoadedFile(Path(str(k)), sha256=str(k), pixels=np.full((2, 2, 3), k, np.uint8))

    def encode(pixels: np.ndarray) -> np.ndarray:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return mean_colour(pixels)

    rows = list(load_and_encode(list(range(12)), load, encode, batch_size=3, workers=2))
    assert [int(output[0]) for _, _, output in rows] == list(range(12))
    assert most[0] == 2  # two batches in the runtime at once: neither worker waits for the other
