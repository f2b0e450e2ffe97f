"""The runtimes behind one interface: uint8 images (n, size, size, 3) in, float32 embeddings out.

- "keras": the reference, the Keras model in a `tf.function` (inference mode, no per-call leaks);
- "onnx": ONNX Runtime on the model exported with tf2onnx (see `embedder.runtimes.exports`);
- "openvino": OpenVINO on that same ONNX model.

The fast runtimes run a batch as chunks of a few images on one single-threaded stream per core.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedder.backbone import PRECISION, Backbone, uint8_function


def runtime_cache_dir() -> Path:
    """Folder for exported models: $EMBEDDER_CACHE_DIR, else $XDG_CACHE_HOME/bottleneck-lab."""
    if "EMBEDDER_CACHE_DIR" in os.environ:
        return Path(os.environ["EMBEDDER_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "bottleneck-lab"


class Encoder(Protocol):
    """Turns a uint8 batch (n, size, size, 3) into float32 embeddings (n, dim)."""

    precision: str
    key: str  # the cache key of the embeddings it produces
    calibration: str  # digest of the int8 calibration images ("" otherwise)

    @property
    def runtime(self) -> str: ...  # a property, so the Handover can change it

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def reduced_key(backbone: Backbone, precision: str, runtime: str, calibration: str = "") -> str:
    """Cache key of reduced-precision embeddings: the backbone's key with precision and runtime."""
    detail = f"{precision}-{calibration[:8]}" if calibration else precision
    return f"{backbone.key.removesuffix('-' + PRECISION)}-{detail}-{runtime}"


class KerasEncoder:
    """The reference runtime: the backbone's Keras model traced once into a `tf.function`."""

    runtime, precision, calibration = "keras", "fp32", ""

    def __init__(self, backbone: Backbone) -> None:
        self.function = uint8_function(backbone.model, backbone.size)  # the ONNX export converts this same trace
        self.key = backbone.key

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.function(images), dtype=np.float32)


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

    def __init__(
        self, path: Path, *, key: str, precision: str = "fp32", calibration: str = "", threads: int | None = None
    ) -> None:
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

    def __init__(
        self, path: Path, *, key: str, precision: str = "fp32", calibration: str = "", threads: int | None = None
    ) -> None:
        import openvino as ov

        self.threads = max(1, threads or os.cpu_count() or 1)
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(runtime_cache_dir() / "openvino")})  # compiled blobs, reused
        config = {
            "NUM_STREAMS": self.threads,
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
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
