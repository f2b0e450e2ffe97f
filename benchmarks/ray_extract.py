"""Ray's overhead against local extraction on this machine, and what 1M photos would take on N workers.

Same photos, same backbone and runtime, fresh caches, one run: `embedder.extract` (local) next to
`extract_ray` on a local Ray (started here, start-up timed apart) with 2 actors x 1 CPU and
1 actor x 2 CPUs, on the photo set and on a 4x set (the photos, mirrored, flipped, both: distinct
bytes), since Ray's cost is mostly fixed. Per-actor throughput comes from the actors' own block
timings; the driver's merge is timed apart, so the estimate for 1M photos separates what scales
with workers (embedding) from what does not (start-up, merge on the driver).

    python benchmarks/ray_extract.py [--source ../shared/data/flowers] [--size 224]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import h5py
from PIL import Image, ImageOps

import embedder.extraction.ray_engine as ray_engine
from embedder import Backbone, extract

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))


class Timed:
    """Wraps `absorb_shards` to time the driver's merges and record the shards' own timings."""

    def __init__(self) -> None:
        self.merge_seconds = 0.0
        self.block_seconds = 0.0
        self.block_images = 0
        self._absorb = ray_engine.absorb_shards

    def __call__(self, cache, key, folder, *args, **kwargs):
        for shard in sorted(Path(folder).glob("*.h5")) if Path(folder).is_dir() else []:
            with h5py.File(shard, "r") as handle:
                self.block_seconds += float(handle.attrs["seconds"])
                self.block_images += (
                    len(handle["rows/path"]) + len(handle["aliases/path"]) + len(handle["failures/path"])
                )
        started = time.perf_counter()
        try:
            return self._absorb(cache, key, folder, *args, **kwargs)
        finally:
            self.merge_seconds += time.perf_counter() - started


def run_ray(source: Path, out: Path, backbone: Backbone, *, actors: int, cpus: float, runtime: str) -> dict:
    timed = Timed()
    ray_engine.absorb_shards = timed
    try:
        summary = ray_engine.extract_ray(
            source, out, backbone, actors=actors, cpus_per_actor=cpus, runtime=runtime, progress=False
        )
    finally:
        ray_engine.absorb_shards = timed._absorb
    return {
        "label": f"ray, {actors} actor(s) x {cpus:g} CPU",
        "images": summary.embedded,
        "seconds": summary.seconds,
        "rate": summary.images_per_second,
        "per_actor": timed.block_images / timed.block_seconds,
        "merge": timed.merge_seconds,
        "actors": actors,
    }


def four_fold(source: Path, folder: Path) -> Path:
    """The photos, their mirror images, their upside-down flips and both: 4x the images, all distinct bytes."""
    for photo in sorted(source.rglob("*.jpg")):
        target = folder / photo.parent.relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        image = Image.open(photo).convert("RGB")
        for name, variant in (
            ("", image),
            ("mirror_", ImageOps.mirror(image)),
            ("flip_", ImageOps.flip(image)),
            ("both_", ImageOps.flip(ImageOps.mirror(image))),
        ):
            variant.save(target / f"{name}{photo.name}", quality=90)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument(
        "--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runtime", default="onnx")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    backbone = Backbone(size=args.size, weights=args.weights)
    configs = [(2, 1), (1, 2)]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        extract(args.source, tmp / "warm.h5", backbone, runtime=args.runtime, progress=False)  # exported model cached
        started = time.perf_counter()
        ray_engine.connect(None)  # a local Ray with this machine's CPUs
        ray_start = time.perf_counter() - started
        tables = []
        for name, source in (("photo set", args.source), ("4x set", four_fold(args.source, tmp / "four"))):
            local = extract(source, tmp / f"local-{len(tables)}.h5", backbone, runtime=args.runtime, progress=False)
            runs = [
                run_ray(
                    source, tmp / f"ray-{len(tables)}-{i}.h5", backbone, actors=actors, cpus=cpus, runtime=args.runtime
                )
                for i, (actors, cpus) in enumerate(configs)
            ]
            tables.append((name, local, runs))

    print(f"{backbone.key}, runtime {args.runtime}, {os.cpu_count()} cores, photos of {args.source}\n")
    print(f"{'set':<17}{'engine':<28}{'seconds':>9}{'images/s':>10}{'local / ray':>13}{'per actor':>11}{'merge s':>9}")
    for name, local, runs in tables:
        label = f"{name} ({local.embedded})"
        print(
            f"{label:<17}{'local (embedder.extract)':<28}{local.seconds:>9.1f}{local.images_per_second:>10.0f}{1:>13.2f}"
        )
        for run in runs:
            print(
                f"{'':<17}{run['label']:<28}{run['seconds']:>9.1f}{run['rate']:>10.0f}"
                f"{local.images_per_second / run['rate']:>13.2f}{run['per_actor']:>11.0f}{run['merge']:>9.2f}"
            )
    print(
        f"\nRay start-up (ray.init, local) {ray_start:.1f} s, not included above; every run includes its actors' "
        "start-up (worker processes, imports, runtime load) and Ray Data's scheduling."
    )

    runs = tables[-1][2]
    best = max(runs, key=lambda run: run["per_actor"] * run["actors"])
    node_rate = best["per_actor"] * best["actors"]  # one node like this one, embedding steadily
    merge_per_image = best["merge"] / best["images"]
    fixed = max(0.0, best["seconds"] - best["images"] / node_rate - best["merge"])  # start-up, scheduling, tail
    print(
        f"\nEstimate for 1,000,000 photos on N nodes like this one ({best['label']}: {node_rate:.0f} images/s "
        f"per node in steady state; driver merge {1e6 * merge_per_image / 60:.1f} min per 1M rows, measured here "
        f"and taken as linear; fixed cost {fixed:.0f} s):"
    )
    print(f"{'nodes':>7}{'embedding':>12}{'merge':>9}{'total':>9}")
    for nodes in (1, 4, 16, 64, 256):
        embedding = 1e6 / (nodes * node_rate)
        total = fixed + embedding + 1e6 * merge_per_image
        print(f"{nodes:>7}{embedding / 3600:>10.2f} h{1e6 * merge_per_image / 60:>7.1f} m{total / 3600:>7.2f} h")
    print(
        "Listing on the driver, object-store traffic and shared-storage bandwidth for the "
        "shards are not in this estimate; with many nodes the single-driver merge becomes the floor."
    )


if __name__ == "__main__":
    main()
