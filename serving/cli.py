"""The service's command line: `bottleneck-serve`, and `embedder serve` (the `embedder` commands plus `serve`).

The `embedder` console script is this module's `embedder_app`: embedder's own commands with the
service's `serve` added on top, so that `embedder serve` works while `embedder` knows nothing of it.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from embedder import DEFAULT_MAX_PIXELS, Backbone, EmbedderError
from embedder.cli import Alpha, Pooling, Resize, Size, Verbose, Weights, fail, setup_logging
from embedder.cli import app as embedder_commands

app = typer.Typer(
    help="The bottleneck-lab HTTP service: embeddings, model predictions, ImageNet top-k.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(verbose: Verbose = False) -> None:
    setup_logging(verbose)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps the service local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    models: Annotated[
        list[Path] | None,
        typer.Option("--models", help="Folder whose model files (*.model, *.onnx exports) to serve (repeatable)."),
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Also serve *.joblib model files of earlier "
            "releases (pickles: they can run code; only files you trust).",
        ),
    ] = False,
    cache: Annotated[Path | None, typer.Option(help="Answer images already in this cache from it.")] = None,
    token: Annotated[
        str | None, typer.Option(envvar="EMBEDDER_TOKEN", help="Require 'Authorization: Bearer TOKEN'.")
    ] = None,
    alpha: Alpha = 1.0,
    size: Size = 224,
    weights: Weights = "imagenet",
    pooling: Pooling = "avg",
    resize: Resize = "crop",
    runtime: Annotated[str, typer.Option(help="'auto', 'onnx', 'openvino' or 'keras'.")] = "auto",
    precision: Annotated[str, typer.Option(help="'fp32', or 'bf16' (int8 needs calibration: extract first).")] = "fp32",
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: one per core).")] = None,
    max_batch: Annotated[int, typer.Option(help="Most images per inference call.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more images.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Most images waiting; beyond, 503 with Retry-After.")] = 256,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body.")] = 32.0,
    max_images: Annotated[int, typer.Option(help="Most images per request.")] = 64,
    max_pixels: Annotated[
        int, typer.Option(help="Largest image, in pixels (decompression bombs).")
    ] = DEFAULT_MAX_PIXELS,
    imagenet: Annotated[bool, typer.Option(help="Enable POST /v1/imagenet/top (loads the full network).")] = False,
    imagenet_weights: Annotated[str, typer.Option(help="Weights with the 1000-class top.")] = "imagenet",
    imagenet_labels: Annotated[
        Path | None, typer.Option(envvar="EMBEDDER_IMAGENET_LABELS", help="ImageNet class names.")
    ] = None,
) -> None:
    """Serve embeddings, model predictions and ImageNet top-k over HTTP, batching concurrent requests."""
    try:
        import uvicorn

        from serving.app import create_app
        from serving.service import Service, ServiceSettings
    except ImportError as exc:
        fail(exc)
    try:
        settings = ServiceSettings(
            backbone=Backbone(alpha=alpha, size=size, weights=weights, pooling=pooling, resize=resize),
            runtime=runtime,
            precision=precision,
            threads=threads,
            model_dirs=list(models or []),
            cache=cache,
            token=token,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_body_bytes=int(max_body_mb * 2**20),
            max_images=max_images,
            max_pixels=max_pixels,
            imagenet=imagenet,
            imagenet_weights=imagenet_weights,
            imagenet_labels=imagenet_labels,
            trust_pickle=trust_pickle,
        )
    except ValueError as exc:
        fail(exc)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "binding %s: reachable from other machines%s", host, "" if token else " without a token (--token)"
        )
    limit_malloc_arenas()
    service = Service(settings)
    try:
        service.start()  # before the server: a bad model file or cache is one line, not a traceback from uvicorn
    except (EmbedderError, ValueError) as exc:
        service.stop()
        fail(exc)
    uvicorn.run(create_app(settings, service), host=host, port=port, timeout_graceful_shutdown=30, log_level="info")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas: with many request threads they otherwise let a long-running RSS creep."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


embedder_app = typer.Typer(help=embedder_commands.info.help, no_args_is_help=True, add_completion=False)
embedder_app.callback()(main)
embedder_app.registered_commands = [*embedder_commands.registered_commands]
embedder_app.command("serve")(serve)


if __name__ == "__main__":
    sys.exit(app())
