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
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from embedder.backbone import Backbone
from embedder.cache import STR, Batch, CacheIndex, CacheWriter, Failure
from embedder.errors import EmbedderError, SourceError
from embedder.extract import ExtractSummary, plan_work
from embedder.images import DEFAULT_MAX_PIXELS
from embedder.pipeline import LoadedFile, decode_loaded, load_and_encode, load_file
from embedder.sources import Source, folder_items, is_image_name, list_source

logger = logging.getLogger(__name__)

RAY_EXTRA = 'pip install "bottleneck-lab[ray]"'
SHARD_SUFFIX = ".h5"
MAX_BLOCK = 256  # images per block (and shard) by default
ROW_COLUMNS = ("path", "sha256", "label", "file_size", "mtime_ns")  # a shard's rows/ and aliases/ groups
FAILURE_COLUMNS = ("path", "sha256", "reason", "file_size", "mtime_ns")  # its failures/ group


def require_ray() -> Any:
    """The `ray` module, or an error naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EmbedderError(f"--engine ray needs Ray, which is not installed ({exc}); install it with: {RAY_EXTRA}") from None
    return ray


def connect(address: str | None) -> Any:
    """Join the Ray cluster at `address` ("auto", "ray://host:port", "host:port"), or start a local one."""
    ray = require_ray()
    if not ray.is_initialized():
        options: dict[str, Any] = {"logging_level": logging.WARNING,
                                   "runtime_env": {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}}}
        if address is None:
            options["include_dashboard"] = False
        try:
            ray.init(address=address, **options)
        except (ConnectionError, ray.exceptions.RayError) as exc:
            raise EmbedderError(
                f"cannot join the Ray cluster at {address!r}: {str(exc).splitlines()[0]}. Check that the head runs "
                "(`ray status`), the address (HOST:PORT of `ray start --head`, or ray://HOST:10001), and that "
                "RAY_AUTH_TOKEN matches the cluster's token if it uses token authentication."
            ) from exc
    return ray


def is_uri(source: str | os.PathLike) -> bool:
    return "://" in str(source)


def list_uri(uri: str, *, labels: str = "auto") -> Source:
    """List the images under a filesystem URI that fsspec reads (s3://, gs://, file://, ...), like a local folder."""
    try:
        import fsspec
    except ImportError:
        raise EmbedderError(f"listing '{uri}' needs fsspec; install it with: {RAY_EXTRA}") from None
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        files = fs.find(root)
    except (OSError, ValueError, ImportError) as exc:
        raise SourceError(f"cannot list '{uri}': {exc}. Check the URI, its filesystem package and credentials.") from exc
    protocol = uri.split("://", 1)[0]
    root = root.rstrip("/")
    rels = sorted(path[len(root) + 1:] for path in files if path.startswith(root + "/"))
    rels = [rel for rel in rels if not any(part.startswith(".") for part in rel.split("/"))]
    images = [rel for rel in rels if is_image_name(rel)]
    others = [rel for rel in rels if not is_image_name(rel)]
    items, class_names = folder_items(uri, images, others, labels=labels, join=lambda rel: f"{protocol}://{root}/{rel}")
    return Source(root=Path(root), items=items, class_names=class_names)


# --------------------------------------------------------------------------- shards: one Batch (as journaled locally) per block, in HDF5


def write_shard(path: Path, shard: Batch, attrs: dict[str, Any]) -> None:
    """Write a shard under a temporary name, then rename it: readers see it whole or not at all."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with h5py.File(tmp, "w") as handle:
        for name, value in attrs.items():
            handle.attrs[name] = value
        handle.create_dataset("embeddings", data=shard.embeddings.astype(np.float32))
        for group_name, records, fields in (("rows", shard.rows, ROW_COLUMNS), ("aliases", shard.aliases, ROW_COLUMNS),
                                            ("failures", shard.failures, FAILURE_COLUMNS)):
            group = handle.create_group(group_name)
            columns = list(zip(*records)) if records else [()] * len(fields)
            for name, values in zip(fields, columns):
                numeric = name in ("file_size", "mtime_ns")
                group.create_dataset(name, data=np.array(values, dtype=np.int64 if numeric else object),
                                     dtype=np.int64 if numeric else STR)
    os.replace(tmp, path)


def read_shard(path: Path, key: str) -> Batch:
    """A finished shard; an error if it was written for another backbone key."""
    with h5py.File(path, "r") as handle:
        if handle.attrs.get("backbone_key") != key:
            raise EmbedderError(f"shard '{path}' holds backbone {handle.attrs.get('backbone_key')!r}, not {key!r}")

        def records(group_name: str, fields: tuple[str, ...]) -> list[tuple]:
            group = handle[group_name]
            columns = [group[name][...].tolist() if name in ("file_size", "mtime_ns") else group[name].asstr()[...].tolist()
                       for name in fields]
            return list(zip(*columns))

        return Batch(
            embeddings=handle["embeddings"][...],
            rows=records("rows", ROW_COLUMNS),
            aliases=records("aliases", ROW_COLUMNS),
            failures=records("failures", FAILURE_COLUMNS),
        )


def absorb_shards(cache: CacheWriter, key: str, folder: Path, index: CacheIndex, provenance: dict[str, Any],
                  summary: ExtractSummary | None = None) -> int:
    """Journal every finished shard of `folder` into the cache, merge, and delete them; returns how many.

    An image whose bytes are already in the cache (or in an earlier shard) becomes a row reusing
    that embedding, exactly as local extraction records it.
    """
    shards = sorted(folder.glob(f"*{SHARD_SUFFIX}")) if folder.is_dir() else []
    if not shards:
        return 0
    cache.begin(key, provenance)
    known = set(index.hashes)
    for path in shards:
        try:
            shard = read_shard(path, key)
        except OSError as exc:  # cannot happen for a renamed shard, except on a broken disk
            logger.warning("skipping unreadable shard %s (%s); its images will be embedded again", path, exc)
            continue
        keep = [i for i, record in enumerate(shard.rows) if record[1] not in known]
        batch = Batch(embeddings=shard.embeddings[keep], rows=[shard.rows[i] for i in keep],
                      aliases=[record for record in shard.rows if record[1] in known] + shard.aliases,
                      failures=shard.failures)
        known.update(record[1] for record in shard.rows)
        if summary is not None:
            summary.embedded += len(batch.rows)
            for path_, sha, *_ in batch.aliases:
                if index.rows.get(path_, ("",))[0] == sha:
                    summary.cached += 1
                else:
                    summary.reused += 1
            summary.failed += [Failure(path_, reason, sha) for path_, sha, reason, *_ in batch.failures]
        cache.write_batch(key, batch)
    cache.commit()
    for path in shards:
        path.unlink()
    for stale in folder.glob(f"*{SHARD_SUFFIX}.tmp-*"):  # left by killed actors; their blocks were retried
        stale.unlink(missing_ok=True)
    return len(shards)


# --------------------------------------------------------------------------- actors


def read_bytes(path: str) -> bytes:
    """A URI's bytes through fsspec (on the worker, with the worker's credentials)."""
    import fsspec

    with fsspec.open(path, "rb") as handle:
        return handle.read()


class BlockEmbedder:
    """Ray Data actor: one loaded backbone; each call embeds blocks of images into shard files."""

    def __init__(self, *, backbone: dict[str, Any], weights: Any, key: str, shard_folder: str, run: str,
                 known: Any, runtime: str, batch_size: int, threads: int, max_pixels: int) -> None:
        import ray

        from embedder.runtimes import load_encoder

        self._weights_folder = tempfile.TemporaryDirectory(prefix="embedder-weights-")
        spec = dict(backbone)
        if weights is not None:  # the driver's weights file travels through the object store
            spec["weights"] = self._materialize(spec, ray.get(weights))
        self.backbone = Backbone(**spec)
        if self.backbone.key != key:
            raise EmbedderError(f"worker {socket.gethostname()} built backbone {self.backbone.key}, the driver "
                                f"{key}: install the same library versions on every node.")
        self.encoder = load_encoder(self.backbone, runtime, threads=threads)
        self.known, self.failed = ray.get(known)  # hashes already embedded; failed hash -> reason
        self.folder, self.run = Path(shard_folder), run
        self.batch_size, self.threads, self.max_pixels = batch_size, threads, max_pixels

    def _materialize(self, spec: dict[str, Any], data: bytes) -> str:
        """Write the weights to a private folder; "imagenet" stays "imagenet" through a private KERAS_HOME."""
        folder = Path(self._weights_folder.name)
        if spec["weights"] == "imagenet":
            from embedder.weights import keras_weights_filename

            (folder / "models").mkdir()
            (folder / "models" / keras_weights_filename(spec["alpha"], spec["size"], False)).write_bytes(data)
            os.environ["KERAS_HOME"] = str(folder)
            return "imagenet"
        path = folder / Path(spec["weights"]).name
        path.write_bytes(data)
        return str(path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"block": [], "images": [], "seconds": [], "runtime": []}
        for block, paths, rels, labels in zip(batch["block"], batch["paths"], batch["rels"], batch["labels"]):
            started = time.perf_counter()
            shard = self.embed(list(paths), list(rels), list(labels))
            attrs = {"backbone_key": self.backbone.key, "run": self.run, "block": int(block),
                     "host": socket.gethostname(), "pid": os.getpid(), "seconds": time.perf_counter() - started}
            write_shard(self.folder / f"{self.run}-{int(block):06d}{SHARD_SUFFIX}", shard, attrs)
            out["block"].append(int(block))
            out["images"].append(len(rels))
            out["seconds"].append(attrs["seconds"])
            out["runtime"].append(self.encoder.runtime)
        return {name: np.array(values) for name, values in out.items()}

    def embed(self, paths: list[str], rels: list[str], labels: list[str]) -> Batch:
        """Read, hash, decode and embed one block; duplicates (in the cache or the block) become aliases."""
        seen: dict[str, str | None] = {}  # sha -> None (embedded in this block) or failure reason

        def load(path: str) -> LoadedFile:
            skip = lambda sha: sha in self.known or sha in self.failed or sha in seen  # noqa: E731
            if not is_uri(path):
                return load_file(Path(path), size=self.backbone.size, resize=self.backbone.resize,
                                 max_pixels=self.max_pixels, skip=skip)
            loaded = LoadedFile(Path(path))
            try:
                data = read_bytes(path)
            except OSError as exc:
                loaded.error = f"cannot read: {exc}"
                return loaded
            loaded.size = len(data)
            return decode_loaded(loaded, data, size=self.backbone.size, resize=self.backbone.resize,
                                 max_pixels=self.max_pixels, skip=skip)

        shard = Batch(embeddings=np.empty((len(paths), self.backbone.dim), np.float32))
        items = list(zip(paths, rels, labels))
        for (_, rel, label), loaded, embedding in load_and_encode(items, lambda item: load(item[0]), self.encoder,
                                                                  batch_size=self.batch_size, workers=self.threads + 1):
            record = (rel, loaded.sha256, label, loaded.size, loaded.mtime_ns)
            if loaded.error is None:  # same bytes as a file that failed, in the cache or this block
                loaded.error = self.failed.get(loaded.sha256) or seen.get(loaded.sha256)
            if loaded.error is not None:
                shard.failures.append((rel, loaded.sha256, loaded.error, loaded.size, loaded.mtime_ns))
                if loaded.sha256:
                    seen.setdefault(loaded.sha256, loaded.error)
            elif embedding is None or loaded.sha256 in seen:
                shard.aliases.append(record)
            else:
                seen[loaded.sha256] = None
                shard.embeddings[len(shard.rows)] = embedding
                shard.rows.append(record)
        shard.embeddings = shard.embeddings[: len(shard.rows)]
        return shard


# --------------------------------------------------------------------------- driver


def blocks_of(items: list[Any], size: int) -> Iterator[dict[str, Any]]:
    """The work list cut into numbered blocks of at most `size` images."""
    for number, start in enumerate(range(0, len(items), size)):
        chunk = items[start:start + size]
        yield {"block": number, "paths": [str(item.path) for item in chunk], "rels": [item.rel for item in chunk],
               "labels": [item.label or "" for item in chunk]}


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
    shards: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ExtractSummary:
    """`extract` on a Ray cluster: same cache, same rows, embeddings equal within the runtime's parity.

    `gpus_per_actor` None means one GPU per actor (and one actor per GPU) when the cluster has
    GPUs, none otherwise. `block_size` images make one block, i.e. one shard (default: at most 256, and at least 4 blocks
    per actor so that no actor idles at the end). `shards` is the folder where actors write
    finished blocks (default: CACHE.shards beside the cache); on a multi-node cluster it must be a
    folder that every node and the driver see.
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
    with CacheWriter(out) as cache:
        index = cache.index(key)
        resumed = absorb_shards(cache, key, folder, index, provenance)
        if resumed:
            logger.info("merged %d finished shard(s) of an earlier run into %s", resumed, out)
            index = cache.index(key)
        todo, cached, failed = plan_work(listed.items, index, rehash=rehash)
        summary = ExtractSummary(out=out, backbone_key=key, runtime="none", total=len(listed.items),
                                 cached=cached, failed=failed)
        if todo:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                summary.runtime = _run_actors(
                    todo, backbone, key, folder, index, address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                    gpus_per_actor=gpus_per_actor, runtime=runtime, batch_size=batch_size, block_size=block_size,
                    max_pixels=max_pixels, progress=progress)
            finally:  # also on Ctrl-C or a failed job: finished blocks are kept
                absorb_shards(cache, key, folder, index, provenance, summary)
    summary.seconds = time.perf_counter() - started
    logger.info("%s", summary)
    return summary


