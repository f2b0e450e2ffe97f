"""The three recipes side by side on one test split, in one command.

Embeds the photos (cached), sweeps the classical models and the Dense head on the embeddings,
fine-tunes MobileNetV2 (variant A by default; B with --variant b) on the same stored split, and
prints the run's report: accuracy and training cost of every model.

    python benchmarks/compare.py --out runs/flowers [--size 160 --head-epochs 10 --epochs 5]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "flowers")
    parser.add_argument("--variant", choices=["a", "b"], action="append", help="fine-tuning variants (default: a)")
    parser.add_argument("--size", type=int, default=160, help="fine-tuning input size (embeddings use 224)")
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    from classical import finetune, summary, sweep
    from embedder import Backbone, extract

    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.perf_counter()
    print(extract(args.source, args.out / "embeddings.h5", Backbone(weights=args.weights), progress=False))
    timings["extract"] = time.perf_counter() - started
    started = time.perf_counter()
    sweep(args.out / "embeddings.h5", args.out, progress=False)
    timings["sweep"] = time.perf_counter() - started
    for variant in args.variant or ["a"]:
        started = time.perf_counter()
        report = finetune(args.source, args.out, variant=variant, size=args.size, head_epochs=args.head_epochs,
                          epochs=args.epochs, progress=False)
        timings[f"finetune-{variant}"] = time.perf_counter() - started
    print()
    print(summary(report))
    for row in report["models"]:
        for phase in row.get("phases", []):
            print(f"  {row['name']} phase {phase['name']}: {phase['epochs']} epochs, {phase['seconds_per_epoch']:.1f} s/epoch, "
                  f"{phase['trainable']:,} trainable / {phase['non_trainable']:,} non-trainable parameters")
    print("\nwall time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    print(f"report: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
