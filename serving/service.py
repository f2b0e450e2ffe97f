"""The service's loaded state: encoder and micro-batchers, models, the cache's rows; built at start-up."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from classical import ModelFileError, SavedModel, load_model
from embedder import (
    DEFAULT_MAX_PIXELS,
    Backbone,
    CacheError,
    ImageError,
    SimilarityIndex,
    build_classifier,
    decode_image,
    load_class_names,
    load_encoder,
    open_cache,
)
from serving.batching import MicroBatcher, Saturated
from serving.exported import ExportedModel
from serving.requests import ServiceError, image_error

logger = logging.getLogger(__name__)
MODEL_SUFFIXES = (".model", ".onnx", ".joblib")  # .joblib: pickles of earlier releases, read only when trusted
Model = SavedModel | ExportedModel


@dataclass
class ServiceSettings:
    """Everything the service is started with (the `embedder serve` options)."""

    backbone: Backbone
    runtime: str = "auto"
    precision: str = "fp32"
    threads: int | None = None  # inference threads (default: the runtime's, one per core)
    model_dirs: list[Path] = field(default_factory=list)
    cache: Path | None = None
    token: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = 32 * 2**20
    max_images: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    imagenet: bool = False
    imagenet_weights: str | None = "imagenet"
    imagenet_labels: Path | None = None
    trust_pickle: bool = False  # read model files of earlier releases (pickles: they can run code)
    decode_threads: int = field(default_factory=lambda: os.cpu_count() or 1)


class Service:
    """The loaded state: encoder, batchers, models, cache index. Built at start-up, before readiness."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.ready = False
        self.decoder = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="service-decode")
        self.models: dict[str, Model] = {}
        self.pixel_batchers: dict[str, MicroBatcher] = {}  # models applied to images (fine-tuned networks, exports)
        self.cache_rows: dict[str, int] = {}
        self.cache_file: Any = None
        self.similar_error: str | None = None
        self.similarity: SimilarityIndex | None = None
        self.imagenet: MicroBatcher | None = None
        self.class_names: list[str] = []

    def start(self) -> None:
        """Load the models (first: a damaged or untrusted file fails fast), the backbone, the cache; warm up."""
        settings = self.settings
        self.models = load_models(settings.model_dirs, trust_pickle=settings.trust_pickle, threads=settings.threads)
        encoder = load_encoder(
            settings.backbone, settings.runtime, precision=settings.precision, threads=settings.threads
        )
        self.key, self.runtime = encoder.key, encoder.runtime
        check_backbones(self.models, self.key, settings.backbone)
        if settings.cache is not None:
            self._open_cache(settings.cache)
        self.batcher = self._batcher(encoder, "embed-batcher")
        encoder(np.zeros((settings.max_batch, settings.backbone.size, settings.backbone.size, 3), np.uint8))  # warm
        self.batcher.start()
        for name, model in self.models.items():
            if model.takes_pixels:
                self.pixel_batchers[name] = self._batcher(
                    lambda images, model=model: model.predict_proba(images, backbone_key=self.key), f"{name}-batcher"
                )
                self.pixel_batchers[name].start()
        if settings.imagenet:
            self.class_names = load_class_names(settings.imagenet_labels)
            classify = build_classifier(
                alpha=settings.backbone.alpha, size=settings.backbone.size, weights=settings.imagenet_weights
            )
            classify(np.zeros((1, settings.backbone.size, settings.backbone.size, 3), np.uint8))  # warm
            self.imagenet = self._batcher(classify, "imagenet-batcher")
            self.imagenet.start()
        self.ready = True
        logger.info("serving %s on %s with %d model(s)", self.key, self.runtime, len(self.models))

    def _batcher(self, encode: Any, name: str) -> MicroBatcher:
        settings = self.settings
        return MicroBatcher(
            encode,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            name=name,
        )

    def stop(self) -> None:
        self.ready = False
        for batcher in (getattr(self, "batcher", None), self.imagenet, *self.pixel_batchers.values()):
            if batcher is not None:
                batcher.stop()
        self.decoder.shutdown()
        if self.cache_file is not None:
            self.cache_file.close()

    def _open_cache(self, path: Path) -> None:
        self.cache_file = open_server_cache(path)
        if self.key not in self.cache_file.keys:
            raise CacheError(
                f"--cache '{path}' has no embeddings of the server's backbone {self.key}; "
                f"it has: {', '.join(self.cache_file.keys) or 'none'}"
            )
        self.cache_rows = {sha: row for row, sha in enumerate(self.cache_file[self.key].sha256)}
        self.similar_error = None
        try:  # loaded now and kept: a missing or stale index is said at start-up, and queries answer from memory
            self.similarity = self.cache_file[self.key].index(refresh=False)
        except CacheError as exc:
            self.similar_error = f"the cache's similarity index cannot be used ({exc}); run `embedder similar` once"

    async def similar(self, parts: list[tuple[str | None, bytes]], k: int) -> tuple[list[str], list[list[Any]]]:
        """sha256 and the k nearest cached photos of each part (the cache's own search, as `embedder similar`).

        The caller has checked that the service has a cache (`POST /v1/similar` says so before reading the upload).
        """
        if self.similar_error is not None:
            raise ServiceError(503, "not_enabled", self.similar_error)
        rows = await self.embed(parts)
        X = np.stack([vector for _, vector, _ in rows]).astype(np.float32)
        found = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.cache_file[self.key].search(X, k, index=self.similarity)
        )
        return [sha for sha, _, _ in rows], found

    async def decode(
        self, parts: list[tuple[str | None, bytes]], *, use_cache: bool = True
    ) -> list[tuple[str, np.ndarray | None]]:
        """sha256 and pixels of each part, decoded in parallel (pixels None: the embedding is cached).

        An undecodable part fails the whole request, naming the part.
        """
        loop = asyncio.get_running_loop()
        size, resize = self.settings.backbone.size, self.settings.backbone.resize

        def work(data: bytes) -> tuple[str, np.ndarray | None]:
            sha = hashlib.sha256(data).hexdigest()
            if use_cache and sha in self.cache_rows:
                return sha, None
            return sha, decode_image(data, size=size, resize=resize, max_pixels=self.settings.max_pixels)

        results = await asyncio.gather(
            *(loop.run_in_executor(self.decoder, work, data) for _, data in parts), return_exceptions=True
        )
        for index, ((name, _), result) in enumerate(zip(parts, results)):
            if isinstance(result, ImageError):
                raise image_error(index, name, result)
            if isinstance(result, BaseException):
                raise result
        return [result for result in results if not isinstance(result, BaseException)]  # (all of them: see above)

    async def embed(self, parts: list[tuple[str | None, bytes]]) -> list[tuple[str, np.ndarray, bool]]:
        """(sha256, embedding, from cache) for each part."""
        decoded = await self.decode(parts)
        todo = [pixels for _, pixels in decoded if pixels is not None]
        embedded = iter(await batched(self.batcher, todo))
        rows = []
        for sha, pixels in decoded:
            if pixels is None:
                rows.append((sha, self.cache_file[self.key].embeddings[self.cache_rows[sha]], True))
            else:
                rows.append((sha, next(embedded), False))
        return rows

    async def predict(self, name: str, parts: list[tuple[str | None, bytes]]) -> tuple[list[str], np.ndarray]:
        """sha256 and class probabilities of each part under model `name`: from its embedding, or its pixels."""
        model = self.models[name]
        if model.takes_pixels:
            decoded = await self.decode(parts, use_cache=False)
            return [sha for sha, _ in decoded], np.stack(
                await batched(self.pixel_batchers[name], [p for _, p in decoded if p is not None])
            )
        rows = await self.embed(parts)
        X = np.stack([vector for _, vector, _ in rows]).astype(np.float32)
        probs = await asyncio.get_running_loop().run_in_executor(
            None, lambda: model.predict_proba(X, backbone_key=self.key)
        )
        return [sha for sha, _, _ in rows], probs


