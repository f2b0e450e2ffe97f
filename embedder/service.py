"""The embedding service: an HTTP API that embeds and classifies images, batching concurrent requests.

    create_app(ServiceSettings(backbone=Backbone(...), model_dirs=[Path("runs/flowers")]))

Safe by default: meant to bind 127.0.0.1; an optional bearer token (compared in constant
time); no CORS; limits on body size, images per request, pixels per image and queued images,
each refused with a clear 4xx/503 JSON error `{"error": {"code", "message"}}`. Requests carry
image bytes only: no server path is ever read on a client's behalf and nothing a client sends
is unpickled; model files are loaded at start-up, only from the directories given.
Needs the `service` extra: pip install "bottleneck-lab[service]".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"the embedding service needs the 'service' extra: pip install \"bottleneck-lab[service]\" ({exc})") from exc

from embedder.backbone import Backbone
from embedder.batching import MicroBatcher, Saturated
from embedder.errors import ImageError, ModelFileError
from embedder.images import DEFAULT_MAX_PIXELS, decode_image
from embedder.modelfile import SavedModel, load_model
from embedder.runtimes import load_encoder

logger = logging.getLogger(__name__)


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
    decode_threads: int = field(default_factory=lambda: os.cpu_count() or 1)


class ServiceError(Exception):
    """An error answered as JSON {"error": {"code", "message"}} with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# ------------------------------------------------------------------ request and response schemas


class ImagePayload(BaseModel):
    name: str | None = Field(None, description="Optional name echoed back (e.g. the client's file name).")
    data: str = Field(description="The image file's bytes, base64-encoded (JPEG, PNG, BMP, GIF, WebP).")


class ImagesRequest(BaseModel):
    images: list[ImagePayload] = Field(description="Images to process, in order.")


class EmbeddingResult(BaseModel):
    index: int = Field(description="Position of the image in the request.")
    name: str | None = Field(description="The image's name (file name of the part, or the JSON name).")
    sha256: str = Field(description="sha256 of the image file's bytes.")
    cached: bool = Field(description="True when the embedding came from the server's cache file.")
    embedding: list[float] | str = Field(description="float list, or base64 of little-endian float32 with encoding=base64.")


class EmbeddingsResponse(BaseModel):
    backbone: str = Field(description="Backbone key of the embeddings.")
    dim: int = Field(description="Length of each embedding.")
    encoding: str = Field(description="'json' (lists of floats) or 'base64' (float32 bytes).")
    results: list[EmbeddingResult]


class PredictionResult(BaseModel):
    index: int
    name: str | None
    sha256: str
    label: str = Field(description="The most probable class.")
    prob: float = Field(description="Its probability.")
    probs: dict[str, float] = Field(description="Probability of every class.")


class PredictResponse(BaseModel):
    model: str
    backbone: str
    results: list[PredictionResult]


class TopClass(BaseModel):
    index: int = Field(description="ImageNet class index (Keras order).")
    name: str
    prob: float


class TopResult(BaseModel):
    index: int
    name: str | None
    sha256: str
    top: list[TopClass]


class TopResponse(BaseModel):
    results: list[TopResult]


class ModelInfo(BaseModel):
    name: str
    kind: str | None = Field(description="'classical' or 'neural'.")
    backbone_key: str
    classes: list[str]
    metrics: dict[str, Any] = Field(description="Test metrics recorded when the model was fitted.")


class ModelsResponse(BaseModel):
    backbone: str
    models: list[ModelInfo]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


IMAGES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                           "description": "One part per image, all named 'images'."}}}},
            "application/json": {"schema": ImagesRequest.model_json_schema()},
        },
    }
}
ERRORS = {status: {"model": ErrorResponse} for status in (401, 404, 413, 415, 422, 503)}


# ------------------------------------------------------------------ the application


