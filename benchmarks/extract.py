"""Extraction speed and memory: `embedder.extract` against the tutorial way, in one run.

The tutorial way is `keras.utils.image_dataset_from_directory` + `model.predict` + `np.save`.
Each contender runs in its own process, so peak RSS is its own; images/s are measured around
the work only (imports and model building excluded) and, separately, for the whole process.

    python benchmarks/extract.py                      # ../shared/data/flowers, shared weights
    python benchmarks/extract.py --source DIR --weights FILE --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))


def tutorial(source: Path, weights: str, out: Path, size: int) -> dict:
    """The classic recipe: a tf.data pipeline from the folder, model.predict, np.save."""
    import keras
    import numpy as np
    from keras.applications import mobilenet_v2

    base = mobilenet_v2.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=weights, pooling="avg")
    inputs = keras.Input((size, size, 3))
    model = keras.Model(inputs, base(mobilenet_v2.preprocess_input(inputs), training=False))
    started = time.perf_counter()
    dataset = keras.utils.image_dataset_from_directory(source, image_size=(size, size), batch_size=32, shuffle=False, verbose=False)
    embeddings = model.predict(dataset.map(lambda x, y: x), verbose=0)
    np.save(out, embeddings)
    return {"images": len(embeddings), "seconds": time.perf_counter() - started}


def embedder_extract(source: Path, weights: str, out: Path, size: int, runtime: str) -> dict:
    """This project: streaming decode, fast runtime, HDF5 cache; then a fully cached rerun."""
    from embedder import Backbone, extract

    backbone = Backbone(size=size, weights=weights)
    started = time.perf_counter()
    summary = extract(source, out, backbone, runtime=runtime, progress=False)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    rerun = extract(source, out, backbone, runtime=runtime, progress=False)
    rerun_seconds = time.perf_counter() - started
    assert rerun.embedded == 0 and rerun.cached == summary.embedded
    return {"images": summary.embedded, "seconds": seconds, "rerun_seconds": rerun_seconds, "runtime": summary.runtime}


def run_worker(kind: str, args: argparse.Namespace, out: Path) -> dict:
    """Run one contender in a fresh process; add whole-process time and its own peak RSS."""
    command = [sys.executable, __file__, "--worker", kind, "--source", str(args.source), "--weights", args.weights,
               "--size", str(args.size), "--runtime", args.runtime, "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} failed (status {status}): {output}")
    result = json.loads(output.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--runs", type=int, default=1, help="alternate the contenders this many times; best run kept")
    parser.add_argument("--worker", choices=["tutorial", "embedder"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "tutorial":
        print(json.dumps(tutorial(args.source, args.weights, args.out, args.size)))
        return
    if args.worker == "embedder":
        print(json.dumps(embedder_extract(args.source, args.weights, args.out, args.size, args.runtime)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        # one-time cost per backbone key: the exported fast model (cached on disk afterwards)
        warm = run_worker("embedder", args, Path(tmp) / "warm.h5")
        results: dict[str, list[dict]] = {"tutorial": [], "embedder": []}
        for run in range(args.runs):
            for kind in results:
                out = Path(tmp) / f"{kind}-{run}.{'npy' if kind == 'tutorial' else 'h5'}"
                results[kind].append(run_worker(kind, args, out))
    tutorial_best = min(results["tutorial"], key=lambda r: r["seconds"])
    ours = min(results["embedder"], key=lambda r: r["seconds"])
    images = ours["images"]
    print(f"{images} photos from {args.source}, MobileNetV2 1.0/{args.size}, pooled, batch 32, {os.cpu_count()} cores")
    print(f"first run with a new backbone (ONNX export included): {warm['process_seconds']:.1f} s as a whole process\n")
    print(f"{'':30} {'in-process':>12} {'images/s':>9} {'whole process':>14} {'peak RSS':>9}")
    for name, result in [("tutorial (tf.data + predict)", tutorial_best), (f"embedder extract ({ours['runtime']})", ours)]:
        print(f"{name:30} {result['seconds']:>10.2f} s {images / result['seconds']:>9.0f} "
              f"{result['process_seconds']:>12.2f} s {result['peak_rss_mb']:>7.0f} MB")
    print(f"\nspeed-up, in-process:    {tutorial_best['seconds'] / ours['seconds']:.2f}x")
    print(f"speed-up, whole process: {tutorial_best['process_seconds'] / ours['process_seconds']:.2f}x")
    print(f"peak RSS ratio:          {ours['peak_rss_mb'] / tutorial_best['peak_rss_mb']:.2f}")
    print(f"cached rerun:            {ours['rerun_seconds'] * 1000:.0f} ms, "
          f"{ours['seconds'] / ours['rerun_seconds']:.0f}x faster than extraction")


if __name__ == "__main__":
    main()
