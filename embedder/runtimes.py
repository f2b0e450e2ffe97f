"""Inference runtimes behind one interface: uint8 images (n, size, size, 3) in, float32 embeddings out.

Runtimes, all running models exported from the backbone's own Keras model:
- "keras": the reference, the Keras model in a `tf.function` (inference mode, no per-call leaks);
- "onnx": ONNX Runtime on the model exported with tf2onnx (cached on disk per backbone key);
- "openvino": OpenVINO on that same ONNX model.

The fast runtimes run a batch as chunks of a few images on one single-threaded stream per core.

Precisions:
- "fp32" (default): every fp32 runtime must match the Keras reference on fixed test images
  (cosine >= 0.99999, max abs difference <= 1e-4 x max(1, RMS of the reference): 1e-4 for
  avg-pooled embeddings), so fp32 embeddings of any runtime share one cache key;
- "bf16" (OpenVINO's bf16 inference) and "int8" (ONNX Runtime's static post-training
  quantization, calibrated on real images, run by OpenVINO or ONNX Runtime): only when asked. Their
  embeddings differ from fp32, so their cache key names the precision and the runtime (and, for
  int8, the calibration images' digest), and they never mix with fp32 rows.

"auto" picks, for the precision asked, the fastest runtime that is installed and (for fp32)
passes the parity check; throughputs are measured once per backbone key and remembered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedder.backbone import PRECISION, Backbone
from embedder.errors import RuntimeUnavailableError

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "keras", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
CANDIDATES = {"fp32": ("onnx", "openvino", "keras"), "bf16": ("openvino",), "int8": ("openvino", "onnx")}
PARITY_MAX_ABS = 1e-4
PARITY_MIN_COSINE = 0.99999
CALIBRATION_IMAGES = 128


class Encoder(Protocol):
    """Turns a uint8 batch (n, size, size, 3) into float32 embeddings (n, dim)."""

    runtime: str
    precision: str
    key: str  # the cache key of the embeddings it produces
    calibration: str  # digest of the int8 calibration images ("" otherwise)

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def reduced_key(backbone: Backbone, precision: str, runtime: str, calibration: str = "") -> str:
    """Cache key of reduced-precision embeddings: the backbone's key with precision and runtime."""
    detail = f"{precision}-{calibration[:8]}" if calibration else precision
    return f"{backbone.key.removesuffix('-' + PRECISION)}-{detail}-{runtime}"


class KerasEncoder:
    """The reference runtime: the backbone's Keras model traced once into a `tf.function`."""

    runtime, precision, calibration = "keras", "fp32", ""

    def __init__(self, backbone: Backbone) -> None:
        import tensorflow as tf

        model = backbone.model
        spec = tf.TensorSpec([None, backbone.size, backbone.size, 3], tf.uint8, name="images")
        self._function = tf.function(lambda images: model(images, training=False), input_signature=[spec])
        self.key = backbone.key

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._function(images), dtype=np.float32)


CHUNK = 4  # images per single-threaded inference call