class BodyLimit:
    """ASGI middleware refusing bodies over `limit` bytes, by Content-Length or while streaming."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and int(declared) > self.limit:
            return await _send_error(send, 413, "body_too_large", f"request body of {int(declared)} bytes exceeds "
                                     f"the limit of {self.limit} bytes (--max-body-mb)")
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise ServiceError(413, "body_too_large", f"request body exceeds the limit of {self.limit} bytes (--max-body-mb)")
            return message

        await self.app(scope, limited, send)


async def _send_error(send: Any, status: int, code: str, message: str) -> None:
    body = JSONResponse({"error": {"code": code, "message": message}}).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Service:
    """The loaded state: encoder, batchers, models, cache index. Built at start-up, before readiness."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.ready = False
        self.decoder = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="service-decode")
        self.models: dict[str, SavedModel] = {}
        self.cache_rows: dict[str, int] = {}
        self.cache_file: Any = None
        self.imagenet: MicroBatcher | None = None
        self.class_names: list[str] = []

    def start(self) -> None:
        settings = self.settings
        encoder = load_encoder(settings.backbone, settings.runtime, precision=settings.precision, threads=settings.threads)
        self.key, self.runtime = encoder.key, encoder.runtime
        self.models = load_models(settings.model_dirs, self.key)
        if settings.cache is not None:
            self._open_cache(settings.cache)
        self.batcher = MicroBatcher(encoder, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                    max_queue=settings.max_queue, name="embed-batcher")
        encoder(np.zeros((settings.max_batch, settings.backbone.size, settings.backbone.size, 3), np.uint8))  # warm
        self.batcher.start()
        if settings.imagenet:
            from embedder.imagenet import build_classifier, load_class_names

            self.class_names = load_class_names(settings.imagenet_labels)
            classify = build_classifier(alpha=settings.backbone.alpha, size=settings.backbone.size,
                                        weights=settings.imagenet_weights)
            classify(np.zeros((1, settings.backbone.size, settings.backbone.size, 3), np.uint8))  # warm
            self.imagenet = MicroBatcher(classify, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                         max_queue=settings.max_queue, name="imagenet-batcher")
            self.imagenet.start()
        self.ready = True
        logger.info("serving %s on %s with %d model(s)", self.key, self.runtime, len(self.models))

    def stop(self) -> None:
        self.ready = False
        for batcher in (getattr(self, "batcher", None), self.imagenet):
            if batcher is not None:
                batcher.stop()
        self.decoder.shutdown()
        if self.cache_file is not None:
            self.cache_file.close()

    def _open_cache(self, path: Path) -> None:
        from embedder.cache import open_cache

        self.cache_file = open_cache(path)
        if self.key not in self.cache_file.keys:
            raise ModelFileError(f"cache '{path}' has no embeddings of the server's backbone {self.key}; "
                                 f"it has: {', '.join(self.cache_file.keys) or 'none'}")
        self.cache_rows = {sha: row for row, sha in enumerate(self.cache_file[self.key].sha256)}

    async def decode(self, parts: list[tuple[str | None, bytes]], *, use_cache: bool = True) -> list[tuple[str, np.ndarray | None]]:
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

        results = await asyncio.gather(*(loop.run_in_executor(self.decoder, work, data) for _, data in parts),
                                       return_exceptions=True)
        for index, ((name, _), result) in enumerate(zip(parts, results)):
            if isinstance(result, ImageError):
                raise image_error(index, name, result.reason)
            if isinstance(result, BaseException):
                raise result
        return results

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


async def batched(batcher: MicroBatcher, images: list[np.ndarray]) -> list[np.ndarray]:
    try:
        return await batcher.run(images)
    except Saturated as exc:
        raise ServiceError(503, "saturated", f"the server is busy ({exc}); retry shortly", {"Retry-After": "1"}) from exc


def image_error(index: int, name: str | None, reason: str) -> ServiceError:
    """415 for content that is no image, 413 for decompression bombs, 422 for broken images."""
    part = f"part {index}" + (f" ('{name}')" if name else "")
    if reason.startswith("not an image"):
        return ServiceError(415, "unsupported_image", f"{part}: {reason}")
    if "decompression-bomb" in reason or "DecompressionBomb" in reason:
        return ServiceError(413, "image_too_large", f"{part}: {reason}")
    return ServiceError(422, "corrupt_image", f"{part}: {reason}")


def load_models(folders: list[Path], key: str) -> dict[str, SavedModel]:
    """Every model file (*.joblib) of the given folders; a model of another backbone stops the start-up."""
    models = {}
    for folder in folders:
        if not folder.is_dir():
            raise ModelFileError(f"model folder '{folder}' does not exist; pass run directories of `classical sweep`.")
        for path in sorted(folder.glob("*.joblib")):
            saved = load_model(path)
            if saved.backbone_key != key:
                raise ModelFileError(
                    f"model '{path}' was fitted on embeddings of {saved.backbone_key}, but this server embeds with {key}; "
                    "start the server with that model's backbone (--alpha/--size/--weights/...), or leave it out."
                )
            name = path.stem if path.stem not in models else f"{folder.name}/{path.stem}"
            models[name] = saved
    return models