def _run_actors(
    todo: list[Any], backbone: Backbone, key: str, folder: Path, index: CacheIndex, *, address: str | None,
    actors: int | None, cpus_per_actor: float, gpus_per_actor: float | None, runtime: str, batch_size: int,
    block_size: int | None,
    max_pixels: int, progress: bool | None,
) -> str:
    """Embed `todo` on the cluster into shards in `folder`; returns the runtime description."""
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
            raise EmbedderError(f"each actor asks for {wanted:g} {name}, the cluster has {resources.get(name, 0):g}; "
                                f"lower --{name.lower()}s-per-actor or add nodes with {name}s.")
    if actors is None:
        actors = max(1, int(resources["GPU"] // gpus_per_actor) if gpus_per_actor > 0
                     else int(resources["CPU"] // cpus_per_actor))
    if gpus_per_actor > 0 and runtime == "auto":
        runtime = "keras"  # the exported CPU runtimes do not use GPUs; TensorFlow does
    weights = None
    if backbone.weights_path is not None:
        weights = ray.put(backbone.weights_path.read_bytes())
    known = ray.put((frozenset(index.hashes), dict(index.failed_hashes)))
    run = uuid.uuid4().hex[:8]
    if block_size is None:
        block_size = max(1, min(MAX_BLOCK, -(-len(todo) // (4 * actors))))
    blocks = list(blocks_of(todo, block_size))
    spec = {"alpha": backbone.alpha, "size": backbone.size, "weights": backbone.weights, "pooling": backbone.pooling,
            "resize": backbone.resize}
    dataset = ray.data.from_items(blocks, override_num_blocks=len(blocks)).map_batches(
        BlockEmbedder,
        batch_size=1,
        # Ray Data's actor pools restart a killed actor and retry its block (max_restarts and
        # max_task_retries default to -1); the retry rewrites the same shard name.
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
        fn_constructor_kwargs={
            "backbone": spec, "weights": weights, "key": key, "shard_folder": str(folder.resolve()), "run": run,
            "known": known, "runtime": runtime, "batch_size": batch_size,
            "threads": max(1, int(cpus_per_actor)), "max_pixels": max_pixels,
        },
    )
    logger.info("%d images in %d blocks on %d actor(s) of %g CPU", len(todo), len(blocks), actors, cpus_per_actor)
    bar = tqdm(total=len(todo), unit="img", desc=f"embedding on {actors} actor(s)",
               disable=None if progress is None else not progress)
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
