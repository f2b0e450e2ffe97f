"""The measurements behind `classical finetune`'s defaults: one setting changed at a time from the defaults.

Each variant fine-tunes on a copy of a swept run (same split), so every row is scored on the same test
images; cached activations are reused between variants with the same layer and views.

    python benchmarks/finetune_defaults.py --run runs/flowers --images ../shared/data/flowers
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

VARIANTS = {
    "defaults": {},
    "lr 1e-5": {"learning_rate": 1e-5},
    "unfreeze 1": {"unfreeze": 1},
    "unfreeze 4": {"unfreeze": 4},
    "views 1": {"views": 1},
    "no early stopping": {"patience": 100},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a swept run directory (split.json, report.json)")
    parser.add_argument("--images", type=Path, required=True, help="the images its cache was extracted from")
    parser.add_argument("--only", action="append", choices=list(VARIANTS), help="run only these variants")
    args = parser.parse_args()

    from classical import finetune

    rows = []
    for name in args.only or VARIANTS:
        scratch = args.run.with_name(f"{args.run.name}-defaults")
        scratch.mkdir(exist_ok=True)
        for file in ("split.json", "report.json"):
            shutil.copy(args.run / file, scratch / file)
        started = time.perf_counter()
        report = finetune(args.images, scratch, progress=False, **VARIANTS[name])
        wall = time.perf_counter() - started
        row = next(row for row in report["models"] if row["name"] == "finetune-a")
        dense = next((r for r in report["models"] if r["name"] == "dense"), None)
        unfrozen = row["phases"][-1]
        rows.append(
            (
                name,
                row["test_accuracy"],
                row["cv_mean"],
                unfrozen["epochs_run"],
                unfrozen["seconds_per_epoch"],
                row["fit_seconds"],
                wall,
                dense["test_accuracy"] if dense else float("nan"),
            )
        )
        print(
            f"{name}: test {row['test_accuracy']:.3f}, val {row['cv_mean']:.3f}, fit {row['fit_seconds']:.0f} s",
            flush=True,
        )
    print(
        f"\n{'variant':<18}{'test acc':>9}{'val acc':>9}{'epochs':>8}{'s/epoch':>9}{'fit s':>8}{'wall s':>8}{'dense':>8}"
    )
    for name, test, val, epochs, per_epoch, fit, wall, dense in rows:
        print(f"{name:<18}{test:>9.3f}{val:>9.3f}{epochs:>8}{per_epoch:>9.1f}{fit:>8.0f}{wall:>8.0f}{dense:>8.3f}")


if __name__ == "__main__":
    main()
