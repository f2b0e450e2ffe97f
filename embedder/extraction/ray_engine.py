"""Extraction on a Ray cluster into the same HDF5 cache contract as local extraction.

The driver lists the inputs and drops what the cache already holds (same path, size and
modification time, as locally), cuts the rest into blocks and hands them to Ray Data:
`map_batches` over a pool of actors, each holding one loaded backbone. An actor embeds a block
into one shard file (HDF5, written under a temporary name and renamed when complete) and skips
images whose content hash the cache already holds. The driver journals finished shards into
the cache (content-hash dedup, provenance, failures, one backbone key) and deletes them.

Faults: Ray restarts a killed actor and retries its block, which rewrites the same shard name,
so nothing is duplicated. A killed driver leaves its finished shards; the next run of the same
command merges them first and embeds only the rest.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from embedder.backbone import Backbone
from embedder.cache import CacheIndex, CacheWriter, Failure
from embedder.errors import EmbedderError
from embedder.extraction.ray_actor import BlockEmbedder
from embedder.extraction.ray_cluster import connect, require_ray
from embedder.extraction.rows import ExtractSummary, RetryPolicy, plan_work
from embedder.extraction.shards import absorb_shards
from embedder.inputs import DEFAULT_MAX_PIXELS, is_uri, list_source, list_uri

logger = logging.getLogger(__name__)

MAX_BLOCK = 256  # images per block (and shard) by default


def blocks_of(items: list[Any], size: int) -> Iterator[dict[str, Any]]:
    """The work list cut into numbered blocks of at most `size` images."""
    for number, start in enumerate(range(0, len(items), size)):
        chunk = items[start : start + size]
        yield {
            "block": number,
            "paths": [str(item.path) for item in chunk],
            "rels": [item.rel for item in chunk],
            "labels": [item.label or "" for item in chunk],
        }


def extract_ray(
    source: str | os.PathLike,
    out: str | os.PathLike,
    backbone: Backbone | None = None,
    *,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: float = 1,
    gpus_per_actor: float | None = None,
    runtime: str = "auto",
    batch_size: int = 32,
    block_size: int | None = None,
    labels: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    rehash: bool = False,
    retry_failed: bool = False,
    shards: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ExtractSummary:
    """`extract` on a Ray cluster: same cache, same rows, embeddings equal within the runtime's parity.

    `gpus_per_actor` None means one GPU per actor (and one actor per GPU) when the cluster has
    GPUs, none otherwise. `block_size` images make one block, i.e. one shard (default: at most 256, and at least 4 blocks
    per actor so that no actor idles at the end). `shards` is the folder where actors write
    finished blocks (default: CACHE.shards beside the cache); on a multi-node cluster it must be a
    folder that every node and the driver see. Recorded failures are re-attempted as `extract` does
    (a larger `max_pixels` than they were refused under, or every one with `retry_failed`).
    """
    if batch_size < 1 or (block_size is not None and block_size < 1):
        raise ValueError(f"batch_size and block_size must be at least 1. Received: {batch_size}, {block_size}")
    if cpus_per_actor <= 0:
        raise ValueError(f"cpus_per_actor must be positive. Received: {cpus_per_actor}")
    require_ray()
    backbone = backbone or Backbone()
    started = time.perf_counter()
    listed = list_uri(str(source), labels=labels) if is_uri(source) else list_source(source, labels=labels)
    out = Path(out)
    key = backbone.key
    folder = Path(shards) if shards is not None else out.with_name(out.name + ".shards")
    folder = folder / key
    provenance = {**backbone.provenance(), "source": str(source) if is_uri(source) else str(listed.root.resolve())}
    paths = [item.rel for item in listed.items]
    with CacheWriter(out) as cache:
        index = cache.index(key, paths)
        resumed = absorb_shards(cache, key, folder, index, provenance)
        if resumed:
            logger.info("merged %d finished shard(s) of an earlier run into %s", resumed, out)
            index = cache.index(key, paths)
        plan = plan_work(
            listed.items, index, rehash=rehash, retry=RetryPolicy({"max_pixels": max_pixels}, retry_failed)
        )
        summary = ExtractSummary(
            out=out,
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
            folder.mkdir(parents=True, exist_ok=True)
            try:
                summary.runtime = _run_actors(
                    plan.todo,
                    backbone,
                    key,
                    folder,
                    index,
                    plan.failed_hashes,
                    address=address,
                    actors=actors,
                    cpus_per_actor=cpus_per_actor,
                    gpus_per_actor=gpus_per_actor,
                    runtime=runtime,
                    batch_size=batch_size,
                    block_size=block_size,
                    max_pixels=max_pixels,
                    progress=progress,
                )
            finally:  # also on Ctrl-C or a failed job: finished blocks are kept
                absorb_shards(cache, key, folder, index, provenance, summary)
    summary.seconds = time.perf_counter() - started
    logger.info("%s", summary)
    return summary


def _run_actors(
    todo: list[Any],
    backbone: Backbone,
    key: str,
    folder: Path,
    index: CacheIndex,
    failed: dict[str, Failure],
    *,
    address: str | None,
    actors: int | None,
    cpus_per_actor: float,
    gpus_per_actor: float | None,
    runtime: str,
    batch_size: int,
    block_size: int | None,
    max_pixels: int,
    progress: bool | None,
) -> str:
    """Embed `todo` on the cluster into shards in `folder`; returns the runtime description.

    `failed` maps the content hashes that stay failed to their failure (see `Plan.failed_hashes`).
    """
    ray = connect(address)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    resources = ray.cluster_resources()
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    for name, wanted in (("GPU", gpus_per_actor), ("CPU", cpus_per_actor)):
        if wanted > resources.get(name, 0):  # Ray would wait forever for such an actor
            raise EmbedderError(
                f"each actor asks for {wanted:g} {name}, the cluster has {resources.get(name, 0):g}; "
                f"lower --{name.lower()}s-per-actor or add nodes with {name}s."
            )
    if actors is None:
        actors = max(
            1,
            int(resources["GPU"] // gpus_per_actor) if gpus_per_actor > 0 else int(resources["CPU"] // cpus_per_actor),
        )
    if gpus_per_actor > 0 and runtime == "auto":
        runtime = "keras"  # the exported CPU runtimes do not use GPUs; TensorFlow does
    weights = None
    if backbone.weights_path is not None:
        weights = ray.put(backbone.weights_path.read_bytes())
    known = ray.put((index.hashes, failed))
    run = uuid.uuid4().hex[:8]
    if block_size is None:
        block_size = max(1, min(MAX_BLOCK, -(-len(todo) // (4 * actors))))
    blocks = list(blocks_of(todo, block_size))
    spec = {
        "alpha": backbone.alpha,
        "size": backbone.size,
        "weights": backbone.weights,
        "pooling": backbone.pooling,
        "resize": backbone.resize,
    }
    dataset = ray.data.from_items(blocks, override_num_blocks=len(blocks)).map_batches(
        BlockEmbedder,
        batch_size=1,
        # Ray Data's actor pools restart a killed actor and retry its block (max_restarts and
        # max_task_retries default to -1); the retry rewrites the same shard name.
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
        fn_constructor_kwargs={
            "backbone": spec,
            "weights": weights,
            "key": key,
            "shard_folder": str(folder.resolve()),
            "run": run,
            "known": known,
            "runtime": runtime,
            "batch_size": batch_size,
            "threads": max(1, int(cpus_per_actor)),
            "max_pixels": max_pixels,
        },
    )
    logger.info("%d images in %d blocks on %d actor(s) of %g CPU", len(todo), len(blocks), actors, cpus_per_actor)
    bar = tqdm(
        total=len(todo),
        unit="img",
        desc=f"embedding on {actors} actor(s)",
        disable=None if progress is None else not progress,
    )
    busy, runtimes = 0.0, set()
    try:
        for result in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            bar.update(int(result["images"].sum()))
            busy += float(result["seconds"].sum())
            runtimes.update(result["runtime"].tolist())
            bar.set_postfix_str(f"{bar.n / max(busy, 1e-9):.0f} img/s per actor")
    finally:
        bar.close()
    return f"ray, {actors} actor(s), {'/'.join(sorted(runtimes))}"
