"""Folder (or list) of images -> embeddings in the HDF5 cache, computing only what is not cached yet."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embedder.backbone import Backbone
from embedder.cache import Batch, CacheIndex, CacheWriter, Failure, open_cache
from embedder.extraction.rows import ExtractSummary, RetryPolicy, Sorter, plan_work
from embedder.inputs import (
    DEFAULT_MAX_PIXELS,
    LoadedFile,
    SourceItem,
    default_workers,
    list_source,
    load_and_encode,
    load_file,
)
from embedder.runtimes import Encoder, Handover, load_encoder, reduced_key, start_encoder

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 128  # int8 calibrates on up to this many images sampled evenly from the source


def extract(
    source: str | os.PathLike,
    out: str | os.PathLike,
    backbone: Backbone | None = None,
    *,
    runtime: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    labels: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    rehash: bool = False,
    retry_failed: bool = False,
    precision: str = "fp32",
    calibration: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ExtractSummary:
    """Embed every image of `source` into the cache `out`, skipping what is already cached.

    A file whose path, size and modification time match its cached row is not read again
    (`rehash=True` hashes every file anyway); a file whose bytes are already cached under
    another path reuses that embedding. Images that cannot be decoded are recorded with
    their reason and the limits they depend on, and the run goes on; a later run re-attempts a
    recorded failure when it may now succeed (a larger `max_pixels` than it was refused under),
    or every recorded failure with `retry_failed=True`.

    `precision` "bf16" or "int8" trades exactness for speed; such embeddings get their own cache
    key. int8 is calibrated on `calibration` (a folder or list of images), by default on the
    calibration images of this cache's earlier int8 rows, else on up to 128 images of `source`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size}")
    backbone = backbone or Backbone()
    started = time.perf_counter()
    listed = list_source(source, labels=labels)
    with CacheWriter(out) as cache:
        if precision == "fp32":
            key, extra = backbone.key, {}
            load: Callable[[], Encoder] = functools.partial(start_encoder, backbone, runtime)
        else:  # the key depends on the runtime (and calibration) chosen: load it first
            reduced, files = _reduced_encoder(Path(out), backbone, listed.items, runtime, precision, calibration)
            key, load = reduced.key, lambda: reduced
            extra = {
                "backbone_key": key,
                "precision": precision,
                "runtime": reduced.runtime,
                "calibration_digest": reduced.calibration,
                "calibration_files": json.dumps(files),
            }
        index = cache.index(key, [item.rel for item in listed.items])
        plan = plan_work(
            listed.items, index, rehash=rehash, retry=RetryPolicy({"max_pixels": max_pixels}, retry_failed)
        )
        summary = ExtractSummary(
            out=Path(out),
            backbone_key=key,
            runtime="none",
            total=len(listed.items),
            cached=plan.cached,
            failed=plan.failed,
            retried=plan.retried,
            skipped=listed.skipped,
        )
        logger.info(
            "%s: %d images to read (%d recorded failures re-attempted), %d cached",
            out,
            len(plan.todo),
            len(plan.retried),
            summary.cached,
        )
        if plan.todo:
            provenance = {**backbone.provenance(), **extra, "source": str(listed.root.resolve())}
            cache.begin(key, provenance)
            encoder = _in_background(load)
            _embed_into(
                cache,
                key,
                plan.todo,
                encoder,
                backbone,
                index,
                plan.failed_hashes,
                summary,
                batch_size=batch_size,
                workers=workers or default_workers(),
                max_pixels=max_pixels,
                progress=progress,
            )
    if plan.todo:
        _finish(encoder, summary)
    summary.seconds = time.perf_counter() - started
    logger.info("%s", summary)
    return summary


def _in_background(load: Callable[[], Encoder]) -> Callable[[], Encoder]:
    """Start `load()` now in its own thread, so the runtime loads while the first images decode.

    The returned getter waits for it (and re-raises its error); a fully cached run never calls this.
    """
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder-load")
    loaded = loader.submit(load)
    loader.shutdown(wait=False)
    return loaded.result


