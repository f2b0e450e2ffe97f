"""`embedder` command line: extract, info, verify, pack, index, similar, predict.

Each command parses options and calls the Python API. A damaged cache is one line and a non-zero
exit, whatever h5py raises reading it (`reading` names the file).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from embedder.backbone import Backbone
from embedder.cache import info as cache_info
from embedder.cache import open_cache
from embedder.cache import pack as pack_cache
from embedder.cache import verify as verify_cache
from embedder.cache.damage import check_tables, reading
from embedder.cache.verify import pending as pending_batches
from embedder.cli.options import Alpha, Engine, Pooling, Resize, Size, Verbose, Weights, fail, setup_logging
from embedder.errors import EmbedderError
from embedder.extraction import extract as run_extract
from embedder.inputs import DEFAULT_MAX_PIXELS

app = typer.Typer(help="MobileNetV2 bottleneck embeddings, cached in HDF5.", no_args_is_help=True, add_completion=False)


class Format(str, Enum):
    text = "text"
    json = "json"


@app.callback()
def main(verbose: Verbose = False) -> None:
    setup_logging(verbose)


@app.command()
def extract(
    source: Annotated[
        str,
        typer.Argument(
            help="Folder (one sub-folder per class, or flat), .csv/.txt list, or image; "
            "with --engine ray also a URI (s3://..., gs://...)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="HDF5 cache file to create or extend.")],
    alpha: Alpha = 1.0,
    size: Size = 224,
    weights: Weights = "imagenet",
    pooling: Pooling = "avg",
    resize: Resize = "crop",
    runtime: Annotated[
        str, typer.Option(help="'auto' (fastest measured), 'onnx', 'openvino' or 'keras' (reference).")
    ] = "auto",
    precision: Annotated[
        str, typer.Option(help="'fp32' (exact), or opt-in 'bf16' / 'int8' (faster, own cache key).")
    ] = "fp32",
    calibration: Annotated[
        Path | None, typer.Option(help="int8: images to calibrate on (default: see README).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 32,
    workers: Annotated[
        int | None,
        typer.Option(help="Threads that decode batches and hand them to the runtime (default: one per core)."),
    ] = None,
    labels: Annotated[str, typer.Option(help="'auto', 'folders' (class sub-folders) or 'none'.")] = "auto",
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images above this many pixels (decompression bombs).")
    ] = DEFAULT_MAX_PIXELS,
    rehash: Annotated[bool, typer.Option(help="Hash every file even if its size and mtime are unchanged.")] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            help="Re-attempt every recorded failure (by default only those a larger --max-pixels may now admit)."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    engine: Annotated[
        Engine, typer.Option(help="'local' (this process) or 'ray' (a Ray cluster; pip extra [ray]).")
    ] = Engine.local,
    address: Annotated[
        str | None, typer.Option(help="ray: 'auto', 'ray://HOST:PORT' or HOST:PORT (default: a local Ray).")
    ] = None,
    actors: Annotated[
        int | None, typer.Option(help="ray: embedding actors (default: cluster CPUs / --cpus-per-actor).")
    ] = None,
    cpus_per_actor: Annotated[float, typer.Option(help="ray: CPUs declared (and inference threads) per actor.")] = 1.0,
    gpus_per_actor: Annotated[
        float | None,
        typer.Option(
            help="ray: GPUs per actor, run by the Keras runtime (default: 1 when the cluster has GPUs, else 0)."
        ),
    ] = None,
    block_size: Annotated[
        int | None,
        typer.Option(help="ray: images per block, i.e. per shard file (default: <= 256, >= 4 blocks per actor)."),
    ] = None,
    shards: Annotated[
        Path | None, typer.Option(help="ray: folder for shard files, seen by every node (default: OUT.shards).")
    ] = None,
) -> None:
    """Embed every image of SOURCE into the cache OUT; only images not cached yet are computed."""
    try:
        backbone = Backbone(alpha=alpha, size=size, weights=weights, pooling=pooling, resize=resize)
        if engine is Engine.ray:
            from embedder.extraction import extract_ray

            if precision != "fp32":
                raise ValueError(f"--engine ray embeds in fp32 only; run --precision {precision} with --engine local.")
            summary = extract_ray(
                source,
                out,
                backbone,
                address=address,
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                runtime=runtime,
                batch_size=batch_size,
                block_size=block_size,
                labels=labels,
                max_pixels=max_pixels,
                rehash=rehash,
                retry_failed=retry_failed,
                shards=shards,
                progress=None if progress else False,
            )
        else:
            if "://" in source:
                raise ValueError(f"'{source}' is a URI: the local engine reads local paths; use --engine ray for URIs.")
            summary = run_extract(
                source,
                out,
                backbone,
                runtime=runtime,
                batch_size=batch_size,
                workers=workers,
                labels=labels,
                max_pixels=max_pixels,
                rehash=rehash,
                retry_failed=retry_failed,
                precision=precision,
                calibration=calibration,
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
        with reading(cache):
            described = cache_info(cache)
        check_tables(cache)  # the lookup tables info does not show: damage there is said too
    except EmbedderError as exc:
        fail(exc)
    if format is Format.json:
        typer.echo(json.dumps(described, indent=2))
        return
    typer.echo(
        f"cache {described['path']}: {described['bytes'] / 1e6:.1f} MB, schema {described['schema_version']}, "
        f"created {described['created']}, updated {described['updated']}"
    )
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
def verify(cache: Annotated[Path, typer.Argument(help="HDF5 cache file.")]) -> None:
    """Check a cache completely: it opens, rows align, checksums hold, values are sound. Exit 1 on any problem."""
    problems = verify_cache(cache)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(1)
    note = pending_batches(cache)
    if note:
        typer.echo(note)
    try:
        with reading(cache), open_cache(cache) as opened:
            rows, backbones = sum(len(opened[key]) for key in opened.keys), len(opened.keys)
    except EmbedderError as exc:
        fail(exc)
    typer.echo(
        f"{cache}: sound ({rows} rows in {backbones} backbone(s); checksums, values, lookup tables "
        "and similarity indexes checked)"
    )


@app.command()
def pack(
    cache: Annotated[Path, typer.Argument(help="HDF5 cache file (with its segment files).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The self-contained HDF5 file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Write CACHE (every backbone) as one self-contained HDF5 file: no virtual datasets, no segment files.

    Rows are checked as they are copied; a damaged cache is refused and nothing is written.
    """
    try:
        summary = pack_cache(cache, out, force=force)
    except EmbedderError as exc:
        fail(exc)
    typer.echo(str(summary))


