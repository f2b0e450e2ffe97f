"""What MLflow tracking costs a sweep: the same sweep of the shared flowers with and without `--mlflow`.

Embeds the shared flowers once (real weights, reused on later runs), runs `classical sweep` with its
defaults into one run folder, starts a real `mlflow server` (SQLite store, local artifact root), runs
the same sweep again with `--mlflow`, and re-logs the first run folder with `classical log`. Prints
the seconds of each, the logging cost as seconds and as a share of the sweep, and what the server
then holds on disk (artifact root and store), split into the ONNX models and the run-folder files:

    python benchmarks/tracking.py                       # needs BOTTLENECK_LAB_SHARED or ../shared
    python benchmarks/tracking.py --work /tmp/tracking-bench --models logreg,svm-rbf
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))  # the launcher the tracking tests use

from support.mlflow_server import mlflow_server  # noqa: E402


def run(command: list[str], what: str) -> float:
    """Seconds of one whole command (a new process, as a user runs it); its output kept for a failure."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def size(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file()) if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bottleneck-lab-tracking-bench"))
    parser.add_argument("--photos", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument("--models", default=None, help="--models of the sweep (default: the sweep's own default)")
    args = parser.parse_args()
    if not WEIGHTS.is_file():
        raise SystemExit(f"weights '{WEIGHTS}' not found: set BOTTLENECK_LAB_SHARED to the shared folder.")
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "photos.h5"
    if not cache.exists():
        print(f"embedding {args.photos} once into {cache} ...", flush=True)
        run([str(BIN / "embedder"), "extract", str(args.photos), "--out", str(cache), "--weights", str(WEIGHTS),
             "--no-progress"], "embedder extract")  # fmt: skip
    for name in ("plain", "tracked", "server"):
        shutil.rmtree(args.work / name, ignore_errors=True)
    sweep = [str(BIN / "classical"), "sweep", str(cache), "--no-progress", "--no-embedding-cost"]
    sweep += ["--models", args.models] if args.models else []
    plain = run([*sweep, "--out", str(args.work / "plain")], "sweep without tracking")
    (args.work / "server").mkdir()
    with mlflow_server(args.work / "server") as uri:
        tracked = run(
            [*sweep, "--out", str(args.work / "tracked"), "--mlflow", uri, "--experiment", "bench"], "tracked sweep"
        )
        after_sweep = size(args.work / "server" / "artifacts")
        models = size(args.work / "server" / "artifacts", "*.onnx")
        relog = run(
            [str(BIN / "classical"), "log", str(args.work / "plain"), "--mlflow", uri, "--experiment", "bench-log"],
            "classical log",
        )
    print(f"\nsweep of {cache} ({args.models or 'default models'}), load {os.getloadavg()[0]:.1f}")
    print(
        f"| step | seconds |\n|---|---:|\n| sweep, no tracking | {plain:.1f} |\n| same sweep, --mlflow | {tracked:.1f} |"
    )
    print(f"| `classical log` of the first run folder (new process) | {relog:.1f} |")
    cost = tracked - plain
    print(f"\nlogging cost: {cost:+.1f} s = {cost / plain:+.1%} of the sweep (re-logging alone: {relog:.1f} s)")
    print(f"logged per sweep: {after_sweep / 1e6:.1f} MB of artifacts, of which ONNX models {models / 1e6:.1f} MB")
    print(
        f"run folder on disk: {size(args.work / 'plain') / 1e6:.1f} MB; store {size(args.work / 'server', '*.db') / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