async def batched(batcher: MicroBatcher, images: list[np.ndarray]) -> list[np.ndarray]:
    try:
        return await batcher.run(images)
    except Saturated as exc:
        raise ServiceError(
            503, "saturated", f"the server is busy ({exc}); retry shortly", {"Retry-After": "1"}
        ) from exc


def load_models(folders: list[Path], *, trust_pickle: bool = False, threads: int | None = None) -> dict[str, Model]:
    """Every model file of the given folders: NAME.model, NAME.onnx exports (NAME.joblib only when trusted)."""
    models: dict[str, Model] = {}
    for folder in folders:
        if not folder.is_dir():
            raise ModelFileError(f"model folder '{folder}' does not exist; pass run directories of `classical sweep`.")
        for path in sorted(path for path in folder.iterdir() if path.suffix in MODEL_SUFFIXES):
            model = (
                ExportedModel(path, threads=threads)
                if path.suffix == ".onnx"
                else load_model(path, trust_pickle=trust_pickle)
            )
            name = path.stem if path.stem not in models else f"{folder.name}/{path.stem}"
            models[name] = model
    return models


def check_backbones(models: dict[str, Model], key: str, backbone: Backbone) -> None:
    """A model of another backbone (or an export for other images) stops the start-up."""
    for model in models.values():
        if isinstance(model, ExportedModel):
            model.check_backbone(key, size=backbone.size, resize=backbone.resize)
        elif model.backbone_key != key:
            raise ModelFileError(
                f"model '{model.path}' was fitted on embeddings of {model.backbone_key}, but this server embeds with "
                f"{key}; start the server with that model's backbone (--alpha/--size/--weights/...), or leave it out."
            )


def open_server_cache(path: Path) -> Any:
    """The cache the server answers from (read only); its errors speak of --cache."""
    if not path.is_file():
        raise CacheError(
            f"--cache '{path}' does not exist; pass a cache written by `embedder extract`, or leave it out."
        )
    if not h5py.is_hdf5(path):
        raise CacheError(
            f"--cache '{path}' is not an HDF5 file ({path.stat().st_size} bytes), so not an embeddings "
            "cache; pass a cache written by `embedder extract`, or leave --cache out."
        )
    return open_cache(path)