async def read_images(request: Request, limit: int) -> list[tuple[str | None, bytes]]:
    """The request's images: multipart parts named 'images', or JSON {"images": [{"name", "data"}]}."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=limit + 1, max_fields=limit + 1)
        uploads = form.getlist("images")
        parts = [(getattr(u, "filename", None), await u.read()) for u in uploads if hasattr(u, "read")]
    elif content_type.startswith("application/json"):
        try:
            body = ImagesRequest.model_validate_json(await request.body())
        except ValueError as exc:
            raise ServiceError(422, "invalid_request", f"JSON body must be {{\"images\": [{{\"name\", \"data\"}}]}}: {exc}") from exc
        parts = []
        for index, image in enumerate(body.images):
            try:
                parts.append((image.name, base64.b64decode(image.data, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise ServiceError(422, "invalid_base64", f"part {index}: 'data' is not valid base64 ({exc})") from exc
    else:
        raise ServiceError(415, "unsupported_media_type",
                           "send images as multipart/form-data parts named 'images', or as JSON {\"images\": [...]}")
    if not parts:
        raise ServiceError(422, "no_images", "the request holds no images (multipart parts must be named 'images')")
    if len(parts) > limit:
        raise ServiceError(413, "too_many_images", f"the request holds {len(parts)} images; the limit is {limit} (--max-images)")
    return parts


def create_app(settings: ServiceSettings) -> FastAPI:
    """The FastAPI application; the backbone and models load at start-up (lifespan)."""
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.get_running_loop().run_in_executor(None, service.start)
        yield
        service.stop()

    app = FastAPI(title="bottleneck-lab embedding service", version="1", lifespan=lifespan,
                  description="MobileNetV2 embeddings, predictions of saved models and ImageNet top-k, with "
                              "dynamic batching of concurrent requests.")
    app.state.service = service
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    def authorized(request: Request) -> None:
        if settings.token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise ServiceError(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status,
                              headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": {"code": "invalid_request", "message": str(exc.errors())}}, status_code=422)

    @app.get("/healthz", summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: backbone and models loaded and warm.", responses={503: {"model": ErrorResponse}})
    async def readyz() -> dict[str, Any]:
        if not service.ready:
            raise ServiceError(503, "not_ready", "the backbone and models are still loading")
        return {"status": "ready", "backbone": service.key, "runtime": service.runtime, "models": len(service.models),
                "batches": service.batcher.batches, "images": service.batcher.images}

    @app.get("/v1/models", response_model=ModelsResponse, dependencies=[Depends(authorized)], responses=ERRORS)
    async def models() -> ModelsResponse:
        return ModelsResponse(backbone=service.key, models=[
            ModelInfo(name=name, kind=saved.metadata.get("kind"), backbone_key=saved.backbone_key,
                      classes=saved.class_names, metrics=saved.metadata.get("metrics", {}))
            for name, saved in service.models.items()])

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, dependencies=[Depends(authorized)],
              openapi_extra=IMAGES_BODY, responses=ERRORS, summary="Embeddings of the images.")
    async def embeddings(request: Request, encoding: str = "json") -> EmbeddingsResponse:
        if encoding not in ("json", "base64"):
            raise ServiceError(422, "invalid_request", f"encoding must be 'json' or 'base64'. Received: {encoding!r}")
        parts = await read_images(request, settings.max_images)
        rows = await service.embed(parts)
        return EmbeddingsResponse(backbone=service.key, dim=settings.backbone.dim, encoding=encoding, results=[
            EmbeddingResult(index=i, name=name, sha256=sha, cached=cached,
                            embedding=(base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
                                       if encoding == "base64" else np.asarray(vector, np.float32).tolist()))
            for i, ((name, _), (sha, vector, cached)) in enumerate(zip(parts, rows))])

    @app.post("/v1/predict/{model}", response_model=PredictResponse, dependencies=[Depends(authorized)],
              openapi_extra=IMAGES_BODY, responses=ERRORS, summary="Class probabilities from a loaded model.")
    async def predict(model: str, request: Request) -> PredictResponse:
        saved = service.models.get(model)
        if saved is None:
            raise ServiceError(404, "unknown_model", f"no model '{model}'; loaded: {', '.join(service.models) or 'none'}")
        parts = await read_images(request, settings.max_images)
        rows = await service.embed(parts)
        X = np.stack([vector for _, vector, _ in rows]).astype(np.float32)
        probs = await asyncio.get_running_loop().run_in_executor(
            None, lambda: saved.predict_proba(X, backbone_key=service.key))
        names = saved.class_names
        return PredictResponse(model=model, backbone=service.key, results=[
            PredictionResult(index=i, name=name, sha256=sha, label=names[int(p.argmax())], prob=float(p.max()),
                             probs={c: float(v) for c, v in zip(names, p)})
            for i, ((name, _), (sha, _, _), p) in enumerate(zip(parts, rows, probs))])

    @app.post("/v1/imagenet/top", response_model=TopResponse, dependencies=[Depends(authorized)],
              openapi_extra=IMAGES_BODY, responses=ERRORS, summary="Off-the-shelf ImageNet top-k.")
    async def imagenet_top(request: Request, k: int = 5) -> TopResponse:
        if service.imagenet is None:
            raise ServiceError(404, "not_enabled", "ImageNet top-k is off; start the server with --imagenet")
        if not 1 <= k <= 1000:
            raise ServiceError(422, "invalid_request", f"k must be between 1 and 1000. Received: {k}")
        from embedder.imagenet import top_classes

        parts = await read_images(request, settings.max_images)
        decoded = await service.decode(parts, use_cache=False)
        probs = await batched(service.imagenet, [pixels for _, pixels in decoded])
        return TopResponse(results=[
            TopResult(index=i, name=name, sha256=sha, top=[TopClass(**c) for c in top_classes(p, service.class_names, k)])
            for i, ((name, _), (sha, _), p) in enumerate(zip(parts, decoded, probs))])

    return app
