"""Shared fixtures: generated photos, an isolated runtime cache, and the real data in ../shared.

Real-data tests use `../shared` (or $BOTTLENECK_LAB_SHARED). They are skipped where it is
absent, except in CI (CI=true), where its absence is an error.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))
NO_TOP_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
TOP_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet.weights.h5"
IMAGENET_LABELS = SHARED / "weights" / "imagenet_labels.txt"
FLOWERS = SHARED / "data" / "flowers"
IMAGENET_PHOTOS = SHARED / "imagenet-photos"

COLORS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 50, 200)}


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported models go to a per-session folder, shared by all tests of the session."""
    folder = tmp_path_factory.mktemp("runtime-cache")
    os.environ["EMBEDDER_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def shared() -> Path:
    """The real weights and photos; skip (or fail in CI) when they are not here."""
    if not NO_TOP_WEIGHTS.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real data expected in CI at {SHARED} (set BOTTLENECK_LAB_SHARED)")
        pytest.skip(f"real data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def keras_home(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of ../shared/weights/keras_home, so `weights="imagenet"` loads offline.

    Where the shared copy stores a link as a small text file naming its target, the copy
    gets a real symlink instead.
    """
    home = tmp_path_factory.mktemp("keras_home")
    (home / "models").mkdir()
    source = shared / "weights" / "keras_home" / "models"
    for entry in sorted(source.iterdir()):
        target = home / "models" / entry.name
        if entry.stat().st_size < 1024 and (source / entry.read_text().strip()).is_file():
            target.symlink_to(source / entry.read_text().strip())
        else:
            target.symlink_to(entry.resolve())
    return home


def photo(color: tuple[int, int, int], *, seed: int, size: tuple[int, int] = (80, 64)) -> Image.Image:
    """A synthetic 'photo': a coloured disc on a noisy background, distinct per seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.3 * min(width, height)) ** 2
    pixels = rng.integers(0, 90, (height, width, 3)).astype(np.float64)
    pixels[disc] = np.array(color) + rng.normal(0, 12, (int(disc.sum()), 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(
    root: Path, per_class: int = 4, classes: tuple[str, ...] = ("red", "green", "blue"), start: int = 0
) -> list[Path]:
    """Write per_class JPEGs into one folder per class; returns the files written."""
    written = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            path = root / name / f"{name}_{i:03d}.jpg"
            photo(COLORS[name], seed=1000 * c + i).save(path, quality=90)
            written.append(path)
    return written


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three classes of four small generated JPEGs each."""
    root = tmp_path / "photos"
    make_dataset(root)
    return root


def copy_files(paths: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, folder / path.name)


def write_cache(
    path: Path, X: np.ndarray, labels: list[str], *, pooling: str = "avg", paths: list[str] | None = None
) -> str:
    """Write synthetic embeddings into a real cache file (through the cache's writer); returns the key.

    The provenance is written out by hand, so that tests of what is built on a cache need no Keras.
    """
    from embedder.cache import Batch, CacheWriter, Row

    key = f"mobilenet_v2-1.0-96-random-synthetic-{pooling}-crop-fp32"
    provenance = {
        "backbone_key": key,
        "architecture": "mobilenet_v2",
        "alpha": 1.0,
        "size": 96,
        "weights": "none",
        "weights_file": "",
        "weights_sha256": "0" * 64,
        "pooling": pooling,
        "resize": "crop",
        "precision": "fp32",
        "dim": int(X.shape[1]),
        "source": "synthetic",
    }
    paths = paths or [f"{label}/{i:04d}.jpg" for i, label in enumerate(labels)]
    rng = np.random.default_rng(0)
    with CacheWriter(path) as writer:
        writer.begin(key, provenance)
        rows = [Row(p, rng.bytes(32).hex(), label, 1, 1) for p, label in zip(paths, labels)]
        writer.write_batch(key, Batch(embeddings=np.asarray(X, np.float32), rows=rows))
    return key


def blobs(
    per_class: int = 30,
    classes: tuple[str, ...] = ("ant", "bee", "cat"),
    dim: int = 32,
    seed: int = 0,
    spread: float = 1.0,
) -> tuple[np.ndarray, list[str]]:
    """Separable Gaussian blobs, one per class, as stand-in embeddings (non-negative like pooled ReLU6)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 4, (len(classes), dim))
    X = np.concatenate([centres[c] + spread * rng.normal(0, 0.5, (per_class, dim)) for c in range(len(classes))])
    labels = [name for name in classes for _ in range(per_class)]
    return np.abs(X).astype(np.float32), labels
