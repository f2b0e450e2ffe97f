"""Extraction speed, memory and reduced-precision quality, every figure measured in this one run.

For the flower photos (and a 2,500-photo set: the flowers plus their mirror images), each
contender runs in its own process so that its peak RSS is its own:

- the tutorial way: `image_dataset_from_directory` + `model.predict` + `np.save`;
- `embedder.extract` (files on disk to HDF5) for each runtime and precision, next to the pure
  inference rate of the same runtime on pre-decoded arrays (same batch size);
- the linear-probe accuracy (logistic regression, 5-fold CV over all photos) of each precision;
- peak RSS for 1,000 photos vs all 2,500; a fully cached rerun; opening a cache and loading it;
- the first run on a fresh machine: `embedder extract` as a whole process with an empty, new
  EMBEDDER_CACHE_DIR (no ONNX export, no runtime chosen yet), side by side with the tutorial way
  as a whole process on the same photos, alternating, pair after pair (the machine may be shared).

    python benchmarks/extract.py [--source DIR] [--weights FILE] [--skip-doubled] [--cold-pairs N]
    python benchmarks/extract.py --only-cold [--both-sets]   # the first-run comparison alone
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
    dataset = keras.utils.image_dataset_from_directory(
        source, image_size=(224, 224), batch_size=BATCH, shuffle=False, verbose=False
    )
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


def whole_process(command: list[str], env: dict[str, str]) -> tuple[str, str, float, float]:
    """Run a process to its end: its stdout, stderr, wall time (start-up included) and its own peak RSS in MB."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:  # a file: a long stderr cannot block the process
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        errors.seek(0)
        messages = errors.read()
    if status:
        raise SystemExit(f"{command[:6]} failed:\n{messages[-3000:]}")
    return output, messages, seconds, usage.ru_maxrss / 1024


