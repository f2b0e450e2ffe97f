"""Load test of `embedder serve` on loopback, next to batch extraction measured in the same run.

Starts the server (shared real weights), then 1, 8 and 32 concurrent clients each send real
photos, one image per request (multipart), for a fixed time: requests/s, images/s, latency
percentiles, errors, and the server's resident memory sampled every 5 s (flat or growing?).
The batch rate is `embedder.extract` on the same photos, in this run.

    python benchmarks/serve.py [--seconds 20] [--long-seconds 120]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def multipart(photo: bytes) -> tuple[bytes, bytes]:
    """A ready-made multipart body with one part named 'images', and its content type."""
    boundary = b"bottleneck-lab-load"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="images"; filename="p.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--" + boundary + b"--\r\n"
    )
    return body, b"multipart/form-data; boundary=" + boundary


async def load(port: int, photos: list[bytes], clients: int, seconds: float, pid: int) -> dict:
    """`clients` keep-alive connections posting one photo per request until `seconds` have passed.

    A minimal asyncio HTTP/1.1 client with pre-built requests: on 2 shared cores, a heavier
    client would take CPU from the server it measures.
    """
    requests = []
    for photo in photos:
        body, content_type = multipart(photo)
        requests.append(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            + content_type
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
    latencies: list[float] = []
    errors = 0
    memory: list[float] = []
    stop = time.monotonic() + seconds

    async def client(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while time.monotonic() < stop:
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            errors += status != 200
            i += clients
        writer.close()

    async def watch() -> None:
        while time.monotonic() < stop:
            memory.append(rss_mb(pid))
            await asyncio.sleep(5)

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(watch(), *(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "p50": np.percentile(ms, 50),
        "p95": np.percentile(ms, 95),
        "p99": np.percentile(ms, 99),
        "memory": memory,
        "client_cpu": (time.process_time() - cpu) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument(
        "--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")
    )
    parser.add_argument("--seconds", type=float, default=20, help="duration at 1 and 8 clients")
    parser.add_argument("--long-seconds", type=float, default=120, help="duration at 32 clients (memory watch)")
    parser.add_argument("--max-wait-ms", type=float, default=5, help="the server's batching window")
    parser.add_argument("--server-args", default="", help="more `embedder serve` options, e.g. '--threads 1'")
    args = parser.parse_args()
    import httpx

    from embedder import Backbone, extract

    photos = [p.read_bytes() for p in sorted(args.source.rglob("*.jpg"))]
    with tempfile.TemporaryDirectory() as tmp:
        summary = extract(args.source, Path(tmp) / "batch.h5", Backbone(weights=args.weights), progress=False)
    batch_rate = summary.images_per_second
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "serve",
            "--port",
            str(port),
            "--weights",
            args.weights,
            "--max-wait-ms",
            str(args.max_wait_ms),
            *args.server_args.split(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        runtime = httpx.get(f"{base}/readyz").json()["runtime"]
        results = [
            asyncio.run(load(port, photos, clients, args.seconds if clients < 32 else args.long_seconds, server.pid))
            for clients in (1, 8, 32)
        ]
        batches = httpx.get(f"{base}/readyz").json()
        peak = rss_mb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait()
    print(
        f"batch extraction (embedder.extract, {summary.runtime}): {batch_rate:.0f} images/s on {summary.embedded} photos"
    )
    print(
        f"server: runtime {runtime}, max batch 32, max wait {args.max_wait_ms:g} ms; one photo per request; {os.cpu_count()} cores shared "
        "by server and clients\n"
    )
    print(
        f"{'clients':>8}{'requests':>10}{'req/s':>8}{'images/s':>10}{'x batch':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
        f"{'errors':>8}{'client CPU':>12}"
    )
    for r in results:
        print(
            f"{r['clients']:>8}{r['requests']:>10}{r['rps']:>8.1f}{r['rps']:>10.1f}{r['rps'] / batch_rate:>9.2f}"
            f"{r['p50']:>8.0f}{r['p95']:>8.0f}{r['p99']:>8.0f}{r['errors']:>8}{100 * r['client_cpu']:>10.0f} %"
        )
    memory = results[-1]["memory"]
    print(
        f"\nserver RSS during the {args.long_seconds:.0f} s run at 32 clients (every 5 s): "
        f"{', '.join(f'{m:.0f}' for m in memory)} MB"
    )
    print(
        f"after warm-up (10 s) {memory[2]:.0f} MB, at the end {memory[-1]:.0f} MB: {memory[-1] - memory[2]:+.0f} MB; "
        f"server peak RSS {peak:.0f} MB; mean batch {batches['images'] / max(1, batches['batches']):.1f} images"
    )


if __name__ == "__main__":
    main()
