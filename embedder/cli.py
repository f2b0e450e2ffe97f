"""`embedder` command line: extract, info, predict, serve. Each command parses options and calls the Python API."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from embedder.backbone import Backbone  # noqa: E402
from embedder.cache import info as cache_info  # noqa: E402
from embedder.errors import EmbedderError  # noqa: E402
from embedder.extract import extract as run_extract  # noqa: E402
from embedder.images import DEFAULT_MAX_PIXELS  # noqa: E402

app = typer.Typer(help="MobileNetV2 bottleneck embeddings, cached in HDF5.", no_args_is_help=True, add_completion=False)


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class Format(str, Enum):
    text = "text"
    json = "json"


Alpha = Annotated[float, typer.Option(help="Width multiplier: 0.35, 0.5, 0.75, 1.0, 1.3 or 1.4.")]
Size = Annotated[int, typer.Option(help="Input side in pixels: 96, 128, 160, 192 or 224.")]
Weights = Annotated[str, typer.Option(help="'imagenet' (Keras; offline via KERAS_HOME), a weights file, or 'none' (random).")]
Pooling = Annotated[str, typer.Option(help="Global pooling: 'avg' or 'max'.")]
Resize = Annotated[str, typer.Option(help="'crop': shorter side to SIZE then center crop; 'squash': ignore aspect ratio.")]


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]


def parse_weights(value: str) -> str | None:
    """The --weights option: 'none' means random weights."""
    return None if value.lower() == "none" else value


def fail(exc: Exception) -> None:
    """Exit with status 2 and the error's message, the CLIs' answer to bad input."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.callback()
def main(verbose: Verbose = False) -> None:
    setup_logging(verbose)