def chunks_of(images: np.ndarray, streams: int) -> list[np.ndarray]:
    """A batch cut into chunks of at most CHUNK images, spread over the streams even when small."""
    size = max(1, min(CHUNK, -(-len(images) // streams)))
    return [images[start : start + size] for start in range(0, len(images), size)]


class OnnxEncoder:
    """ONNX Runtime on an exported (fp32) or quantized (int8) model, run by `threads` parallel streams.

    A batch runs as small chunks, each single-threaded, on `threads` streams at once: small
    chunks stay in the CPU caches, and independent streams never wait for each other at every
    layer as the threads of one multi-threaded call do (on 2 cores: 2 streams of 4 images about
    275 images/s, one 2-thread call on 32 images about 245). Safe to call from several threads.
    """

    runtime = "onnx"

    def __init__(self, path: Path, *, key: str, precision: str = "fp32", calibration: str = "",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.threads = max(1, threads or os.cpu_count() or 1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # a run stays in its caller's thread: the streams are the parallelism
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._streams = ThreadPoolExecutor(self.threads, thread_name_prefix="embedder-onnx")
        self.key, self.precision, self.calibration = key, precision, calibration

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        chunks = chunks_of(images, self.threads)
        if len(chunks) <= 1:
            return self._run(images)
        return np.concatenate(list(self._streams.map(self._run, chunks)))

    def _run(self, images: np.ndarray) -> np.ndarray:
        """One uint8 chunk, single-threaded in the calling thread."""
        return self._session.run(None, {self._input: images})[0]


class OpenVinoEncoder:
    """OpenVINO on the same ONNX model: a batch runs as small chunks on the CPU plugin's parallel streams.

    OpenVINO's own asynchronous queue feeds the streams; calls from several threads take turns,
    because concurrent synchronous requests can deadlock in OpenVINO's Python layer.
    """

    runtime = "openvino"

    def __init__(self, path: Path, *, key: str, precision: str = "fp32", calibration: str = "",
                 threads: int | None = None) -> None:
        import openvino as ov

        self.threads = max(1, threads or os.cpu_count() or 1)
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(runtime_cache_dir() / "openvino")})  # compiled blobs, reused
        config = {"NUM_STREAMS": self.threads, "INFERENCE_NUM_THREADS": self.threads,
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        self._queue = ov.AsyncInferQueue(core.compile_model(str(path), "CPU", config), self.threads)
        self._lock = threading.Lock()
        self.key, self.precision, self.calibration = key, precision, calibration

    def __call__(self, images: np.ndarray) -> np.ndarray:
        chunks = chunks_of(np.ascontiguousarray(images, dtype=np.uint8), self.threads)
        outputs: list[np.ndarray] = [np.empty(0)] * len(chunks)

        def collect(request: Any, index: int) -> None:
            outputs[index] = request.get_output_tensor(0).data.copy()

        with self._lock:
            self._queue.set_callback(collect)
            for index, chunk in enumerate(chunks):
                self._queue.start_async({0: chunk}, index)
            self._queue.wait_all()
        return np.concatenate(outputs)


def runtime_cache_dir() -> Path:
    """Folder for exported models: $EMBEDDER_CACHE_DIR, else $XDG_CACHE_HOME/bottleneck-lab."""
    if "EMBEDDER_CACHE_DIR" in os.environ:
        return Path(os.environ["EMBEDDER_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "bottleneck-lab"


def parity_images(size: int, count: int = 8) -> np.ndarray:
    """Fixed test images for parity checks: smooth gradients, blocks and noise, seeded."""
    rng = np.random.default_rng(1234)
    ramp = np.linspace(0, 255, size)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        gradient = np.stack([np.add.outer(ramp * (c + 1) / 3, ramp * (i % 3) / 2) % 256 for c in range(3)], -1)
        blocks = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
        noise = rng.normal(0, 20, (size, size, 3))
        mix = gradient if i % 2 else blocks
        images[i] = np.clip(mix + noise, 0, 255).astype(np.uint8)
    return images


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute difference, minimum row cosine and the reference's RMS, for parity checks."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)
    return {
        "max_abs": float(np.max(np.abs(reference - candidate))),
        "min_cosine": float(np.min(cosine)),
        "reference_rms": float(np.sqrt(np.mean(reference**2))),
    }


def within_parity(parity: dict[str, float]) -> bool:
    """True when a runtime's embeddings are interchangeable with the Keras reference."""
    tolerance = PARITY_MAX_ABS * max(1.0, parity["reference_rms"])
    return parity["max_abs"] <= tolerance and parity["min_cosine"] >= PARITY_MIN_COSINE


def onnx_path(backbone: Backbone) -> Path:
    return runtime_cache_dir() / "onnx" / f"{backbone.key}.onnx"


def export_onnx(backbone: Backbone, path: Path) -> dict[str, float]:
    """Export the backbone's Keras model to ONNX at `path` (atomically) and check it against Keras."""
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    started = time.perf_counter()
    model = backbone.model
    spec = tf.TensorSpec([None, backbone.size, backbone.size, 3], tf.uint8, name="images")
    function = tf.function(lambda images: model(images, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=17)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(proto.SerializeToString())
    images = parity_images(backbone.size)
    parity = compare(KerasEncoder(backbone)(images), OnnxEncoder(tmp, key=backbone.key)(images))
    report = {**parity, "export_seconds": time.perf_counter() - started, "backbone_key": backbone.key}
    if not within_parity(parity):
        tmp.unlink()
        raise RuntimeUnavailableError(
            f"the ONNX export of {backbone.key} differs from Keras (max abs {parity['max_abs']:.2e}, "
            f"min cosine {parity['min_cosine']:.7f}); use --runtime keras."
        )
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    logger.info("exported %s to ONNX in %.1fs (max abs diff %.1e)", backbone.key, report["export_seconds"], parity["max_abs"])
    return report


def fp32_model(backbone: Backbone) -> Path:
    """The parity-checked ONNX export of the backbone, exported on first use."""
    path = onnx_path(backbone)
    if not path.is_file():
        export_onnx(backbone, path)
    return path


def digest_files(images: Sequence[Path]) -> str:
    """Identity of a calibration set: sha256 over the sorted sha256 of its files' bytes."""
    hashes = sorted(hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in images)
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def int8_path(backbone: Backbone, digest: str) -> Path:
    return runtime_cache_dir() / "onnx" / f"{backbone.key}-int8-{digest[:16]}.onnx"


def int8_model(backbone: Backbone, calibration: Sequence[Path], digest: str | None = None) -> tuple[Path, str]:
    """The int8 model calibrated on `calibration` (static, per-channel, QDQ), quantized on first use.

    With a known `digest` whose model is cached, the calibration files are not read at all.
    """
    if digest and int8_path(backbone, digest).is_file():
        return int8_path(backbone, digest), digest
    digest = digest_files(calibration)
    path = int8_path(backbone, digest)
    if path.is_file():
        return path, digest
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from embedder.pipeline import default_workers, load_file, ordered_map

    loaded = list(ordered_map(lambda p: load_file(Path(p), size=backbone.size, resize=backbone.resize), calibration,
                              workers=default_workers(), prefetch=32))
    pixels = np.stack([item.pixels for item in loaded if item.pixels is not None])

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(pixels, max(1, len(pixels) // 16)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    started = time.perf_counter()
    prepared = path.with_name(f"{path.name}.prepared-{os.getpid()}")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        quant_pre_process(str(fp32_model(backbone)), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(tmp), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        os.replace(tmp, path)
    finally:
        prepared.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    logger.info("quantized %s to int8 on %d images in %.1fs", backbone.key, len(pixels), time.perf_counter() - started)
    return path, digest


def _installed(runtime: str) -> bool:
    module = {"keras": "tensorflow", "onnx": "onnxruntime", "openvino": "openvino"}[runtime]
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _build(backbone: Backbone, runtime: str, precision: str, calibration: Sequence[Path] | None,
           digest: str | None, threads: int | None) -> Encoder:
    """One encoder; fp32 fast runtimes are checked against the Keras reference once per key."""
    if precision not in CANDIDATES or runtime not in CANDIDATES[precision]:
        supported = ", ".join(f"{p}: {'/'.join(r)}" for p, r in CANDIDATES.items())
        raise RuntimeUnavailableError(f"runtime '{runtime}' does not run precision '{precision}' (supported: {supported}).")
    if not _installed(runtime):
        raise RuntimeUnavailableError(f"runtime '{runtime}' is not installed; pip install it, or choose another --runtime.")
    if runtime == "keras":
        return KerasEncoder(backbone)
    encoder_class = OnnxEncoder if runtime == "onnx" else OpenVinoEncoder
    if precision == "int8":
        if not calibration and not (digest and int8_path(backbone, digest).is_file()):
            raise RuntimeUnavailableError("precision 'int8' needs calibration images (real photos like the ones to embed).")
        path, digest = int8_model(backbone, calibration or [], digest)
        return encoder_class(path, key=reduced_key(backbone, precision, runtime, digest), precision=precision,
                             calibration=digest, threads=threads)
    path = fp32_model(backbone)
    if precision == "bf16":
        return encoder_class(path, key=reduced_key(backbone, precision, runtime), precision=precision, threads=threads)
    encoder = encoder_class(path, key=backbone.key, threads=threads)
    if runtime != "onnx":  # the ONNX export itself was checked when exported
        images = parity_images(backbone.size)
        parity = compare(np.asarray(OnnxEncoder(path, key=backbone.key)(images)), encoder(images))
        if not within_parity(parity):
            raise RuntimeUnavailableError(f"runtime '{runtime}' differs from the reference on {backbone.key} "
                                          f"(max abs {parity['max_abs']:.2e}); choose another --runtime.")
    return encoder


def _throughput(encoder: Encoder, size: int) -> float:
    """Images per second of an encoder on a batch of 32 test images (after a warm-up call)."""
    batch = np.concatenate([parity_images(size)] * 4)
    encoder(batch)
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < 1.5 or calls < 2:
        encoder(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - started)


def load_encoder(
    backbone: Backbone,
    runtime: str = "auto",
    *,
    precision: str = "fp32",
    calibration: Sequence[Path] | None = None,
    calibration_digest: str | None = None,
    threads: int | None = None,
) -> Encoder:
    """The encoder for `runtime` and `precision`; "auto" measures the candidates once and keeps the fastest.

    int8 needs `calibration` images, or the `calibration_digest` of an int8 model already quantized.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}. Received: runtime={runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}. Received: precision={precision!r}")
    if runtime != "auto":
        return _build(backbone, runtime, precision, calibration, calibration_digest, threads)
    choice_file = runtime_cache_dir() / "auto" / f"{backbone.key}-{precision}.json"
    if choice_file.is_file():
        choice = json.loads(choice_file.read_text())["runtime"]
        return _build(backbone, choice, precision, calibration, calibration_digest, threads)
    measured, problems = {}, []
    for candidate in CANDIDATES[precision]:
        if candidate == "keras" and measured:
            continue  # the reference is the slowest; it is only the fallback
        try:  # one candidate in memory at a time: peak memory is that of one runtime
            measured[candidate] = _throughput(
                _build(backbone, candidate, precision, calibration, calibration_digest, threads), backbone.size)
        except (RuntimeUnavailableError, ImportError) as exc:
            problems.append(str(exc))
    if not measured:
        raise RuntimeUnavailableError(f"no runtime can run precision '{precision}': {' '.join(problems)}")
    if problems and precision == "fp32":
        logger.warning("%s", " ".join(problems))
    best = max(measured, key=measured.get)
    choice_file.parent.mkdir(parents=True, exist_ok=True)
    choice_file.write_text(json.dumps({"runtime": best, "images_per_second": measured}, indent=2))
    logger.info("runtime for %s %s: %s (images/s measured: %s)", backbone.key, precision, best,
                {name: round(rate) for name, rate in measured.items()})
    return _build(backbone, best, precision, calibration, calibration_digest, threads)
