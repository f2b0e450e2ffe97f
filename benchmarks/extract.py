"""Extraction speed, memory and reduced-precision quality, every figure measured in this one run.

For the flower photos (and a 2,500-photo set: the flowers plus their mirror images), each
contender runs in its own process so that its peak RSS is its own:

- the tutorial way: `image_dataset_from_directory` + `model.predict` + `np.save`;
- `embedder.extract` (files on disk to HDF5) for each runtime and precision, next to the pure
  inference rate of the same runtime on pre-decoded arrays (same batch size);
- the linear-probe accuracy (logistic regression, 5-fold CV over all photos) of each precision;
- peak RSS for 1,000 photos vs all 2,500; a fully cached rerun; opening a cache and loading it.

    python benchmarks/extract.py [--source DIR] [--weights FILE] [--skip-doubled]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))
CONTENDERS = [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"), ("onnx", "int8")]
BATCH = 32


# ------------------------------------------------------------------ workers (one process each)

def work_tutorial(source: Path, weights: str, out: Path) -> dict:
    import keras
    from keras.applications import mobilenet_v2

    base = mobilenet_v2.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=weights, pooling="avg")
    inputs = keras.Input((224, 224, 3))
    model = keras.Model(inputs, base(mobilenet_v2.preprocess_input(inputs), training=False))
    started = time.perf_counter()
    dataset = keras.utils.image_dataset_from_directory(source, image_size=(224, 224), batch_size=BATCH, shuffle=False,
                                                       verbose=False)
    embeddings = model.predict(dataset.map(lambda x, y: x), verbose=0)
    np.save(out, embeddings)
    return {"images": len(embeddings), "seconds": time.perf_counter() - started}


def work_extract(source: Path, weights: str, out: Path, runtime: str, precision: str, limit: int | None) -> dict:
    from embedder import Backbone, extract

    if limit:  # the first `limit` photos, as a list file
        listing = out.with_suffix(".txt")
        listing.write_text("\n".join(str(p) for p in sorted(source.rglob("*.jpg"))[:limit]))
        source = listing
    backbone = Backbone(weights=weights)
    started = time.perf_counter()
    summary = extract(source, out, backbone, runtime=runtime, precision=precision, progress=False)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    rerun = extract(source, out, backbone, runtime=runtime, precision=precision, progress=False)
    rerun_seconds = time.perf_counter() - started
    assert rerun.embedded == 0 and summary.failed == []
    return {"images": summary.embedded, "seconds": seconds, "rerun_seconds": rerun_seconds, "key": summary.backbone_key}


def work_pure(source: Path, weights: str, runtime: str, precision: str, calibration: str) -> dict:
    """Inference alone: the same encoder on photos decoded beforehand, in batches of 32."""
    from embedder import Backbone, decode_image, load_encoder

    backbone = Backbone(weights=weights)
    files = [Path(f) for f in json.loads(calibration)] if calibration else None
    encoder = load_encoder(backbone, runtime, precision=precision, calibration=files)
    photos = sorted(source.rglob("*.jpg"))[:256]
    pixels = np.stack([decode_image(p.read_bytes(), size=224) for p in photos])
    encoder(pixels[:BATCH])
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < 8:
        for start in range(0, len(pixels), BATCH):
            encoder(pixels[start : start + BATCH])
        done += len(pixels)
    return {"images_per_second": done / (time.perf_counter() - started)}


def peak_rss_worker(*args: str) -> dict:
    """Run this script as a worker process; its JSON result plus wall time and its own peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--worker", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    output = process.stdout.read()
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"worker {args} failed:\n{errors[-3000:]}")
    result = json.loads(output.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


# ------------------------------------------------------------------ measurements in the parent

def linear_probe(cache: Path, key: str, folds: dict[str, int]) -> float:
    """Linear-probe accuracy: logistic regression, 5-fold CV over every photo (the same folds for all)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from embedder import open_cache

    with open_cache(cache) as opened:
        rows = opened[key]
        X, y, paths = rows.load(), rows.labels, list(rows.paths)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    split = PredefinedSplit([folds[path] for path in paths])
    return float(cross_val_score(model, X, y, cv=split, n_jobs=-1).mean())


def open_and_load_seconds(cache: Path) -> float:
    from embedder import open_cache

    started = time.perf_counter()
    with open_cache(cache) as opened:
        rows = opened.backbone(opened.keys[0])
        rows.load(), rows.labels, rows.paths
    return time.perf_counter() - started


def doubled(source: Path, folder: Path) -> Path:
    from PIL import Image, ImageOps

    for photo in sorted(source.glob("*/*.jpg")):
        (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / photo.parent.name / photo.name).symlink_to(photo.resolve())
        ImageOps.mirror(Image.open(photo)).save(folder / photo.parent.name / f"mirror_{photo.name}", quality=90)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"))
    parser.add_argument("--skip-doubled", action="store_true", help="skip the 2,500-photo whole-process and memory runs")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, rest = args.worker[0], args.worker[1:]
        if kind == "tutorial":
            print(json.dumps(work_tutorial(Path(rest[0]), rest[1], Path(rest[2]))))
        elif kind == "extract":
            print(json.dumps(work_extract(Path(rest[0]), rest[1], Path(rest[2]), rest[3], rest[4], int(rest[5]) or None)))
        else:
            print(json.dumps(work_pure(Path(rest[0]), rest[1], rest[2], rest[3], rest[4])))
        return

    from sklearn.model_selection import StratifiedKFold

    from classical import load_labeled
    from embedder import open_cache

    source, weights = args.source, args.weights
    tmp = Path(tempfile.mkdtemp(prefix="speed-"))
    lines = [f"{len(list(source.rglob('*.jpg')))} photos of {source}, MobileNetV2 1.0/224 avg-pooled, batch {BATCH}, "
             f"{os.cpu_count()} cores; each contender in its own process", ""]
    # warm-up: exports, quantization and the runtime choice are one-time costs per backbone key
    for runtime, precision in [*CONTENDERS, ("auto", "fp32")]:
        peak_rss_worker("extract", str(source), weights, str(tmp / f"warm-{runtime}-{precision}.h5"), runtime, precision, "0")
    tutorials = [peak_rss_worker("tutorial", str(source), weights, str(tmp / "tutorial.npy"))]
    rows, probes = [], {}
    for runtime, precision in CONTENDERS:
        runs = []
        for attempt in range(2 if precision == "fp32" and runtime == "onnx" else 1):  # the default: best of 2
            out = tmp / f"{runtime}-{precision}-{attempt}.h5"
            runs.append(peak_rss_worker("extract", str(source), weights, str(out), runtime, precision, "0"))
        extracted = min(runs, key=lambda run: run["seconds"])
        with open_cache(out) as opened:
            calibration = opened[extracted["key"]].provenance.get("calibration_files", "")
        pure = peak_rss_worker("pure", str(source), weights, runtime, precision, calibration)
        rows.append((runtime, precision, extracted, pure))
        probes[(runtime, precision)] = (out, extracted["key"])
    tutorials.append(peak_rss_worker("tutorial", str(source), weights, str(tmp / "tutorial.npy")))
    tutorial = min(tutorials, key=lambda run: run["seconds"])
    n = tutorial["images"]
    data = load_labeled(probes[("onnx", "fp32")][0])
    fold_of = {path: k for k, (_, test) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(data.X, data.y))
               for path in data.paths[test]}
    accuracy = {contender: linear_probe(out, key, fold_of) for contender, (out, key) in probes.items()}

    lines.append(f"{'':30}{'in-process':>11}{'images/s':>10}{'x tutorial':>11}{'pure inf.':>10}{'e2e/pure':>9}"
                 f"{'process':>9}{'peak RSS':>10}{'probe acc':>10}  (tutorial: best of 2, onnx fp32: best of 2)")
    lines.append(f"{'tutorial (tf.data + predict)':30}{tutorial['seconds']:>9.2f} s{n / tutorial['seconds']:>10.0f}"
                 f"{1:>10.2f}x{'':>10}{'':>9}{tutorial['process_seconds']:>7.1f} s{tutorial['peak_rss_mb']:>7.0f} MB")
    for runtime, precision, extracted, pure in rows:
        rate = extracted["images"] / extracted["seconds"]
        lines.append(
            f"{'extract ' + runtime + ' ' + precision:30}{extracted['seconds']:>9.2f} s{rate:>10.0f}"
            f"{rate / (n / tutorial['seconds']):>10.2f}x{pure['images_per_second']:>10.0f}{rate / pure['images_per_second']:>9.2f}"
            f"{extracted['process_seconds']:>7.1f} s{extracted['peak_rss_mb']:>7.0f} MB{accuracy[(runtime, precision)]:>10.3f}")
    base = accuracy[("onnx", "fp32")]
    lines.append("")
    lines.append("linear-probe accuracy (5-fold CV over all photos) drop vs fp32, points: " + ", ".join(
        f"{r} {p} {100 * (base - a):+.1f}" for (r, p), a in accuracy.items() if p != "fp32"))
    default = rows[0][2]
    lines.append(f"cached rerun (onnx fp32): {1000 * default['rerun_seconds']:.0f} ms, "
                 f"{default['seconds'] / default['rerun_seconds']:.0f}x faster than extraction")
    lines.append(f"open the cache and load all {n} embeddings, labels and paths: {1000 * open_and_load_seconds(probes[('onnx', 'fp32')][0]):.0f} ms")

    if not args.skip_doubled:
        big = doubled(source, tmp / "doubled")
        tutorial_big = min((peak_rss_worker("tutorial", str(big), weights, str(tmp / "tutorial-big.npy")) for _ in range(2)),
                           key=lambda run: run["process_seconds"])
        ours_big = min((peak_rss_worker("extract", str(big), weights, str(tmp / f"big-{k}.h5"), "auto", "fp32", "0")
                        for k in range(2)), key=lambda run: run["process_seconds"])
        ours_1k = peak_rss_worker("extract", str(big), weights, str(tmp / "big-1k.h5"), "auto", "fp32", "1000")
        lines.append("")
        lines.append(f"{tutorial_big['images']} photos (flowers + mirror images), whole process incl. start-up, best of 2: tutorial "
                     f"{tutorial_big['process_seconds']:.1f} s, extract (auto fp32) {ours_big['process_seconds']:.1f} s: "
                     f"{tutorial_big['process_seconds'] / ours_big['process_seconds']:.2f}x")
        lines.append(f"peak RSS of extract: {ours_1k['images']} photos {ours_1k['peak_rss_mb']:.0f} MB, "
                     f"{ours_big['images']} photos {ours_big['peak_rss_mb']:.0f} MB "
                     f"(tutorial on {tutorial_big['images']}: {tutorial_big['peak_rss_mb']:.0f} MB)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
