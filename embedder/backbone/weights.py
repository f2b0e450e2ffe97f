"""Where MobileNetV2 weights come from ("imagenet", a file, or seeded random) and how they are loaded.

Loading is checked: every convolution kernel must change when the file is loaded, so a file
made for another alpha or architecture is an error instead of a silently half-random network.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedder.errors import WeightsError

if TYPE_CHECKING:
    import keras

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Channel rounding used by MobileNetV2 (same rule as Keras' `_make_divisible`)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def keras_weights_filename(alpha: float, size: int, include_top: bool) -> str:
    """The file name Keras downloads for `MobileNetV2(weights="imagenet")`."""
    suffix = "" if include_top else "_no_top"
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{size}{suffix}.h5"


def keras_cache_candidates(filename: str) -> list[Path]:
    """Where Keras' `get_file` would have stored a download (KERAS_HOME, ~/.keras, /tmp/.keras)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return [Path(home) / "models" / filename, Path("/tmp/.keras/models") / filename]


def resolve_weights(weights: str | None, *, alpha: float, size: int, include_top: bool = False) -> Path | None:
    """Return the weights file to load (None: seeded random weights, also for "none"), downloading the
    ImageNet file the way Keras does if needed."""
    if weights is None or str(weights).lower() == "none":
        return None
    if weights == "imagenet":
        filename = keras_weights_filename(alpha, size, include_top)
        for candidate in keras_cache_candidates(filename):
            if candidate.is_file():
                return candidate
        import keras

        try:
            return Path(keras.utils.get_file(filename, KERAS_WEIGHTS_URL + filename, cache_subdir="models"))
        except Exception as exc:  # network errors come in many types
            raise WeightsError(
                f"could not download the ImageNet weights {filename} ({exc}). Without internet, set "
                f"KERAS_HOME to a folder holding models/{filename}, or pass --weights PATH to a "
                "MobileNetV2 weights file."
            ) from exc
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsError(
            f"weights file '{path}' does not exist; pass 'imagenet' (Keras' ImageNet weights), "
            "the path of a MobileNetV2 weights file (.h5 or .weights.h5), or 'none' for random weights."
        )
    if not path.is_file():
        raise WeightsError(f"weights path '{path}' is not a file; pass the path of a .h5 or .weights.h5 file.")
    return path


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(model: keras.Model) -> str:
    """sha256 over every weight array of a model, in order: the identity of in-memory weights."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def seed_weights(model: keras.Model, seed: int = 0) -> None:
    """Give a model deterministic random weights (He-normal kernels, identity BatchNorm).

    `weights=None` is for plumbing tests; seeding makes its embeddings, and so its cache key,
    reproducible across runs without touching any global random state.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        name = variable.path.rsplit("/", 1)[-1]
        if name.endswith("kernel"):
            fan_in = int(np.prod(shape[:2] if "depthwise" in variable.path else shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), size=shape)
        elif name in ("gamma", "moving_variance"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        variable.assign(value.astype(np.float32))


def _first_conv_filters(path: Path) -> int | None:
    """Output channels of the 3x3x3 stem convolution stored in an HDF5 weights file, if found."""
    import h5py

    found: list[int] = []

    def visit(_name: str, node: object) -> None:
        shape = getattr(node, "shape", None)
        if shape is not None and len(shape) == 4 and tuple(shape[:3]) == (3, 3, 3) and not found:
            found.append(int(shape[3]))

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
    except OSError:
        return None
    return found[0] if found else None


def _alpha_hint(path: Path, alpha: float) -> str:
    filters = _first_conv_filters(path)
    if filters is None:
        return "it holds no MobileNetV2 stem convolution"
    matching = [a for a in ALPHAS if make_divisible(32 * a) == filters]
    expected = make_divisible(32 * alpha)
    if filters == expected:
        return "its layers do not match MobileNetV2's"
    return (
        f"its first convolution has {filters} filters, alpha={alpha} needs {expected}: it was made for "
        f"alpha {' or '.join(str(a) for a in matching) or 'unknown'}"
    )


def load_weights_file(model: keras.Model, path: Path, *, alpha: float) -> None:
    """Load a weights file into a MobileNetV2, refusing files that do not fit it completely."""
    kernels = [v for v in model.weights if v.path.endswith("kernel")]
    before = [np.array(v.numpy(), copy=True) for v in kernels]
    try:
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file '{path}': {exc.strerror}.") from exc
    if magic != b"\x89HDF\r\n\x1a\n":
        raise WeightsError(
            f"weights file '{path}' is not an HDF5 weights file ({path.stat().st_size} bytes); pass a "
            "MobileNetV2 .h5 or .weights.h5 file."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(str(path))
    except Exception as exc:  # Keras raises ValueError, KeyError or OSError on mismatch
        raise WeightsError(
            f"weights file '{path}' does not fit MobileNetV2 alpha={alpha}: {_alpha_hint(path, alpha)}. "
            "Pass --alpha matching the file, or another weights file."
        ) from exc
    unchanged = [v.path for v, old in zip(kernels, before) if np.array_equal(old, v.numpy())]
    if unchanged:
        raise WeightsError(
            f"weights file '{path}' left {len(unchanged)} of {len(kernels)} layers unloaded "
            f"(e.g. {unchanged[0]}): {_alpha_hint(path, alpha)}. Pass a MobileNetV2 weights file "
            "made for this alpha."
        )
