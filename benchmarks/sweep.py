"""Sweep wall time with the default grids: the flower set, and a set twice its size, in one run.

The doubled set is the 1,250 flower photos plus their horizontal mirror images (new bytes, new
embeddings), written to a temporary folder. Each set is embedded once, then swept with all six
models; the figures are the sweep's wall time and each model's fit time and test accuracy.

    python benchmarks/sweep.py [--source DIR] [--weights FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))


def doubled(source: Path, folder: Path) -> Path:
    """Every photo of `source` (class folders) plus its mirror image, in `folder`."""
    for photo in sorted(source.glob("*/*.jpg")):
        target = folder / photo.parent.name
        target.mkdir(parents=True, exist_ok=True)
        (target / photo.name).symlink_to(photo.resolve())
        ImageOps.mirror(Image.open(photo)).save(target / f"mirror_{photo.name}", quality=90)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"))
    args = parser.parse_args()

    from classical import sweep
    from embedder import Backbone, extract

    backbone = Backbone(weights=args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"flowers": args.source, "flowers x2 (mirrored)": doubled(args.source, Path(tmp) / "x2")}
        results = {}
        for name, source in sets.items():
            cache = Path(tmp) / f"{len(results)}.h5"
            summary = extract(source, cache, backbone, progress=False)
            started = time.perf_counter()
            report = sweep(cache, Path(tmp) / f"run{len(results)}", progress=False)
            results[name] = (summary.total, time.perf_counter() - started, report)
    print(f"default grids, 5-fold CV, n_jobs=-1 on {os.cpu_count()} cores\n")
    for name, (images, seconds, report) in results.items():
        print(f"{name}: {images} photos, sweep wall time {seconds:.0f} s (n_test = {report['split']['n_test']})")
        for row in sorted(report["models"], key=lambda r: -r["test_accuracy"]):
            print(f"  {row['name']:11} {row['kind']:9} test accuracy {row['test_accuracy']:.3f}  fit {row['fit_seconds']:5.1f} s")
    (_, small, _), (_, large, _) = results.values()
    print(f"\nwall time ratio x2 / x1: {large / small:.2f}")
    print("(accuracy on the doubled set is inflated: a photo and its mirror image may sit in different splits)")


if __name__ == "__main__":
    main()
