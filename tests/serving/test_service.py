"""The HTTP service through the real HTTP stack: API, batching, limits, auth, models, cache."""

from __future__ import annotations

import base64
import io
import logging
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset, photo
from fastapi.testclient import TestClient
from PIL import Image

from classical import ModelFileError, sweep
from embedder import Backbone, decode_image, extract, load_encoder
from serving import ServiceSettings, create_app

TINY = Backbone(size=96, weights=None)


def jpeg(seed: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    photo(color, seed=seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def files(*blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"img{i}.jpg", blob, "image/jpeg")) for i, blob in enumerate(blobs)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("service")
    make_dataset(folder / "photos", per_class=8)
    extract(folder / "photos", folder / "c.h5", TINY, progress=False)
    sweep(folder / "c.h5", folder / "run", models=["lr"], grids={"lr": {"C": [1.0]}}, cv=3, progress=False)
    from embedder import open_cache

    with open_cache(folder / "c.h5") as cache:
        cache.backbone().index()  # built once, as `embedder similar` does; the server only loads it
    return folder


@pytest.fixture(scope="module")
def client(run_dir: Path) -> TestClient:
    settings = ServiceSettings(
        backbone=TINY,
        model_dirs=[run_dir / "run"],
        cache=run_dir / "c.h5",
        max_images=4,
        max_body_bytes=2_000_000,
        max_pixels=1_000_000,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def reference(blobs: list[bytes]) -> np.ndarray:
    encoder = load_encoder(TINY, "keras")
    return encoder(np.stack([decode_image(blob, size=96) for blob in blobs]))


def test_health_readiness_and_models(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["backbone"] == TINY.key and ready["models"] == 1
    models = client.get("/v1/models").json()
    assert models["backbone"] == TINY.key
    assert [(m["name"], m["classes"]) for m in models["models"]] == [("lr", ["blue", "green", "red"])]
    assert models["models"][0]["metrics"]["test_accuracy"] > 0


def test_embeddings_multipart_json_and_float32_bytes(client: TestClient) -> None:
    blobs = [jpeg(901), jpeg(902, (30, 200, 30))]
    expected = reference(blobs)
    answer = client.post("/v1/embeddings", files=files(*blobs)).json()
    assert answer["backbone"] == TINY.key and answer["dim"] == 1280 and answer["encoding"] == "json"
    got = np.array([r["embedding"] for r in answer["results"]])
    assert [r["name"] for r in answer["results"]] == ["img0.jpg", "img1.jpg"] and not any(
        r["cached"] for r in answer["results"]
    )
    assert np.abs(got - expected).max() <= 1e-4
    body = {"images": [{"name": "a", "data": base64.b64encode(blobs[0]).decode()}]}
    packed = client.post("/v1/embeddings?encoding=base64", json=body).json()["results"][0]
    vector = np.frombuffer(base64.b64decode(packed["embedding"]), "<f4")
    assert packed["name"] == "a" and np.abs(vector - expected[0]).max() <= 1e-4
    import hashlib

    assert packed["sha256"] == hashlib.sha256(blobs[0]).hexdigest()


def test_cached_images_are_answered_from_the_cache(client: TestClient, run_dir: Path) -> None:
    from embedder import open_cache

    blob = (run_dir / "photos" / "red" / "red_003.jpg").read_bytes()
    result = client.post("/v1/embeddings", files=files(blob)).json()["results"][0]
    with open_cache(run_dir / "c.h5") as cache:
        rows = cache.backbone()
        row = list(rows.paths).index("red/red_003.jpg")
        np.testing.assert_array_equal(np.array(result["embedding"], np.float32), rows.embeddings[row])
    assert result["cached"] is True


def test_predict_with_a_loaded_model(client: TestClient) -> None:
    answer = client.post("/v1/predict/lr", files=files(jpeg(903), jpeg(904, (30, 50, 200)))).json()
    assert answer["model"] == "lr" and [r["label"] for r in answer["results"]] == ["red", "blue"]
    assert abs(sum(answer["results"][0]["probs"].values()) - 1) < 1e-6
    missing = client.post("/v1/predict/nope", files=files(jpeg(905)))
    assert missing.status_code == 404 and missing.json()["error"] == {
        "code": "unknown_model",
        "message": "no model 'nope'; loaded: lr",
    }


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code", "message"),
    [
        ({"files": files(b"just text")}, 415, "unsupported_image", "part 0 ('img0.jpg'): not an image"),
        ({"files": files(jpeg(1)[:300])}, 422, "corrupt_image", "part 0 ('img0.jpg')"),
        ({"files": files(*[jpeg(i) for i in range(5)])}, 413, "too_many_images", "holds 5 images; the limit is 4"),
        (
            {"content": b"x" * 2_100_000, "headers": {"content-type": "application/json"}},
            413,
            "body_too_large",
            "exceeds",
        ),
        ({"content": b"{}", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type", "multipart"),
        ({"json": {"images": [{"data": "%%%"}]}}, 422, "invalid_base64", "part 0"),
        ({"json": {"pictures": []}}, 422, "invalid_request", "JSON body must be"),
        ({"files": [("other", ("a.jpg", b"1", "image/jpeg"))]}, 422, "no_images", "named 'images'"),
    ],
    ids=[
        "not-an-image",
        "truncated",
        "too-many",
        "body-too-large",
        "wrong-type",
        "bad-base64",
        "bad-json",
        "no-images",
    ],
)
def test_bad_requests_get_specific_errors(
    client: TestClient, request_kwargs: dict, status: int, code: str, message: str
) -> None:
    response = client.post("/v1/embeddings", **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"]


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height 1-bit pixels in a few bytes: what a decompression bomb looks like to Pillow."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buffer, format="PNG")  # 4 Mpx, the test server allows 1
    response = client.post("/v1/embeddings", files=[("images", ("bomb.png", buffer.getvalue(), "image/png"))])
    assert response.status_code == 413 and "part 0 ('bomb.png')" in response.json()["error"]["message"]
    # 900 Mpx: over Pillow's own bomb limit (2 x 89 Mpx), which refuses it before the service's limit can
    response = client.post("/v1/embeddings", files=[("images", ("huge.png", png_header(30000, 30000), "image/png"))])
    assert response.status_code == 413, response.text
    assert (
        response.json()["error"]["code"] == "image_too_large"
        and "900000000 pixels" in response.json()["error"]["message"]
    )


def test_hundreds_of_images_get_the_documented_413(client: TestClient) -> None:
    response = client.post("/v1/embeddings", files=files(*[b"x"] * 200))  # the multipart parser stops at 5 (limit + 1)
    assert response.status_code == 413, response.text
    assert (
        response.json()["error"]["code"] == "too_many_images"
        and "(--max-images)" in response.json()["error"]["message"]
    )


def test_a_client_leaving_mid_body_is_one_log_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    body = iter(
        [
            {
                "type": "http.request",
                "body": b'--b\r\nContent-Disposition: form-data; name="images"',
                "more_body": True,
            },
            {"type": "http.disconnect"},
        ]
    )
    sent = []

    async def receive() -> dict:
        return next(body)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/embeddings",
        "raw_path": b"/v1/embeddings",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"100000")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    with caplog.at_level(logging.INFO):
        asyncio.run(client.app(scope, receive, send))  # raised before: uvicorn logged it as an ERROR with a traceback
    records = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert records[0].getMessage() == "POST /v1/embeddings: the client disconnected before sending the whole body"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_openapi_documents_every_endpoint_and_field(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {
        "/healthz",
        "/readyz",
        "/v1/models",
        "/v1/embeddings",
        "/v1/predict/{model}",
        "/v1/imagenet/top",
        "/v1/similar",
    } <= set(schema["paths"])
    body = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    fields = schema["components"]["schemas"]["EmbeddingResult"]["properties"]
    assert all(field.get("description") for field in fields.values())


def test_concurrent_requests_are_batched_and_answered_to_the_right_caller(run_dir: Path) -> None:
    settings = ServiceSettings(backbone=TINY, max_batch=8, max_wait_ms=50)
    blobs = [jpeg(1000 + i, (i * 20 % 255, 100, 255 - i * 20 % 255)) for i in range(16)]
    expected = reference(blobs)
    answers: dict[int, np.ndarray] = {}
    with TestClient(create_app(settings)) as client:

        def call(i: int) -> None:
            result = client.post("/v1/embeddings", files=files(blobs[i])).json()["results"][0]
            answers[i] = np.array(result["embedding"])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = client.get("/readyz").json()
    for i in range(16):  # each caller got its own image's embedding
        assert np.abs(answers[i] - expected[i]).max() <= 1e-4, i
    assert stats["images"] == 16 and stats["batches"] < 16  # gathered into fewer calls than requests


def test_full_queue_answers_503_with_retry_after(run_dir: Path) -> None:
    settings = ServiceSettings(backbone=TINY, max_batch=1, max_queue=1, max_wait_ms=0)
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service
        release = threading.Event()
        service.batcher._encode, real = (lambda images: (release.wait(10), real(images))[1]), service.batcher._encode
        blocked = threading.Thread(target=lambda: client.post("/v1/embeddings", files=files(jpeg(1))))
        blocked.start()
        while service.batcher.pending == 0:
            pass
        response = client.post("/v1/embeddings", files=files(jpeg(2)))
        release.set()
        blocked.join()
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "saturated"


def test_bearer_token_is_required_when_set(run_dir: Path) -> None:
    with TestClient(create_app(ServiceSettings(backbone=TINY, token="s3cret"))) as client:
        assert (
            client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        )  # probes stay open
        refused = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/openapi.json").status_code == 401  # the schema too
        assert (
            "/v1/embeddings" in client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()["paths"]
        )
        for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):  # no page that would pull Swagger UI from a CDN
            assert client.get(page, headers={"Authorization": "Bearer s3cret"}).status_code == 404


def test_model_of_another_backbone_is_refused_at_start(run_dir: Path) -> None:
    other = Backbone(size=96, weights=None, pooling="max")
    with (
        pytest.raises(
            ModelFileError, match=rf"fitted on embeddings of {TINY.key}, but this server embeds with {other.key}"
        ),
        TestClient(create_app(ServiceSettings(backbone=other, model_dirs=[run_dir / "run"]))),
    ):
        pass


def test_imagenet_endpoint_is_off_unless_enabled(client: TestClient) -> None:
    response = client.post("/v1/imagenet/top", files=files(jpeg(3)))
    assert response.status_code == 404 and "--imagenet" in response.json()["error"]["message"]


@pytest.mark.real_data
def test_imagenet_top_k_on_real_photos(keras_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import IMAGENET_LABELS, IMAGENET_PHOTOS, NO_TOP_WEIGHTS

    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    settings = ServiceSettings(
        backbone=Backbone(weights=str(NO_TOP_WEIGHTS)), imagenet=True, imagenet_labels=IMAGENET_LABELS
    )
    with TestClient(create_app(settings)) as client:
        photos = [(IMAGENET_PHOTOS / name).read_bytes() for name in ("parrot.jpg", "bird.bmp")]
        answer = client.post(
            "/v1/imagenet/top?k=3", files=[("images", (f"{i}", b, "image/jpeg")) for i, b in enumerate(photos)]
        )
    tops = [[c["name"] for c in r["top"]] for r in answer.json()["results"]]
    assert tops[0][0] == "macaw" and tops[1][0] == "chickadee" and len(tops[0]) == 3


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_real_server_finishes_in_flight_requests_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "serve",
            "--port",
            str(port),
            "--size",
            "96",
            "--weights",
            "none",
            "--max-wait-ms",
            "1500",
        ],  # a lone image waits 1.5 s for company: the request is in flight
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        answer = {}
        request = threading.Thread(
            target=lambda: answer.update(response=httpx.post(f"{base}/v1/embeddings", files=files(jpeg(7)), timeout=30))
        )
        request.start()
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        request.join()
        status = server.wait(timeout=30)  # uvicorn re-raises SIGTERM once it has shut down cleanly
        assert status in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
    assert answer["response"].status_code == 200 and len(answer["response"].json()["results"][0]["embedding"]) == 1280
    log = server.stderr.read()
    assert "Shutting down" in log and "Application shutdown complete" in log and "Finished server process" in log


def test_similar_answers_the_nearest_cached_photos_as_the_cli_does(client: TestClient, run_dir: Path) -> None:
    from embedder import open_cache

    with open_cache(run_dir / "c.h5") as cache:
        rows = cache.backbone()
        photo = run_dir / "photos" / str(rows.paths[0])
        expected = rows.search_files([photo], k=3)[0]
    answer = client.post("/v1/similar?k=3", files=files(photo.read_bytes(), jpeg(7))).json()
    assert answer["k"] == 3 and len(answer["results"]) == 2
    got = answer["results"][0]["neighbours"]
    assert [n["path"] for n in got] == [m.path for m in expected]
    assert got[0]["similarity"] == pytest.approx(1.0, abs=1e-4) and got[0]["label"] == expected[0].label
    assert all(len(r["neighbours"]) == 3 for r in answer["results"])
    assert client.post("/v1/similar?k=0", files=files(jpeg(1))).json()["error"]["code"] == "invalid_request"
    bad = client.post("/v1/similar", files=files(b"not an image"))
    assert 400 <= bad.status_code < 500 and "error" in bad.json()


def test_similar_without_a_cache_is_a_clear_503(run_dir: Path) -> None:
    settings = ServiceSettings(backbone=TINY)
    with TestClient(create_app(settings)) as test_client:
        answer = test_client.post("/v1/similar", files=files(jpeg(1)))
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "not_enabled" and "--cache" in answer.json()["error"]["message"]