Backbone_ = Annotated[str | None, typer.Option("--backbone", help="Backbone key (default: the cache's only backbone).")]


@app.command()
def index(cache: Annotated[Path, typer.Argument(help="HDF5 cache file.")], backbone: Backbone_ = None) -> None:
    """Build the similarity index of a cache's backbone, or refresh it to the cache's rows; print what it holds."""
    try:
        with reading(cache), open_cache(cache) as opened:
            described = opened.backbone(backbone).index().describe()
    except (EmbedderError, KeyError) as exc:
        fail(exc)
    typer.echo(
        f"{cache}: backbone {described['backbone']}: {described['indexed']} of {described['rows']} rows indexed, "
        f"{described['method']} ({described['folder']})"
    )


@app.command()
def similar(
    cache: Annotated[Path, typer.Argument(help="HDF5 cache file.")],
    queries: Annotated[
        list[str], typer.Argument(help="Image files, or paths already in the cache (as `embedder info` lists them).")
    ],
    k: Annotated[int, typer.Option("--k", min=1, help="Photos per query.")] = 10,
    format: Annotated[Format, typer.Option("--format", help="'text', or 'json' (one object per query).")] = Format.text,
    backbone: Backbone_ = None,
    runtime: Annotated[str, typer.Option(help="Runtime embedding query images ('auto', 'onnx', ...).")] = "auto",
) -> None:
    """The cached photos most similar to each query, with similarity and label (the query image itself left out)."""
    from embedder.cache.similarity.query import cached_rows

    try:
        with reading(cache), open_cache(cache) as opened:
            rows = opened.backbone(backbone)
            cached = cached_rows(rows._group, queries)
            files = [q for q in queries if q not in cached]
            missing = [q for q in files if not Path(q).is_file()]
            if missing:
                raise ValueError(
                    f"'{missing[0]}' is neither an image file nor a path in backbone {rows.key} of '{cache}' "
                    "(cached paths are relative to the extracted folder, as `embedder info` shows)"
                )
            found = dict(zip([q for q in queries if q in cached], rows.similar([q for q in queries if q in cached], k)))
            found |= dict(zip(files, rows.search_files(files, k, runtime=runtime) if files else []))
    except (EmbedderError, ValueError, KeyError) as exc:
        fail(exc)
    for query in queries:
        kind = "cached" if query in cached else "image"
        if format is Format.json:
            typer.echo(json.dumps({"query": query, "kind": kind, "matches": [m.as_dict() for m in found[query]]}))
            continue
        typer.echo(f"{query} ({'cached photo' if kind == 'cached' else 'image file'}):")
        for rank, match in enumerate(found[query], 1):
            typer.echo(f"  {rank:>3}. {match.similarity:.4f}  {match.label or '-':<12} {match.path}")


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    top: Annotated[int, typer.Option(help="How many classes per image.")] = 5,
    format: Annotated[Format, typer.Option("--format", help="'text', or 'json' (one object per line).")] = Format.text,
    alpha: Alpha = 1.0,
    size: Size = 224,
    weights: Annotated[
        str, typer.Option(help="'imagenet' or a full (with top) MobileNetV2 weights file.")
    ] = "imagenet",
    resize: Resize = "crop",
    labels: Annotated[
        Path | None, typer.Option(envvar="EMBEDDER_IMAGENET_LABELS", help="ImageNet class names file.")
    ] = None,
) -> None:
    """Off-the-shelf ImageNet top-k classes of images (recipe 1: no training)."""
    from embedder.backbone import predict_imagenet

    try:
        predictions = predict_imagenet(
            inputs, top=top, alpha=alpha, size=size, weights=weights, resize=resize, labels=labels
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