def peak_rss_worker(*args: str) -> dict:
    """Run this script as a worker process; its JSON result plus wall time and its own peak RSS."""
    output, _, seconds, rss = whole_process(
        [sys.executable, __file__, "--worker", *args], {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    return {**json.loads(output.strip().splitlines()[-1]), "process_seconds": seconds, "peak_rss_mb": rss}


def first_run(source: Path, weights: str, out: Path, cache_dir: Path) -> dict:
    """`embedder extract` as a new user runs it, as a whole process, with an empty EMBEDDER_CACHE_DIR."""
    command = [
        sys.executable,
        "-m",
        "embedder.cli",
        "extract",
        str(source),
        "--out",
        str(out),
        "--weights",
        weights,
        "--no-progress",
    ]
    output, _, seconds, rss = whole_process(command, {**os.environ, "EMBEDDER_CACHE_DIR": str(cache_dir)})
    runtime = next(line for line in output.splitlines() if line.startswith("time")).split("runtime ", 1)[1][:-1]
    return {"process_seconds": seconds, "peak_rss_mb": rss, "runtime": runtime}


def cold_start(source: Path, weights: str, tmp: Path, pairs: int) -> list[str]:
    """The first run on a fresh machine vs the tutorial way, both whole processes, alternating pair after pair."""
    n = len(list(source.rglob("*.jpg")))
    lines = [
        (
            f"first run on a fresh machine (empty EMBEDDER_CACHE_DIR), whole process incl. start-up, {n} photos of "
            f"{source}, {pairs} pairs run side by side (alternating order):"
        )
    ]
    ratios = []
    for pair in range(pairs):
        runs = {
            "tutorial": lambda: peak_rss_worker("tutorial", str(source), weights, str(tmp / "cold-tutorial.npy")),
            "first": lambda k=pair: first_run(source, weights, tmp / f"cold-{k}.h5", tmp / f"fresh-cache-{k}"),
        }
        order = ["first", "tutorial"] if pair % 2 else ["tutorial", "first"]
        done = {name: runs[name]() for name in order}
        tutorial, first = done["tutorial"], done["first"]
        ratios.append(tutorial["process_seconds"] / first["process_seconds"])
        lines.append(
            f"  pair {pair + 1}: tutorial {tutorial['process_seconds']:5.1f} s "
            f"({n / tutorial['process_seconds']:4.0f} images/s, {tutorial['peak_rss_mb']:.0f} MB), "
            f"first extract {first['process_seconds']:5.1f} s ({n / first['process_seconds']:4.0f} images/s, "
            f"{first['peak_rss_mb']:.0f} MB): {ratios[-1]:.2f}x; runtime {first['runtime']}"
        )
    lines.append(
        f"  first run vs tutorial, whole process: median {float(np.median(ratios)):.2f}x "
        f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x) on {n} photos"
    )
    return lines


def both_sets(folder: Path) -> Path:
    """The flowers and the blood cells in one folder of class folders (symlinks), for a longer first run."""
    for data in ("flowers", "blood_cells"):
        for photo in sorted((SHARED / "data" / data).glob("*/*.jpg")):
            (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
            (folder / photo.parent.name / photo.name).symlink_to(photo.resolve())
    return folder


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
    parser.add_argument(
        "--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")
    )
    parser.add_argument(
        "--skip-doubled", action="store_true", help="skip the 2,500-photo whole-process and memory runs"
    )
    parser.add_argument("--cold-pairs", type=int, default=3, help="first-run vs tutorial pairs (0: skip)")
    parser.add_argument("--only-cold", action="store_true", help="only the first-run comparison")
    parser.add_argument("--both-sets", action="store_true", help="first run on the flowers and blood cells together")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, rest = args.worker[0], args.worker[1:]
        if kind == "tutorial":
            print(json.dumps(work_tutorial(Path(rest[0]), rest[1], Path(rest[2]))))
        elif kind == "extract":
            print(
                json.dumps(work_extract(Path(rest[0]), rest[1], Path(rest[2]), rest[3], rest[4], int(rest[5]) or None))
            )
        else:
            print(json.dumps(work_pure(Path(rest[0]), rest[1], rest[2], rest[3], rest[4])))
        return

    from sklearn.model_selection import StratifiedKFold

    from classical import load_labeled
    from embedder import open_cache

    source, weights = args.source, args.weights
    tmp = Path(tempfile.mkdtemp(prefix="speed-"))
    if args.cold_pairs or args.only_cold:
        cold_source = both_sets(tmp / "both") if args.both_sets else source
        print("\n".join(cold_start(cold_source, weights, tmp, max(1, args.cold_pairs))) + "\n", flush=True)
    if args.only_cold:
        return
    lines = [
        f"{len(list(source.rglob('*.jpg')))} photos of {source}, MobileNetV2 1.0/224 avg-pooled, batch {BATCH}, "
        f"{os.cpu_count()} cores; each contender in its own process",
        "",
    ]
    # warm-up: exports, quantization and the runtime choice are one-time costs per backbone key
    for runtime, precision in [*CONTENDERS, ("auto", "fp32")]:
        peak_rss_worker(
            "extract", str(source), weights, str(tmp / f"warm-{runtime}-{precision}.h5"), runtime, precision, "0"
        )
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
    fold_of = {
        path: k
        for k, (_, test) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(data.X, data.y))
        for path in data.paths[test]
    }
    accuracy = {contender: linear_probe(out, key, fold_of) for contender, (out, key) in probes.items()}

    lines.append(
        f"{'':30}{'in-process':>11}{'images/s':>10}{'x tutorial':>11}{'pure inf.':>10}{'e2e/pure':>9}"
        f"{'process':>9}{'peak RSS':>10}{'probe acc':>10}  (tutorial: best of 2, onnx fp32: best of 2)"
    )
    lines.append(
        f"{'tutorial (tf.data + predict)':30}{tutorial['seconds']:>9.2f} s{n / tutorial['seconds']:>10.0f}"
        f"{1:>10.2f}x{'':>10}{'':>9}{tutorial['process_seconds']:>7.1f} s{tutorial['peak_rss_mb']:>7.0f} MB"
    )
    for runtime, precision, extracted, pure in rows:
        rate = extracted["images"] / extracted["seconds"]
        lines.append(
            f"{'extract ' + runtime + ' ' + precision:30}{extracted['seconds']:>9.2f} s{rate:>10.0f}"
            f"{rate / (n / tutorial['seconds']):>10.2f}x{pure['images_per_second']:>10.0f}{rate / pure['images_per_second']:>9.2f}"
            f"{extracted['process_seconds']:>7.1f} s{extracted['peak_rss_mb']:>7.0f} MB{accuracy[(runtime, precision)]:>10.3f}"
        )
    base = accuracy[("onnx", "fp32")]
    lines.append("")
    lines.append(
        "linear-probe accuracy (5-fold CV over all photos) drop vs fp32, points: "
        + ", ".join(f"{r} {p} {100 * (base - a):+.1f}" for (r, p), a in accuracy.items() if p != "fp32")
    )
    default = rows[0][2]
    lines.append(
        f"cached rerun (onnx fp32): {1000 * default['rerun_seconds']:.0f} ms, "
        f"{default['seconds'] / default['rerun_seconds']:.0f}x faster than extraction"
    )
    lines.append(
        f"open the cache and load all {n} embeddings, labels and paths: {1000 * open_and_load_seconds(probes[('onnx', 'fp32')][0]):.0f} ms"
    )

    if not args.skip_doubled:
        big = doubled(source, tmp / "doubled")
        tutorial_big = min(
            (peak_rss_worker("tutorial", str(big), weights, str(tmp / "tutorial-big.npy")) for _ in range(2)),
            key=lambda run: run["process_seconds"],
        )
        ours_big = min(
            (
                peak_rss_worker("extract", str(big), weights, str(tmp / f"big-{k}.h5"), "auto", "fp32", "0")
                for k in range(2)
            ),
            key=lambda run: run["process_seconds"],
        )
        ours_1k = peak_rss_worker("extract", str(big), weights, str(tmp / "big-1k.h5"), "auto", "fp32", "1000")
        lines.append("")
        lines.append(
            f"{tutorial_big['images']} photos (flowers + mirror images), whole process incl. start-up, best of 2: tutorial "
            f"{tutorial_big['process_seconds']:.1f} s, extract (auto fp32) {ours_big['process_seconds']:.1f} s: "
            f"{tutorial_big['process_seconds'] / ours_big['process_seconds']:.2f}x"
        )
        lines.append(
            f"peak RSS of extract: {ours_1k['images']} photos {ours_1k['peak_rss_mb']:.0f} MB, "
            f"{ours_big['images']} photos {ours_big['peak_rss_mb']:.0f} MB "
            f"(tutorial on {tutorial_big['images']}: {tutorial_big['peak_rss_mb']:.0f} MB)"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