@app.command()
def extract(
    source: Annotated[str, typer.Argument(help="Folder (one sub-folder per class, or flat), .csv/.txt list, or image; "
                                                "with --engine ray also a URI (s3://..., gs://...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HDF5 cache file to create or extend.")],
    alpha: Alpha = 1.0,
    size: Size = 224,
    weights: Weights = "imagenet",
    pooling: Pooling = "avg",
    resize: Resize = "crop",
    runtime: Annotated[str, typer.Option(help="'auto' (fastest measured), 'onnx', 'openvino' or 'keras' (reference).")] = "auto",
    precision: Annotated[str, typer.Option(help="'fp32' (exact), or opt-in 'bf16' / 'int8' (faster, own cache key).")] = "fp32",
    calibration: Annotated[Optional[Path], typer.Option(help="int8: images to calibrate on (default: see README).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 32,
    workers: Annotated[Optional[int], typer.Option(help="Threads that decode batches and hand them to the runtime (default: one per core).")] = None,
    labels: Annotated[str, typer.Option(help="'auto', 'folders' (class sub-folders) or 'none'.")] = "auto",
    max_pixels: Annotated[int, typer.Option(help="Refuse images above this many pixels (decompression bombs).")] = DEFAULT_MAX_PIXELS,
    rehash: Annotated[bool, typer.Option(help="Hash every file even if its size and mtime are unchanged.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    engine: Annotated[Engine, typer.Option(help="'local' (this process) or 'ray' (a Ray cluster; pip extra [ray]).")] = Engine.local,
    address: Annotated[Optional[str], typer.Option(help="ray: 'auto', 'ray://HOST:PORT' or HOST:PORT (default: a local Ray).")] = None,
    actors: Annotated[Optional[int], typer.Option(help="ray: embedding actors (default: cluster CPUs / --cpus-per-actor).")] = None,
    cpus_per_actor: Annotated[float, typer.Option(help="ray: CPUs declared (and inference threads) per actor.")] = 1.0,
    gpus_per_actor: Annotated[Optional[float], typer.Option(help="ray: GPUs per actor, run by the Keras runtime (default: 1 when the cluster has GPUs, else 0).")] = None,
    block_size: Annotated[Optional[int], typer.Option(help="ray: images per block, i.e. per shard file (default: <= 256, >= 4 blocks per actor).")] = None,
    shards: Annotated[Optional[Path], typer.Option(help="ray: folder for shard files, seen by every node (default: OUT.shards).")] = None,
) -> None:
    """Embed every image of SOURCE into the cache OUT; only images not cached yet are computed."""
    try:
        backbone = Backbone(alpha=alpha, size=size, weights=parse_weights(weights), pooling=pooling, resize=resize)
        if engine is Engine.ray:
            from embedder.distributed import extract_ray

            if precision != "fp32":
                raise ValueError(f"--engine ray embeds in fp32 only; run --precision {precision} with --engine local.")
            summary = extract_ray(
                source, out, backbone, address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor, runtime=runtime, batch_size=batch_size, block_size=block_size,
                labels=labels, max_pixels=max_pixels, rehash=rehash, shards=shards, progress=None if progress else False,
            )
        else:
            if "://" in source:
                raise ValueError(f"'{source}' is a URI: the local engine reads local paths; use --engine ray for URIs.")
            summary = run_extract(
                source, out, backbone, runtime=runtime, batch_size=batch_size, workers=workers, labels=labels,
                max_pixels=max_pixels, rehash=rehash, precision=precision, calibration=calibration,
                progress=None if progress else False,
            )
    except (EmbedderError, ValueError) as exc:
        fail(exc)
    typer.echo(str(summary))


@app.command()
def info(
    cache: Annotated[Path, typer.Argument(help="HDF5 cache file.")],
    format: Annotated[Format, typer.Option("--format", help="'text' for people, 'json' for scripts.")] = Format.text,
) -> None:
    """Describe a cache: backbones, rows per class, failures, provenance."""
    try:
        described = cache_info(cache)
    except EmbedderError as exc:
        fail(exc)
    if format is Format.json:
        typer.echo(json.dumps(described, indent=2))
        return
    typer.echo(f"cache {described['path']}: {described['bytes'] / 1e6:.1f} MB, schema {described['schema_version']}, "
               f"created {described['created']}, updated {described['updated']}")
    for backbone in described["backbones"]:
        typer.echo(f"\nbackbone {backbone['key']}\n  rows      {backbone['rows']} x {backbone['dim']} float32")
        classes = ", ".join(f"{name} {count}" for name, count in backbone["classes"].items())
        typer.echo(f"  classes   {len(backbone['classes'])}: {classes or '(unlabeled)'}")
        if backbone["unlabeled"]:
            typer.echo(f"  unlabeled {backbone['unlabeled']}")
        typer.echo(f"  failures  {len(backbone['failures'])}")
        for failure in backbone["failures"]:
            typer.echo(f"    {failure['path']}: {failure['reason']}")
        typer.echo("  provenance")
        for name, value in backbone["provenance"].items():
            typer.echo(f"    {name}: {value}")


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    top: Annotated[int, typer.Option(help="How many classes per image.")] = 5,
    format: Annotated[Format, typer.Option("--format", help="'text', or 'json' (one object per line).")] = Format.text,
    alpha: Alpha = 1.0,
    size: Size = 224,
    weights: Annotated[str, typer.Option(help="'imagenet' or a full (with top) MobileNetV2 weights file.")] = "imagenet",
    resize: Resize = "crop",
    labels: Annotated[Optional[Path], typer.Option(envvar="EMBEDDER_IMAGENET_LABELS", help="ImageNet class names file.")] = None,
) -> None:
    """Off-the-shelf ImageNet top-k classes of images (recipe 1: no training)."""
    from embedder.imagenet import predict_imagenet

    try:
        predictions = predict_imagenet(
            inputs, top=top, alpha=alpha, size=size, weights=parse_weights(weights), resize=resize, labels=labels
        )
    except (EmbedderError, ValueError) as exc:
        fail(exc)
    for prediction in predictions:
        if format is Format.json:
            typer.echo(json.dumps(prediction.as_dict()))
        elif prediction.error is not None:
            typer.echo(f"{prediction.path}: error: {prediction.error}")
        else:
            classes = ", ".join(f"{c['name']} {c['prob']:.3f}" for c in prediction.top)
            typer.echo(f"{prediction.path}: {classes}")
    if any(prediction.error for prediction in predictions):
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps the service local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    models: Annotated[Optional[list[Path]], typer.Option("--models", help="Run directory whose *.joblib models to serve (repeatable).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Answer images already in this cache from it.")] = None,
    token: Annotated[Optional[str], typer.Option(envvar="EMBEDDER_TOKEN", help="Require 'Authorization: Bearer TOKEN'.")] = None,
    alpha: Alpha = 1.0,
    size: Size = 224,
    weights: Weights = "imagenet",
    pooling: Pooling = "avg",
    resize: Resize = "crop",
    runtime: Annotated[str, typer.Option(help="'auto', 'onnx', 'openvino' or 'keras'.")] = "auto",
    precision: Annotated[str, typer.Option(help="'fp32', or 'bf16' (int8 needs calibration: extract first).")] = "fp32",
    threads: Annotated[Optional[int], typer.Option(help="Inference threads (default: one per core).")] = None,
    max_batch: Annotated[int, typer.Option(help="Most images per inference call.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more images.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Most images waiting; beyond, 503 with Retry-After.")] = 256,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body.")] = 32.0,
    max_images: Annotated[int, typer.Option(help="Most images per request.")] = 64,
    max_pixels: Annotated[int, typer.Option(help="Largest image, in pixels (decompression bombs).")] = DEFAULT_MAX_PIXELS,
    imagenet: Annotated[bool, typer.Option(help="Enable POST /v1/imagenet/top (loads the full network).")] = False,
    imagenet_weights: Annotated[str, typer.Option(help="Weights with the 1000-class top.")] = "imagenet",
    imagenet_labels: Annotated[Optional[Path], typer.Option(envvar="EMBEDDER_IMAGENET_LABELS", help="ImageNet class names.")] = None,
) -> None:
    """Serve embeddings, model predictions and ImageNet top-k over HTTP, batching concurrent requests."""
    try:
        import uvicorn

        from embedder.service import ServiceSettings, create_app
    except ImportError as exc:
        fail(exc)
    try:
        settings = ServiceSettings(
            backbone=Backbone(alpha=alpha, size=size, weights=parse_weights(weights), pooling=pooling, resize=resize),
            runtime=runtime, precision=precision, threads=threads, model_dirs=list(models or []), cache=cache, token=token,
            max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, max_body_bytes=int(max_body_mb * 2**20),
            max_images=max_images, max_pixels=max_pixels, imagenet=imagenet,
            imagenet_weights=parse_weights(imagenet_weights), imagenet_labels=imagenet_labels,
        )
    except ValueError as exc:
        fail(exc)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning("binding %s: reachable from other machines%s", host,
                                            "" if token else " without a token (--token)")
    limit_malloc_arenas()
    uvicorn.run(create_app(settings), host=host, port=port, timeout_graceful_shutdown=30, log_level="info")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas: with many request threads they otherwise let a long-running RSS creep."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


if __name__ == "__main__":
    sys.exit(app())
