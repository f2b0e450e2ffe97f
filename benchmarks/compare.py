"""The three recipes side by side on one test split, in one command, at the embeddings' input size.

Embeds the photos (cached), sweeps the classical models and the Dense head on the embeddings,
fine-tunes MobileNetV2 with its defaults (variant A: head on the cached embeddings, then the top
groups on cached activations) on the same stored split, and prints the run's report: accuracy with
its 95% interval, the paired verdict, and training cost. Then it measures, side by side, the seconds
per epoch of each fine-tuning phase done the plain way (a full forward pass over augmented images
every epoch) on a copy of the run, one epoch each.

    python benchmarks/compare.py --out runs/flowers [--source ../shared/data/blood_cells] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument(
        "--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "flowers")
    parser.add_argument("--variant", choices=["a", "b"], action="append", help="fine-tuning variants (default: a)")
    parser.add_argument("--unfreeze", type=int, default=None, help="layer groups to unfreeze (default: finetune's)")
    parser.add_argument("--repeats", type=int, default=0, help="also re-split the sweep K times")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-way epoch timings")
    args = parser.parse_args()

    from classical import finetune, summary, sweep
    from embedder import Backbone, extract

    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.perf_counter()
    print(extract(args.source, args.out / "embeddings.h5", Backbone(weights=args.weights), progress=False))
    timings["extract"] = time.perf_counter() - started
    started = time.perf_counter()
    sweep(args.out / "embeddings.h5", args.out, progress=False, **({"repeats": args.repeats} if args.repeats else {}))
    timings["sweep"] = time.perf_counter() - started
    options = {"unfreeze": args.unfreeze} if args.unfreeze else {}
    for variant in args.variant or ["a"]:
        started = time.perf_counter()
        report = finetune(args.source, args.out, variant=variant, progress=False, **options)
        timings[f"finetune-{variant}"] = time.perf_counter() - started
    print()
    print(summary(report))
    plain = {} if args.no_plain else plain_epochs(args.source, args.out, options)
    print(
        "\nseconds per epoch (median after the first, which traces the graph), this run's way vs the plain "
        "full-forward way (two epochs, same settings):"
    )
    for row in report["models"]:
        ours = steady_epoch_seconds(args.out / row["name"]) if row["name"].startswith("finetune") else {}
        for phase in row.get("phases", []):
            mine, other = ours.get(phase["name"], phase["seconds_per_epoch"]), plain.get(phase["name"])
            ratio = f"  ({other / mine:.1f}x faster)" if other and mine else ""
            print(
                f"  {row['name']} {phase['name']:>14}: {mine:6.2f} s/epoch, {phase['method']}; "
                f"plain {other or float('nan'):6.1f} s/epoch{ratio}; {phase['epochs_run']} epochs run"
            )
        if row.get("cache_seconds"):
            print(f"  {row['name']} caching what it trains on: {row['cache_seconds']:.1f} s (in its fit seconds)")
    print("\nwall time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    print(f"report: {args.out / 'report.md'}")


def steady_epoch_seconds(folder: Path) -> dict[str, float]:
    """Median seconds of a phase's epochs after its first (which traces the graph), from a fine-tuning's state."""
    import numpy as np

    epochs = json.loads((folder / "state.json").read_text())["epochs"].values()
    phases = {epoch["phase"] for epoch in epochs}
    return {
        phase: float(
            np.median(
                [e["seconds"] for e in epochs if e["phase"] == phase and e["epoch"] > 1]
                or [e["seconds"] for e in epochs if e["phase"] == phase]
            )
        )
        for phase in phases
    }


def plain_epochs(source: Path, run: Path, options: dict) -> dict[str, float]:
    """Seconds per epoch of each variant-A phase the plain way, measured on a scratch copy of the run."""
    from classical import finetune

    scratch = run.with_name(run.name + "-plain")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for name in ("split.json", "report.json"):
        shutil.copy(run / name, scratch / name)
    finetune(source, scratch, cached=False, head_epochs=2, epochs=2, patience=2, progress=False, **options)
    seconds = steady_epoch_seconds(scratch / "finetune-a")
    shutil.rmtree(scratch)
    return seconds


if __name__ == "__main__":
    main()
