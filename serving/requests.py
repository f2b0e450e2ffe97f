"""What a request may carry and how it is refused: errors as JSON, the body limit, the images of a request."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from embedder import ImageError, ImageTooLargeError
from serving.schemas import ImagesRequest


class ServiceError(Exception):
    """An error answered as JSON {"error": {"code", "message"}} with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class BodyLimit:
    """ASGI middleware refusing bodies over `limit` bytes, by Content-Length or while streaming."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and int(declared) > self.limit:
            return await _send_error(
                send,
                413,
                "body_too_large",
                f"request body of {int(declared)} bytes exceeds the limit of {self.limit} bytes (--max-body-mb)",
            )
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise ServiceError(
                    413, "body_too_large", f"request body exceeds the limit of {self.limit} bytes (--max-body-mb)"
                )
            return message

        await self.app(scope, limited, send)


async def _send_error(send: Any, status: int, code: str, message: str) -> None:
    body = JSONResponse({"error": {"code": code, "message": message}}).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def image_error(index: int, name: str | None, error: ImageError) -> ServiceError:
    """415 for content that is no image, 413 for images over the pixel limit (bombs), 422 for broken images."""
    part = f"part {index}" + (f" ('{name}')" if name else "")
    if isinstance(error, ImageTooLargeError):
        return ServiceError(413, "image_too_large", f"{part}: {error.reason}")
    if error.reason.startswith("not an image"):
        return ServiceError(415, "unsupported_image", f"{part}: {error.reason}")
    return ServiceError(422, "corrupt_image", f"{part}: {error.reason}")


async def read_images(request: Request, limit: int) -> list[tuple[str | None, bytes]]:
    """The request's images: multipart parts named 'images', or JSON {"images": [{"name", "data"}]}."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await _multipart(request, limit)
        uploads = form.getlist("images")
        parts = [(getattr(u, "filename", None), await u.read()) for u in uploads if hasattr(u, "read")]
    elif content_type.startswith("application/json"):
        try:
            body = ImagesRequest.model_validate_json(await request.body())
        except ValueError as exc:
            raise ServiceError(
                422, "invalid_request", f'JSON body must be {{"images": [{{"name", "data"}}]}}: {exc}'
            ) from exc
        parts = []
        for index, image in enumerate(body.images):
            try:
                parts.append((image.name, base64.b64decode(image.data, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise ServiceError(422, "invalid_base64", f"part {index}: 'data' is not valid base64 ({exc})") from exc
    else:
        raise ServiceError(
            415,
            "unsupported_media_type",
            "send images as multipart/form-data parts named 'images', or as JSON {\"images\": [...]}",
        )
    if not parts:
        raise ServiceError(422, "no_images", "the request holds no images (multipart parts must be named 'images')")
    if len(parts) > limit:
        raise ServiceError(
            413, "too_many_images", f"the request holds {len(parts)} images; the limit is {limit} (--max-images)"
        )
    return parts


async def _multipart(request: Request, limit: int) -> Any:
    """The multipart form, its parser's own part limits answered as the documented 413."""
    try:
        return await request.form(max_files=limit + 1, max_fields=limit + 1)
    except HTTPException as exc:  # Starlette's parser refuses extra parts with a 400 of its own
        if exc.status_code == 400 and str(exc.detail).startswith(("Too many files", "Too many fields")):
            raise ServiceError(
                413,
                "too_many_images",
                f"the request holds more than {limit + 1} parts; the limit is {limit} images (--max-images)",
            ) from exc
        raise
