"""`classical` command line: sweep, report, predict. Each command parses options and calls the Python API."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from classical.models import MODEL_NAMES  # noqa: E402
from classical.predict import predict as run_predict  # noqa: E402
from classical.sweep import rerender, summary  # noqa: E402
from classical.sweep import sweep as run_sweep  # noqa: E402
from embedder.errors import EmbedderError  # noqa: E402

app = typer.Typer(help="Classical models and neural heads on cached embeddings, compared on one split.",
                  no_args_is_help=True, add_completion=False)


class Search(str, Enum):
    grid = "grid"
    halving = "halving"


class Format(str, Enum):
    text = "text"
    json = "json"
    csv = "csv"


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def sweep(
    cache: Annotated[Path, typer.Argument(help="HDF5 cache written by `embedder extract`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (split, models, report).")],
    models: Annotated[str, typer.Option(help="Comma-separated models to fit.")] = ",".join(MODEL_NAMES),
    backbone: Annotated[Optional[str], typer.Option(help="Backbone key, when the cache holds several.")] = None,
    grid: Annotated[Optional[Path], typer.Option(help="JSON/TOML file of grids: {model: {param: [values]}}.")] = None,
    search: Annotated[Search, typer.Option(help="'grid' or 'halving' (successive halving).")] = Search.grid,
    cv: Annotated[int, typer.Option(help="Stratified CV folds (fewer if a class is too small).")] = 5,
    n_jobs: Annotated[int, typer.Option(help="Parallel jobs for the searches (-1: all cores).")] = -1,
    seed: Annotated[int, typer.Option(help="Seed of the split, the folds and the models.")] = 0,
    fractions: Annotated[str, typer.Option(help="train,val,test fractions of a new split.")] = "0.7,0.15,0.15",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fit every model on the cache's embeddings and compare them on one stored test split."""
    try:
        report = run_sweep(
            cache, out, models=[name.strip() for name in models.split(",") if name.strip()], backbone=backbone,
            grids=grid, search=search.value, cv=cv, n_jobs=n_jobs, seed=seed,
            fractions=tuple(float(f) for f in fractions.split(",")), progress=None if progress else False,
        )
    except (EmbedderError, ValueError) as exc:
        _fail(exc)
    typer.echo(summary(report))
    typer.echo(f"\nreport: {out / 'report.md'} (json, csv, plots/ beside it)")


@app.command()
def report(run: Annotated[Path, typer.Argument(help="Run directory of a sweep.")]) -> None:
    """Re-render a run's plots and report files from its report.json, and print the table."""
    try:
        rendered = rerender(run)
    except (FileNotFoundError, EmbedderError) as exc:
        _fail(exc)
    typer.echo(summary(rendered))


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A saved model: runs/NAME/MODEL or runs/NAME/MODEL.joblib.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    format: Annotated[Format, typer.Option("--format", help="'text', 'json' (one object per line) or 'csv'.")] = Format.text,
    runtime: Annotated[str, typer.Option(help="'auto', 'onnx' or 'keras'.")] = "auto",
) -> None:
    """Classify new images with a saved model, embedding them with the model's own backbone."""
    try:
        results = run_predict(model, inputs, runtime=runtime)
    except (EmbedderError, ValueError) as exc:
        _fail(exc)
    if format is Format.json:
        for result in results:
            typer.echo(json.dumps(result))
    elif format is Format.csv:
        classes = next((list(r["probs"]) for r in results if "probs" in r), [])
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "label", "prob", *classes, "error"])
        for r in results:
            writer.writerow([r["path"], r.get("label", ""), r.get("prob", ""),
                             *(r["probs"][c] if "probs" in r else "" for c in classes), r.get("error", "")])
        typer.echo(buffer.getvalue().rstrip("\n"))
    else:
        for r in results:
            typer.echo(f"{r['path']}: error: {r['error']}" if "error" in r else f"{r['path']}: {r['label']} {r['prob']:.3f}")
    if any("error" in r for r in results):
        raise typer.Exit(1)


if __name__ == "__main__":
    sys.exit(app())