def _finish(encoder: Callable[[], Encoder], summary: ExtractSummary) -> None:
    """After a first run's last batch: let a handover finish its choice, and name the runtimes it used."""
    loaded = encoder()
    if isinstance(loaded, Handover):
        loaded.finish()
        if summary.embedded:
            summary.runtime = loaded.describe()


def _reduced_encoder(
    out: Path,
    backbone: Backbone,
    items: list[SourceItem],
    runtime: str,
    precision: str,
    calibration: str | os.PathLike | None,
) -> tuple[Encoder, list[str]]:
    """The reduced-precision encoder and its int8 calibration files, chosen as `extract` documents."""
    files: list[str] = []
    digest = None
    if precision == "int8":
        if calibration is not None:
            files = [str(item.path) for item in list_source(calibration, labels="none").items]
        else:
            files, digest = _earlier_calibration(out, backbone)
            if not files:
                files = [
                    str(item.path) for item in items[:: max(1, len(items) // CALIBRATION_IMAGES)][:CALIBRATION_IMAGES]
                ]
    encoder = load_encoder(
        backbone, runtime, precision=precision, calibration=[Path(f) for f in files], calibration_digest=digest
    )
    return encoder, files


def _earlier_calibration(out: Path, backbone: Backbone) -> tuple[list[str], str | None]:
    """Calibration files and digest of int8 rows of this backbone already in the cache, if any."""
    if not out.is_file():
        return [], None
    prefix = reduced_key(backbone, "int8", runtime="")  # "<fp32 key without -fp32>-int8-"
    with open_cache(out) as cache:
        for key in cache.keys:
            if key.startswith(prefix):
                provenance = cache[key].provenance
                return json.loads(provenance.get("calibration_files", "[]")), provenance.get("calibration_digest")
    return [], None


def _embed_into(
    cache: CacheWriter,
    key: str,
    todo: list[SourceItem],
    encoder: Callable[[], Encoder],
    backbone: Backbone,
    index: CacheIndex,
    failed: dict[str, Failure],
    summary: ExtractSummary,
    *,
    batch_size: int,
    workers: int,
    max_pixels: int,
    progress: bool | None,
) -> None:
    """Stream `todo` through the decode-and-encode workers, journaling one batch at a time.

    `failed` maps the content hashes that stay failed to their failure (see `Plan.failed_hashes`).
    """
    sorter = Sorter(index.hashes, failed)

    def load(item: SourceItem) -> LoadedFile:
        return load_file(
            Path(item.path), size=backbone.size, resize=backbone.resize, max_pixels=max_pixels, skip=sorter.skip
        )

    buffer = np.empty((batch_size, backbone.dim), np.float32)
    batch = Batch(embeddings=buffer)
    bar = tqdm(total=len(todo), unit="img", desc="embedding", disable=None if progress is None else not progress)
    try:
        for item, loaded, embedding in load_and_encode(
            todo, load, lambda pixels: encoder()(pixels), batch_size=batch_size, workers=workers
        ):
            sorter.add(batch, item.rel, item.label, loaded, embedding)
            if len(batch.rows) == batch_size:
                _flush(cache, key, batch, encoder, index, summary)
                batch = Batch(embeddings=buffer)
            bar.update(1)
        _flush(cache, key, batch, encoder, index, summary)
    finally:
        bar.close()


def _flush(
    cache: CacheWriter,
    key: str,
    batch: Batch,
    encoder: Callable[[], Encoder],
    index: CacheIndex,
    summary: ExtractSummary,
) -> None:
    """Make the batch durable: its embedded rows, aliases and failures go to the journal."""
    if not batch:
        return
    if batch.rows:
        summary.runtime = (
            encoder().runtime if encoder().precision == "fp32" else f"{encoder().runtime} {encoder().precision}"
        )
    batch = Batch(batch.embeddings[: len(batch.rows)], batch.rows, batch.aliases, batch.failures)
    cache.write_batch(key, batch)
    summary.count(batch, index)
