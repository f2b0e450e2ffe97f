"""The Ray engine on a real local Ray cluster (`ray start --head` on loopback, 2 CPUs).

Distributed extraction must give the local cache row by row; a killed actor and a killed
driver must still end in a complete, duplicate-free cache; a Ray sweep must report what a
local sweep reports.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

# The test cluster uses token authentication; Ray reads the token once per process, so it is set
# before Ray is imported (and inherited by the head, its workers and the drivers started here).
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))

import ray
from conftest import FLOWERS, NO_TOP_WEIGHTS, blobs, make_dataset, write_cache
from typer.testing import CliRunner

from embedder import (
    Backbone,
    EmbedderError,
    extract,
    open_cache,
)
from embedder.extraction import extract_ray, require_ray

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster(runtime_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-CPU Ray head on loopback with token authentication; this process joins it as a driver."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir",
            str(tmp_path_factory.mktemp("ray")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the head's GCS listens once it is up
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "ray start --head failed"
                time.sleep(0.5)
        ray.init(address=address, logging_level="WARNING")
        yield address
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops its processes on SIGTERM
        head.wait(60)


@pytest.fixture(scope="module")
def flowers(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 real photos, 40 per class: enough blocks that a kill lands mid-run."""
    root = tmp_path_factory.mktemp("flowers")
    for folder in sorted(p for p in FLOWERS.iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        for photo in sorted(folder.glob("*.jpg"))[:40]:
            shutil.copy(photo, root / folder.name / photo.name)
    return root


@pytest.fixture(scope="module")
def backbone(shared: Path) -> Backbone:
    return Backbone(size=128, weights=str(NO_TOP_WEIGHTS))


@pytest.fixture(scope="module")
def local_flowers(flowers: Path, backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "local.h5"
    extract(flowers, out, backbone, runtime="onnx", progress=False)
    return out


def assert_same_cache(ray_cache: Path, local_cache: Path) -> None:
    """Same rows (paths, hashes, labels, failures) and embeddings within 1e-4, whatever the row order."""
    with open_cache(ray_cache) as distributed, open_cache(local_cache) as local:
        assert distributed.keys == local.keys
        a, b = distributed.backbone(), local.backbone()
        paths = list(a.paths)
        assert len(paths) == len(set(paths)), "duplicated rows"
        assert sorted(paths) == sorted(b.paths)
        order = [paths.index(path) for path in b.paths]
        assert list(a.sha256[order]) == list(b.sha256)
        assert [a.class_names[i] for i in a.labels[order]] == [b.class_names[i] for i in b.labels]
        np.testing.assert_allclose(a.load()[order], b.load(), atol=1e-4, rtol=0)
        assert sorted(f[:3] for f in a.failures) == sorted(f[:3] for f in b.failures)  # stats differ for URIs
        assert a.provenance["backbone_key"] == b.provenance["backbone_key"]


def shard_files(out: Path, key: str) -> list[Path]:
    return sorted((out.parent / f"{out.name}.shards" / key).glob("*.h5"))


def test_distributed_extraction_equals_local_row_by_row(cluster: str, shared: Path, tmp_path: Path) -> None:
    source = tmp_path / "photos"
    make_dataset(source, per_class=5)
    shutil.copy(source / "red" / "red_000.jpg", source / "blue" / "copy_of_red.jpg")  # same bytes twice
    (source / "green" / "broken.jpg").write_bytes(b"not a jpeg")
    backbone = Backbone(size=96, weights=str(NO_TOP_WEIGHTS))
    local = extract(source, tmp_path / "local.h5", backbone, runtime="onnx", progress=False)

    summary = extract_ray(
        source, tmp_path / "ray.h5", backbone, address=cluster, runtime="onnx", block_size=4, progress=False
    )

    assert (summary.embedded, summary.reused, len(summary.failed)) == (local.embedded, local.reused, 1) == (15, 1, 1)
    assert_same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")
    assert shard_files(tmp_path / "ray.h5", backbone.key) == []  # merged shards are deleted

    make_dataset(source, per_class=2, start=5)  # grow the folder; read it through a file:// URI this time
    again = extract_ray(
        f"file://{source}", tmp_path / "ray.h5", backbone, address=cluster, runtime="onnx", block_size=4, progress=False
    )
    extract(source, tmp_path / "local.h5", backbone, runtime="onnx", progress=False)
    assert (again.embedded, again.cached, len(again.failed)) == (6, 16, 1)
    assert [failure.reason for failure in again.failed] == [local.failed[0].reason]
    assert_same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")


def test_killed_actor_is_replaced_and_the_cache_is_complete(
    cluster: str, flowers: Path, backbone: Backbone, local_flowers: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ray.h5"
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = extract_ray(
                flowers, out, backbone, address=cluster, runtime="onnx", block_size=8, progress=False
            )
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    driver = threading.Thread(target=run)
    driver.start()
    deadline = time.monotonic() + 300
    while not shard_files(out, backbone.key) and driver.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    first = shard_files(out, backbone.key)
    assert first, f"no shard appeared: {result}"
    with h5py.File(first[0], "r") as shard:
        victim = int(shard.attrs["pid"])
    os.kill(victim, signal.SIGKILL)  # an actor dies in the middle of the job
    driver.join(300)

    assert "error" not in result, result.get("error")
    assert len(first) < 25, "the job had finished before the kill"
    assert result["summary"].embedded == 200
    assert_same_cache(out, local_flowers)


def test_killed_driver_is_resumed_by_rerunning_the_command(
    cluster: str, flowers: Path, backbone: Backbone, local_flowers: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ray.h5"
    command = [
        sys.executable,
        "-m",
        "embedder.cli",
        "extract",
        str(flowers),
        "--out",
        str(out),
        "--size",
        "128",
        "--weights",
        str(NO_TOP_WEIGHTS),
        "--runtime",
        "onnx",
        "--engine",
        "ray",
        "--address",
        cluster,
        "--block-size",
        "8",
        "--no-progress",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while len(shard_files(out, backbone.key)) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    driver.kill()
    driver.wait()
    time.sleep(2)  # let Ray stop the dead driver's actors
    finished = shard_files(out, backbone.key)
    assert len(finished) >= 3, driver.stdout.read().decode()[-2000:]
    assert not out.exists(), "the driver finished before it was killed"

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    embedded = int(re.search(r"(\d+) embedded", rerun.stdout).group(1))
    cached = int(re.search(r"(\d+) cached", rerun.stdout).group(1))
    assert cached >= 8 * len(finished) and embedded + cached == 200  # finished shards were reused, not recomputed
    assert shard_files(out, backbone.key) == []
    assert_same_cache(out, local_flowers)


def test_ray_retries_recorded_failures_as_local_extraction_does(cluster: str, tmp_path: Path) -> None:
    from conftest import photo
    from PIL import Image

    source, tiny = tmp_path / "photos", Backbone(size=96, weights=None)
    source.mkdir()
    photo((200, 0, 0), seed=1).save(source / "small.jpg")
    Image.new("L", (2000, 2000), 100).save(source / "big.png")
    shutil.copy(source / "big.png", source / "big-copy.png")
    Image.new("L", (3000, 3000), 50).save(source / "huge.png")
    (source / "broken.jpg").write_bytes(b"not a picture")
    summaries = {}
    for name, run in (
        ("local", extract),
        ("ray", lambda *args, **kwargs: extract_ray(*args, address=cluster, **kwargs)),
    ):
        out = tmp_path / f"{name}.h5"
        runs = [
            run(source, out, tiny, runtime="onnx", max_pixels=limit, progress=False, **flags)
            for limit, flags in ((1_000_000, {}), (1_000_000, {}), (5_000_000, {}), (5_000_000, {"retry_failed": True}))
        ]
        with open_cache(out) as cache:
            rows = cache.backbone()
            final = (sorted(rows.paths), sorted((f.path, f.sha256, f.reason, f.limits) for f in rows.failures))
        summaries[name] = ([(s.embedded, s.reused, s.cached, s.retried, sorted(s.failed)) for s in runs], final)
    assert summaries["ray"] == summaries["local"]
    counts, (paths, failures) = summaries["local"]
    assert [(embedded, len(retried)) for embedded, _, _, retried, _ in counts] == [(1, 0), (0, 0), (1, 3), (0, 2)]
    assert paths == ["big-copy.png", "big.png", "small.jpg"]
    assert [(path, limits) for path, _, _, limits in failures] == [
        ("broken.jpg", ""),
        ("huge.png", '{"max_pixels": 5000000}'),
    ]


def test_ray_sweep_reports_what_a_local_sweep_reports(cluster: str, tmp_path: Path) -> None:
    from joblib.parallel import get_active_backend

    from classical import sweep
    from classical.experiments.sweep import joblib_backend

    with joblib_backend("ray", cluster):  # the searches' jobs really go to Ray
        assert type(get_active_backend()[0]).__name__ == "RayBackend"
    X, labels = blobs(per_class=20, spread=3.0)
    write_cache(tmp_path / "cache.h5", X, labels)
    grids = {"lr": {"C": [0.01, 0.1, 1.0]}, "knn": {"n_neighbors": [1, 5, 9]}}
    local = sweep(tmp_path / "cache.h5", tmp_path / "local", models=["lr", "knn"], grids=grids, cv=3, progress=False)
    distributed = sweep(
        tmp_path / "cache.h5",
        tmp_path / "ray",
        models=["lr", "knn"],
        grids=grids,
        cv=3,
        progress=False,
        engine="ray",
        address=cluster,
    )

    assert distributed["split"] == local["split"]
    for a, b in zip(distributed["models"], local["models"], strict=True):
        assert (a["name"], a["params"]) == (b["name"], b["params"])
        for metric in ("test_accuracy", "macro_f1", "cv_mean", "cv_std", "log_loss"):
            assert a[metric] == pytest.approx(b[metric], abs=1e-12), metric


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, dataset: Path, tmp_path: Path) -> None:
    from embedder.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(EmbedderError, match=re.escape('pip install "bottleneck-lab[ray]"')):
        require_ray()
    result = CliRunner().invoke(
        app,
        [
            "extract",
            str(dataset),
            "--out",
            str(tmp_path / "c.h5"),
            "--weights",
            "none",
            "--size",
            "96",
            "--engine",
            "ray",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "bottleneck-lab[ray]" in result.output
    assert not (tmp_path / "c.h5").exists()


def test_actors_asking_for_missing_gpus_are_refused(cluster: str, dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="1 GPU, the cluster has 0"):
        extract_ray(
            dataset,
            tmp_path / "c.h5",
            Backbone(size=96, weights=None),
            address=cluster,
            gpus_per_actor=1,
            progress=False,
        )
    assert not (tmp_path / "c.h5").exists()
