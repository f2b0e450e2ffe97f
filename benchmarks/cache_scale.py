"""Growing a large cache costs what is added: wall time and peak memory of adding photos at 10k, 100k, 1M rows.

Builds caches of each size from real embeddings (the rows of --cache repeated, with a little noise, under
made-up paths and random content hashes), then times one whole `embedder extract` process adding --add
new real photos to each, side by side, and prints the ratios to the smallest size. Run it with the real
weights so the backbone is the one a user has (its runtime export is warmed up first, not timed):

    python benchmarks/cache_scale.py --cache /tmp/ft/flowers.h5 --photos ../shared/data/flowers \
        --weights ../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from embedder import open_cache
from embedder.cache import Batch, CacheWriter, Row, verify

BUILD_BATCH = 4096
# One whole process: the CLI as a user runs it, then its own peak RSS. VmHWM, not ru_maxrss: Linux carries
# ru_maxrss over from the parent across fork + exec, and the parent has just built a large cache.
RUN = """
import json, re, sys, time
started = time.perf_counter()
from serving.cli import embedder_app
try:
    embedder_app(sys.argv[1:], standalone_mode=False)
finally:
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_mb": peak / 1024}), file=sys.stderr)
"""


def build(out: Path, rows: int, source: Path) -> None:
    """A cache of `rows` rows under the source cache's backbone key, written through the cache's own writer."""
    with open_cache(source) as cache:
        backbone = cache.backbone()
        key, provenance, real = backbone.key, backbone.provenance, backbone.load()
    rng = np.random.default_rng(0)
    with CacheWriter(out) as writer:
        writer.begin(key, {name: value for name, value in provenance.items() if name not in ("created", "updated")})
        for start in range(0, rows, BUILD_BATCH):
            count = min(BUILD_BATCH, rows - start)
            picked = real[rng.integers(0, len(real), count)]
            embeddings = (picked + rng.normal(0, 0.01, picked.shape)).clip(0).astype(np.float32)
            batch = [
                Row(f"earlier/{i // 1000:04d}/{i:07d}.jpg", rng.bytes(32).hex(), "earlier", 1, 1)
                for i in range(start, start + count)
            ]
            writer.write_batch(key, Batch(embeddings=embeddings, rows=batch))


def add(cache: Path, photos: Path, weights: str, env: dict[str, str]) -> dict[str, float]:
    """Time one `embedder extract` process adding `photos` to `cache`; its seconds and peak RSS."""
    command = [
        sys.executable,
        "-c",
        RUN,
        "extract",
        str(photos),
        "--out",
        str(cache),
        "--weights",
        weights,
        "--no-progress",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"extract failed:\n{result.stderr}")
    return json.loads(result.stderr.strip().splitlines()[-1])


def pick_photos(folder: Path, count: int, target: Path, offset: int = 0) -> Path:
    """`count` real photos of `folder` (sorted, spread over its classes, from `offset`), linked into `target`."""
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    step = max(1, len(photos) // count)
    target.mkdir(parents=True)
    for photo in photos[offset::step][:count]:
        (target / photo.parent.name).mkdir(exist_ok=True)
        os.symlink(photo.resolve(), target / photo.parent.name / photo.name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="A real cache whose rows are repeated.")
    parser.add_argument("--photos", type=Path, required=True, help="Real photos; --add of them are added.")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--add", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="Additions per size (other photos each); the median.")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="cache-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "EMBEDDER_CACHE_DIR": str(work / "runtimes")}
    sizes = [int(s) for s in args.sizes.split(",")]
    photos = [pick_photos(args.photos, args.add, work / f"photos-{r}", offset=r + 1) for r in range(args.repeats)]
    warm = pick_photos(args.photos, 8, work / "warm")
    add(work / "warm.h5", warm, args.weights, env)  # exports and probes the runtime once, untimed
    results = []
    for rows in sizes:
        cache = work / f"cache-{rows}.h5"
        build(cache, rows, args.cache)
        runs = [add(cache, folder, args.weights, env) for folder in photos]
        measured = {name: float(np.median([run[name] for run in runs])) for name in ("seconds", "peak_mb")}
        with open_cache(cache) as opened:
            assert len(opened.backbone()) == rows + args.add * args.repeats, "every added photo is a new row"
        disk = sum(
            p.stat().st_size for p in work.glob(f"cache-{rows}.h5*") for p in ([p] if p.is_file() else p.rglob("*"))
        )
        results.append({"rows": rows, **measured, "disk_gb": disk / 1e9, "sound": verify(cache) == []})
        seconds = ", ".join(f"{run['seconds']:.2f}" for run in runs)
        peaks = ", ".join(f"{run['peak_mb']:.0f}" for run in runs)
        print(f"{rows:>9,} rows: adding {args.add} photos took {seconds} s, peak RSS {peaks} MB", flush=True)
        shutil.rmtree(cache.with_name(cache.name + ".segments"))
        cache.unlink()
    base = results[0]
    print(f"\n{'rows':>9}  {'seconds':>8}  {'x time':>6}  {'peak MB':>8}  {'+MB':>6}  {'disk GB':>7}  verify")
    for r in results:
        print(
            f"{r['rows']:>9,}  {r['seconds']:>8.2f}  {r['seconds'] / base['seconds']:>6.2f}  {r['peak_mb']:>8.0f}  "
            f"{r['peak_mb'] - base['peak_mb']:>+6.0f}  {r['disk_gb']:>7.2f}  {'ok' if r['sound'] else 'PROBLEMS'}"
        )
    for folder in photos:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
