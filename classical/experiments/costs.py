"""What the backbone costs: milliseconds per image from pixels, measured once per sweep.

A row fitted on cached embeddings predicts a new image by running the backbone and then its head,
so its prediction cost from pixels is `embedding ms + head ms`; its training needed the
embeddings of its training images, computed once for all the models of the sweep. The backbone
is measured with the runtime the cache's embeddings come from (fp32: `auto`, the same choice
extraction makes; int8/bf16: the runtime and calibration named in the provenance), on a batch
of real test images decoded beforehand (decoding is not timed: every row, fine-tuned networks
included, is timed from decoded pixels), or on synthetic uint8 images of the input size when
the source files are not reachable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classical.data.rows import LabeledEmbeddings
from classical.report import latency_ms

logger = logging.getLogger(__name__)
BATCH = 32  # images per timed call: the batch the heads and the fine-tuned networks are timed on
MIN_SECONDS = 1.0


def not_measured(reason: str) -> dict[str, Any]:
    return {
        "ms_per_image": None,
        "runtime": None,
        "images": 0,
        "pixels": None,
        "seconds": None,
        "method": f"not measured: {reason}",
    }


def _encoder(provenance: dict[str, Any], runtime: str) -> Any:
    from embedder import Backbone, load_encoder

    backbone = Backbone.from_provenance(provenance)
    precision = provenance.get("precision", "fp32")
    if precision == "fp32":
        return load_encoder(backbone, runtime)
    calibration = [Path(f) for f in json.loads(provenance.get("calibration_files", "[]") or "[]")]
    return load_encoder(
        backbone,
        provenance.get("runtime", runtime),
        precision=precision,
        calibration=calibration,
        calibration_digest=provenance.get("calibration_digest"),
    )


def _pixels(provenance: dict[str, Any], paths: Sequence[str], count: int) -> tuple[np.ndarray, str, float | None]:
    """`count` decoded test images (repeated if fewer), or synthetic ones; how they were made; decode ms/image."""
    from embedder import decode_image

    size, resize = int(provenance["size"]), provenance.get("resize", "crop")
    source = Path(str(provenance.get("source", "")))
    decoded: list[np.ndarray] = []
    if source.is_dir() and paths:
        with contextlib.suppress(Exception):  # warm-up: the first decode may load the compiled resampler
            decode_image((source / paths[0]).read_bytes(), size=size, resize=resize)
        started = time.perf_counter()
        for path in paths[:count]:
            try:
                decoded.append(decode_image((source / path).read_bytes(), size=size, resize=resize))
            except Exception as exc:
                logger.info("cannot decode %s for the backbone timing (%s): synthetic images instead", path, exc)
                decoded = []
                break
    if decoded:
        decode_ms = 1000 * (time.perf_counter() - started) / len(decoded)
        batch = np.stack([decoded[i % len(decoded)] for i in range(count)])
        return batch, f"{len(decoded)} test images of {source}, decoded beforehand", decode_ms
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
        f"synthetic uint8 images {size}x{size} (source files not reachable)",
        None,
    )


def measure_embedding(
    data: LabeledEmbeddings,
    test_paths: Sequence[str],
    *,
    n_trainval: int,
    runtime: str = "auto",
    batch: int = BATCH,
    min_seconds: float = MIN_SECONDS,
) -> dict[str, Any]:
    """The report's `embedding` block: the backbone's ms per image from pixels, and what all cached rows cost.

    Never fails a sweep: when the backbone cannot be loaded (weights file moved, runtime missing)
    the block says why and the costs from pixels stay null.
    """
    started = time.perf_counter()
    try:
        encoder = _encoder(data.provenance, runtime)
        pixels, how, decode_ms = _pixels(data.provenance, list(test_paths), batch)
        encoder(pixels)  # warm-up on the full batch
        ms = latency_ms(encoder, pixels, min_seconds=min_seconds)
    except Exception as exc:
        logger.warning("cannot measure the backbone's cost from pixels: %s", exc)
        return not_measured(f"{type(exc).__name__}: {exc}")
    rows = len(data.y)
    block = {
        "ms_per_image": ms,
        "runtime": f"{encoder.runtime} {encoder.precision}",
        "images": int(batch),
        "pixels": how,
        "decode_ms_per_image": decode_ms,
        "rows": rows,
        "seconds": rows * ms / 1000,
        "train_images": int(n_trainval),
        "train_seconds": n_trainval * ms / 1000,
        "measured_seconds": time.perf_counter() - started,
        "method": (
            f"backbone alone ({encoder.runtime} {encoder.precision}, the cache's runtime) on batches of {batch} "
            f"decoded uint8 images, repeated for at least {min_seconds:g} s after a warm-up; decoding not "
            "included. seconds = cached rows x ms/image; train_seconds = train+val images x ms/image"
        ),
    }
    if getattr(encoder, "key", data.backbone_key) != data.backbone_key:
        block["note"] = f"timed backbone {encoder.key} (same architecture and size as {data.backbone_key})"
    return block
