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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))
MODELS = ("lr", "svm-linear", "svm-rbf", "knn", "rf", "dense", "finetune-a")


def model_file(run: Path, name: str) -> Path:
    return run / (f"{name}.keras" if name.startswith("finetune") else f"{name}.joblib")


def timed(function, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


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
    from classical.export import export_model
    from classical.export.onnx_graph import onnx_session
    from classical.export.tf_formats import saved_model_runner, tflite_runner
    from embedder import load_files

    out = args.out or args.run / "exports"
    out.mkdir(parents=True, exist_ok=True)
    assignment = json.loads((args.run / "split.json").read_text())["assignment"]
    class_names = json.loads((args.run / "report.json").read_text())["class_names"]
    test = sorted(path for path, part in assignment.items() if part == "test")[: args.test or None]
    train = sorted(path for path, part in assignment.items() if part == "train")[:: 7][: args.calibration]
    files = [args.images / path for path in test]
    truth = np.array([class_names.index(path.split("/")[0]) for path in test])
    print(f"{len(files)} test photos; int8 calibrated on {len(train)} training photos\n")
    rows = []
    for name in args.models.split(","):
        source = model_file(args.run, name)
        result, _ = timed(export_model, source, out / f"{name}.onnx")
        size, resize = result.image_size, result.resize
        pixels, decode_seconds = timed(lambda: np.stack([f.pixels for f in load_files(files, size=size, resize=resize)]))
        session = onnx_session(out / f"{name}.onnx")
        run_onnx = lambda images, s=session: s.run(["probabilities"], {"images": images})[0]  # noqa: E731
        run_onnx(pixels[:8])  # warm-up
        exported, onnx_seconds = timed(lambda: np.concatenate([run_onnx(pixels[i : i + 32])
                                                               for i in range(0, len(pixels), 32)]))
        row = {"model": name, "format": "onnx fp32", "export_s": result.seconds, "MB": result.bytes / 1e6,
               "exported_img_s_files": len(files) / (decode_seconds + onnx_seconds),
               "exported_img_s_pixels": len(files) / onnx_seconds, "accuracy": float(np.mean(exported.argmax(1) == truth))}
        if not name.startswith("finetune"):  # `classical predict` takes model files
            predicted, predict_seconds = timed(predict, source, files)
            reference = np.array([list(r["probs"].values()) for r in predicted])
            row.update(predict_img_s=len(files) / predict_seconds, max_abs_diff=float(np.abs(reference - exported).max()))
        rows.append(row)
        print(row, flush=True)
        neural = result.kind != "classical"
        variants = []
        if neural and args.tf_formats:
            variants += [("saved_model", False, ""), ("tflite", False, ".tflite")]
        if args.int8:
            variants += [("onnx", True, ".int8.onnx")] + ([("tflite", True, ".int8.tflite")] if neural else [])
        for format, int8, suffix in variants:
            path = out / f"{name}-{format}{suffix}"
            calibration = [args.images / p for p in train] if int8 else None
            extra, _ = timed(export_model, source, path, format=format, int8=int8, calibration=calibration)
            runner = {"onnx": lambda p: (lambda s: lambda x: s.run(["probabilities"], {"images": x})[0])(onnx_session(p)),
                      "saved_model": saved_model_runner, "tflite": tflite_runner}[format](path)
            runner(pixels[:8])
            probabilities, seconds = timed(lambda r=runner: np.concatenate([r(pixels[i : i + 32])
                                                                            for i in range(0, len(pixels), 32)]))
            accuracy = float(np.mean(probabilities.argmax(1) == truth))
            extra_row = {"model": name, "format": f"{format} {extra.precision}", "export_s": extra.seconds,
                         "MB": extra.bytes / 1e6, "exported_img_s_pixels": len(files) / seconds, "accuracy": accuracy,
                         "accuracy_drop": row["accuracy"] - accuracy,
                         "max_abs_diff_vs_onnx_fp32": float(np.abs(probabilities - exported).max())}
            rows.append(extra_row)
            print(extra_row, flush=True)
    print("\n| model | format | export s | MB | img/s exported (files) | img/s exported (pixels) | img/s `classical predict` "
          "| max abs diff | test acc | int8 drop |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [r["model"], r["format"], f"{r['export_s']:.1f}", f"{r['MB']:.1f}",
                 f"{r['exported_img_s_files']:.0f}" if "exported_img_s_files" in r else "",
                 f"{r['exported_img_s_pixels']:.0f}", f"{r['predict_img_s']:.0f}" if "predict_img_s" in r else "",
                 f"{r.get('max_abs_diff', r.get('max_abs_diff_vs_onnx_fp32', float('nan'))):.1e}", f"{r['accuracy']:.3f}",
                 f"{r['accuracy_drop'] * 100:+.1f} pt" if "accuracy_drop" in r and "int8" in r["format"] else ""]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
