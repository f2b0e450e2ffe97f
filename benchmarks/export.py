"""One-file exports of a finished run, measured: export time, file size, images/s, accuracy, int8's drop.

For each model of the run it writes the ONNX export (and SavedModel / TFLite for the neural ones),
then on the run's test photos (the stored split) measures images/s of `classical predict` (from
files: decoding, backbone, head) and of ONNX Runtime on the exported graph (from files, decoding by
the project's decoder, and on decoded pixels alone), the largest probability difference between the
two, and test accuracy. With `--int8`, int8 exports calibrated on `--calibration` training photos
and their accuracy drop on the same test photos.

    python benchmarks/export.py --run runs/flowers --images ../shared/data/flowers [--models lr,finetune-a] [--int8]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))
MODELS = ("lr", "svm-linear", "svm-rbf", "knn", "rf", "dense", "finetune-a")


def model_file(run: Path, name: str) -> Path:
    return run / f"{name}.model"


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


def throughput(run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities of `pixels` in batches of 32 after one warm-up batch, and images per second."""
    run(pixels[:8])
    probabilities, seconds = timed(lambda: np.concatenate([run(pixels[i : i + 32]) for i in range(0, len(pixels), 32)]))
    return probabilities, len(pixels) / seconds


def runner(path: Path, format: str) -> Callable[[np.ndarray], np.ndarray]:
    from classical.export.onnx_graph import onnx_session
    from classical.export.tf_formats import saved_model_runner, tflite_runner

    if format == "onnx":
        session = onnx_session(path)
        return lambda images: session.run(["probabilities"], {"images": images})[0]
    return saved_model_runner(path) if format == "saved_model" else tflite_runner(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder of `classical sweep` (+ finetune)")
    parser.add_argument("--images", type=Path, default=SHARED / "data" / "flowers", help="the run's photos")
    parser.add_argument("--out", type=Path, default=None, help="where the exports go (default: RUN/exports)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--test", type=int, default=0, help="use only the first N test photos (0: all)")
    parser.add_argument("--int8", action="store_true", help="also int8 exports (ONNX; TFLite for neural models)")
    parser.add_argument("--calibration", type=int, default=100, help="training photos to calibrate int8 on")
    parser.add_argument("--tf-formats", action="store_true", help="also SavedModel and TFLite of neural models")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from classical import predict
    from classical.export import export_model, load_exportable
    from embedder import load_files

    out = args.out or args.run / "exports"
    out.mkdir(parents=True, exist_ok=True)
    assignment = json.loads((args.run / "split.json").read_text())["assignment"]
    class_names = json.loads((args.run / "report.json").read_text())["class_names"]
    test = sorted(path for path, part in assignment.items() if part == "test")[: args.test or None]
    train = sorted(path for path, part in assignment.items() if part == "train")[::7][: args.calibration]
    files = [args.images / path for path in test]
    truth = np.array([class_names.index(path.split("/")[0]) for path in test])
    print(f"{len(files)} test photos; int8 calibrated on {len(train)} training photos\n")
    rows = []
    for name in args.models.split(","):
        source = model_file(args.run, name)
        result, _ = timed(export_model, source, out / f"{name}.onnx")
        pixels, decode_seconds = timed(
            lambda r=result: np.stack([item.pixels for item in load_files(files, size=r.image_size, resize=r.resize)])
        )
        exported, per_second = throughput(runner(out / f"{name}.onnx", "onnx"), pixels)
        row = {
            "model": name,
            "format": "onnx fp32",
            "export_s": result.seconds,
            "MB": result.bytes / 1e6,
            "files_img_s": len(files) / (decode_seconds + len(files) / per_second),
            "pixels_img_s": per_second,
            "accuracy": float(np.mean(exported.argmax(1) == truth)),
        }
        if result.kind != "finetune":  # `classical predict` takes model files
            predicted, seconds = timed(predict, source, files)
            reference = np.array([list(r["probs"].values()) for r in predicted])
            row.update(predict_img_s=len(files) / seconds, max_abs_diff=float(np.abs(reference - exported).max()))
        else:  # the Keras network itself, from the same decoded pixels
            reference, per_second = throughput(load_exportable(source).reference, pixels)
            row.update(predict_img_s=per_second, max_abs_diff=float(np.abs(reference - exported).max()))
        rows.append(row)
        print(row, flush=True)
        variants = [("saved_model", False), ("tflite", False)] if result.kind != "classical" and args.tf_formats else []
        if args.int8:
            variants += [("onnx", True)] + ([("tflite", True)] if result.kind != "classical" else [])
        for format, int8 in variants:
            path = out / f"{name}-{'int8' if int8 else 'fp32'}.{format}"
            calibration = [args.images / p for p in train] if int8 else None
            extra = export_model(source, path, format=format, int8=int8, calibration=calibration)
            probabilities, per_second = throughput(runner(path, format), pixels)
            accuracy = float(np.mean(probabilities.argmax(1) == truth))
            rows.append(
                {
                    "model": name,
                    "format": f"{format} {extra.precision}",
                    "export_s": extra.seconds,
                    "MB": extra.bytes / 1e6,
                    "pixels_img_s": per_second,
                    "accuracy": accuracy,
                    "accuracy_drop": row["accuracy"] - accuracy,
                    "max_abs_diff": float(np.abs(probabilities - exported).max()),
                }
            )
            print(rows[-1], flush=True)
    print(
        "\n| model | format | export s | MB | exported img/s (files) | exported img/s (pixels) "
        "| `classical predict` img/s (files; Keras on pixels for fine-tuned) | max abs diff | test acc | int8 drop |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [
            r["model"],
            r["format"],
            f"{r['export_s']:.1f}",
            f"{r['MB']:.1f}",
            f"{r['files_img_s']:.0f}" if "files_img_s" in r else "",
            f"{r['pixels_img_s']:.0f}",
            f"{r['predict_img_s']:.0f}" if "predict_img_s" in r else "",
            f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "",
            f"{r['accuracy']:.3f}",
            f"{r['accuracy_drop'] * 100:+.1f} pt" if "int8" in r["format"] else "",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
