"""The embedding service: an HTTP API that embeds and classifies images, batching concurrent requests.

    create_app(ServiceSettings(backbone=Backbone(...), model_dirs=[Path("runs/flowers")]))

Safe by default: meant to bind 127.0.0.1; an optional bearer token (compared in constant
time) on everything but /healthz and /readyz, the OpenAPI schema included; no docs page (it would
load Swagger UI from a CDN); no CORS; limits on body size, images per request, pixels per image and queued images,
each refused with a clear 4xx/503 JSON error `{"error": {"code", "message"}}`. Requests carry
image bytes only: no server path is ever read on a client's behalf and nothing a client sends
is unpickled; model files are loaded at start-up, only from the directories given, and never run
code (pickles of earlier releases only with `trust_pickle`).
Needs the `service` extra: pip install "bottleneck-lab[service]".
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"the embedding service needs the 'service' extra: pip install \"bottleneck-lab[service]\" ({exc})"
    ) from exc

from embedder import top_classes
from serving.requests import BodyLimit, ServiceError, read_images
from serving.schemas import (
    ERRORS,
    IMAGES_BODY,
    EmbeddingResult,
    EmbeddingsResponse,
    ErrorResponse,
    ModelInfo,
    ModelsResponse,
    Neighbour,
    PredictionResult,
    PredictResponse,
    SimilarResponse,
    SimilarResult,
    TopClass,
    TopResponse,
    TopResult,
)
from serving.service import Service, ServiceSettings, batched

logger = logging.getLogger(__name__)
MAX_SIMILAR = 100  # neighbours per image of POST /v1/similar


def create_app(settings: ServiceSettings, service: Service | None = None) -> FastAPI:
    """The FastAPI application; the backbone and models load at start-up (lifespan), unless `service` is started."""
    service = service or Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not service.ready:
            await asyncio.get_running_loop().run_in_executor(None, service.start)
        yield
        service.stop()

    app = FastAPI(
        title="bottleneck-lab embedding service",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # the schema is served below, behind the token
        description="MobileNetV2 embeddings, predictions of saved models and ImageNet top-k, with "
        "dynamic batching of concurrent requests.",
    )
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
        return JSONResponse(
            {"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.exception_handler(ClientDisconnect)
    async def client_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        logger.warning("%s %s: the client disconnected before sending the whole body", request.method, request.url.path)
        return JSONResponse(
            {"error": {"code": "client_disconnected", "message": "the body was cut off"}}, status_code=400
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": {"code": "invalid_request", "message": str(exc.errors())}}, status_code=422)

    @app.get("/healthz", summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz", summary="Readiness: backbone and models loaded and warm.", responses={503: {"model": ErrorResponse}}
    )
    async def readyz() -> dict[str, Any]:
        if not service.ready:
            raise ServiceError(503, "not_ready", "the backbone and models are still loading")
        return {
            "status": "ready",
            "backbone": service.key,
            "runtime": service.runtime,
            "models": len(service.models),
            "batches": service.batcher.batches,
            "images": service.batcher.images,
        }

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorized)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/v1/models", response_model=ModelsResponse, dependencies=[Depends(authorized)], responses=ERRORS)
    async def models() -> ModelsResponse:
        return ModelsResponse(
            backbone=service.key,
            models=[
                ModelInfo(
                    name=name,
                    kind=saved.metadata.get("kind"),
                    backbone_key=saved.backbone_key,
                    classes=saved.class_names,
                    metrics=saved.metadata.get("metrics", {}),
                )
                for name, saved in service.models.items()
            ],
        )

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingsResponse,
        dependencies=[Depends(authorized)],
        openapi_extra=IMAGES_BODY,
        responses=ERRORS,
        summary="Embeddings of the images.",
    )
    async def embeddings(request: Request, encoding: str = "json") -> EmbeddingsResponse:
        if encoding not in ("json", "base64"):
            raise ServiceError(422, "invalid_request", f"encoding must be 'json' or 'base64'. Received: {encoding!r}")
        parts = await read_images(request, settings.max_images)
        rows = await service.embed(parts)
        return EmbeddingsResponse(
            backbone=service.key,
            dim=settings.backbone.dim,
            encoding=encoding,
            results=[
                EmbeddingResult(
                    index=i,
                    name=name,
                    sha256=sha,
                    cached=cached,
                    embedding=(
                        base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
                        if encoding == "base64"
                        else np.asarray(vector, np.float32).tolist()
                    ),
                )
                for i, ((name, _), (sha, vector, cached)) in enumerate(zip(parts, rows))
            ],
        )

    @app.post(
        "/v1/predict/{model}",
        response_model=PredictResponse,
        dependencies=[Depends(authorized)],
        openapi_extra=IMAGES_BODY,
        responses=ERRORS,
        summary="Class probabilities from a loaded model.",
    )
    async def predict(model: str, request: Request) -> PredictResponse:
        if model not in service.models:
            raise ServiceError(
                404, "unknown_model", f"no model '{model}'; loaded: {', '.join(service.models) or 'none'}"
            )
        parts = await read_images(request, settings.max_images)
        shas, probs = await service.predict(model, parts)
        names = service.models[model].class_names
        return PredictResponse(
            model=model,
            backbone=service.key,
            results=[
                PredictionResult(
                    index=i,
                    name=name,
                    sha256=sha,
                    label=names[int(p.argmax())],
                    prob=float(p.max()),
                    probs={c: float(v) for c, v in zip(names, p)},
                )
                for i, ((name, _), sha, p) in enumerate(zip(parts, shas, probs))
            ],
        )

    @app.post(
        "/v1/imagenet/top",
        response_model=TopResponse,
        dependencies=[Depends(authorized)],
        openapi_extra=IMAGES_BODY,
        responses=ERRORS,
        summary="Off-the-shelf ImageNet top-k.",
    )
    async def imagenet_top(request: Request, k: int = 5) -> TopResponse:
        if service.imagenet is None:
            raise ServiceError(404, "not_enabled", "ImageNet top-k is off; start the server with --imagenet")
        if not 1 <= k <= 1000:
            raise ServiceError(422, "invalid_request", f"k must be between 1 and 1000. Received: {k}")
        parts = await read_images(request, settings.max_images)
        decoded = await service.decode(parts, use_cache=False)
        probs = await batched(service.imagenet, [pixels for _, pixels in decoded if pixels is not None])
        return TopResponse(
            results=[
                TopResult(
                    index=i, name=name, sha256=sha, top=[TopClass(**c) for c in top_classes(p, service.class_names, k)]
                )
                for i, ((name, _), (sha, _), p) in enumerate(zip(parts, decoded, probs))
            ]
        )

    @app.post(
        "/v1/similar",
        response_model=SimilarResponse,
        dependencies=[Depends(authorized)],
        openapi_extra=IMAGES_BODY,
        responses=ERRORS,
        summary="The nearest cached photos of each image (the --cache's similarity index).",
    )
    async def similar(request: Request, k: int = 10) -> SimilarResponse:
        if not 1 <= k <= MAX_SIMILAR:
            raise ServiceError(422, "invalid_request", f"k must be between 1 and {MAX_SIMILAR}. Received: {k}")
        if service.cache_file is None:
            raise ServiceError(503, "not_enabled", "similarity search needs a cache; start the server with --cache")
        parts = await read_images(request, settings.max_images)
        shas, found = await service.similar(parts, k)
        return SimilarResponse(
            backbone=service.key,
            k=k,
            results=[
                SimilarResult(
                    index=i,
                    name=name,
                    sha256=sha,
                    neighbours=[Neighbour(path=m.path, similarity=m.similarity, label=m.label) for m in matches],
                )
                for i, ((name, _), sha, matches) in enumerate(zip(parts, shas, found))
            ],
        )

    return app
