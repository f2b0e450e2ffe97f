"""Command-line building blocks shared by the project's CLIs: backbone options, the engine, errors, logging."""

from __future__ import annotations

import logging
from enum import Enum
from typing import Annotated, NoReturn

import typer

from embedder import native_logs


class Engine(str, Enum):
    local = "local"
    ray = "ray"


Alpha = Annotated[float, typer.Option(help="Width multiplier: 0.35, 0.5, 0.75, 1.0, 1.3 or 1.4.")]
Size = Annotated[int, typer.Option(help="Input side in pixels: 96, 128, 160, 192 or 224.")]
Weights = Annotated[
    str, typer.Option(help="'imagenet' (Keras; offline via KERAS_HOME), a weights file, or 'none' (random).")
]
Pooling = Annotated[str, typer.Option(help="Global pooling: 'avg' or 'max'.")]
Resize = Annotated[
    str, typer.Option(help="'crop': shorter side to SIZE then center crop; 'squash': ignore aspect ratio.")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]


def fail(exc: Exception) -> NoReturn:
    """Exit with status 2 and the error's message, the CLIs' answer to bad input."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def setup_logging(verbose: bool) -> None:
    """Log warnings (with `verbose`: progress details, and TensorFlow's native log lines too)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if verbose:
        native_logs.verbose()
