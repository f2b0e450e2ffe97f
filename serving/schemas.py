"""The service's request and response bodies, documented field by field in its OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
    embedding: list[float] | str = Field(
        description="float list, or base64 of little-endian float32 with encoding=base64."
    )


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


class Neighbour(BaseModel):
    path: str = Field(description="The cached photo's path, as stored in the cache.")
    similarity: float = Field(description="Cosine similarity of the power-normalised embeddings (1 = identical).")
    label: str = Field(description="Its class name in the cache ('' when unlabelled).")


class SimilarResult(BaseModel):
    index: int
    name: str | None
    sha256: str
    neighbours: list[Neighbour] = Field(description="The nearest cached photos, best first.")


class SimilarResponse(BaseModel):
    backbone: str
    k: int
    results: list[SimilarResult]


class ModelInfo(BaseModel):
    name: str
    kind: str | None = Field(description="'classical', 'neural' or 'exported' (an ONNX file of `classical export`).")
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
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One part per image, all named 'images'.",
                        }
                    },
                }
            },
            "application/json": {"schema": ImagesRequest.model_json_schema()},
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 404, 413, 415, 422, 503)
}
