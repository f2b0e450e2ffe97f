"""How high the embedding cosine of a near-duplicate is, next to distinct photos: the audit's threshold.

Takes `--per-class` photos of each flower class, makes edited copies of each with Pillow

    jpeg      recompressed at JPEG quality 50, 60 or 70
    rescale   resized to 0.5x, 0.6x, 0.7x or 0.8x (saved at quality 90)
    crop      5-10 % cut off the width and the height, at a random offset (quality 90)
    combined  a 7 % crop, then 0.7x, then quality 60 (all three edits at once; not required to be found)

embeds them with the real weights (same backbone as the cache) and prints, per edit, the similarity
the audit uses (cosine of power-normalised embeddings; `--plain` for the plain cosine) of
each copy with its original, next to the highest cosines between distinct photos of the cache
(same class and any class), and for candidate thresholds the recall on the copies and how many
distinct pairs would be flagged.

    python benchmarks/audit_threshold.py --cache /tmp/audit/flowers.h5 [--source DIR] [--weights FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOTTLENECK_LAB_SHARED", ROOT.parent / "shared"))
EDITS = ("jpeg", "rescale", "crop", "combined")


def edited(image: Image.Image, edit: str, i: int, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """An edited copy of `image` and the JPEG quality to save it with."""
    image = image.convert("RGB")
    width, height = image.size
    if edit == "jpeg":
        return image, (50, 60, 70)[i % 3]
    if edit == "rescale":
        factor = (0.5, 0.6, 0.7, 0.8)[i % 4]
        return image.resize((round(width * factor), round(height * factor)), Image.LANCZOS), 90
    if edit == "crop":
        cut = rng.uniform(0.05, 0.10)
        dx, dy = round(cut * width), round(cut * height)
        left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        return image.crop((left, top, left + width - dx, top + height - dy)), 90
    cut = 0.07
    dx, dy = round(cut * width), round(cut * height)
    cropped = image.crop((dx // 2, dy // 2, dx // 2 + width - dx, dy // 2 + height - dy))
    return cropped.resize((round(cropped.width * 0.7), round(cropped.height * 0.7)), Image.LANCZOS), 60


def plain_unit(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="cache of the source folder (for the originals)")
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "flowers")
    parser.add_argument(
        "--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")
    )
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="also keep the copies' cache here")
    parser.add_argument("--plain", action="store_true", help="plain cosine instead of the audit's (power-normalised)")
    args = parser.parse_args()
    from classical.data.near_duplicates import normalise

    unit = plain_unit if args.plain else normalise

    from embedder import Backbone, extract, open_cache

    with open_cache(args.cache) as cache:
        rows = cache.backbone()
        X, labels, paths, provenance = unit(rows.load()), rows.labels, list(rows.paths), rows.provenance
    index = {path: i for i, path in enumerate(paths)}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "copies"
        originals = []
        for class_dir in sorted(p for p in args.source.iterdir() if p.is_dir()):
            for photo in sorted(class_dir.glob("*.jpg"))[: args.per_class]:
                originals.append(f"{class_dir.name}/{photo.name}")
                for edit in EDITS:
                    (folder / edit).mkdir(parents=True, exist_ok=True)
                    copy, quality = edited(Image.open(photo), edit, len(originals), rng)
                    copy.save(folder / edit / f"{class_dir.name}__{photo.name}", quality=quality)
        started = time.perf_counter()
        backbone = Backbone.from_provenance(provenance, weights=args.weights)
        extract(folder, Path(tmp) / "copies.h5", backbone, progress=False)
        seconds = time.perf_counter() - started
        with open_cache(Path(tmp) / "copies.h5") as cache:
            copies = cache.backbone()
            C, copy_paths = unit(copies.load()), list(copies.paths)
        if args.keep:
            import shutil

            shutil.copy(Path(tmp) / "copies.h5", args.keep)
    print(f"{len(originals)} originals x {len(EDITS)} edits embedded in {seconds:.0f} s ({backbone.key})\n")

    copy_cos: dict[str, np.ndarray] = {}
    for edit in EDITS:
        cos = []
        for row, path in enumerate(copy_paths):
            folder_name, name = path.split("/", 1)
            if folder_name == edit:
                original = index[name.replace("__", "/", 1)]
                cos.append(float(C[row] @ X[original]))
        copy_cos[edit] = np.array(cos)
    print("cosine of each copy with its original:")
    for edit, cos in copy_cos.items():
        print(
            f"  {edit:9} n={len(cos):3}  min {cos.min():.4f}  5% {np.quantile(cos, 0.05):.4f}  "
            f"median {np.median(cos):.4f}  max {cos.max():.4f}"
        )

    S = X @ X.T
    np.fill_diagonal(S, -1)
    upper = S[np.triu_indices(len(X), 1)]
    same = labels[:, None] == labels[None, :]
    same_upper = S[np.triu_indices(len(X), 1)][same[np.triu_indices(len(X), 1)]]
    best_same = np.where(same, S, -1).max(axis=1)
    print(f"\ndistinct photos of the cache ({len(X)} rows, {len(upper):,} pairs, {len(same_upper):,} same-class):")
    print(
        f"  highest cosine of any pair {upper.max():.4f}; top 10: {', '.join(f'{v:.3f}' for v in np.sort(upper)[-10:][::-1])}"
    )
    print(
        f"  same-class pairs: 99.9th percentile {np.quantile(same_upper, 0.999):.4f}, 99.99th "
        f"{np.quantile(same_upper, 0.9999):.4f}, max {same_upper.max():.4f}"
    )
    print(
        f"  each photo's nearest same-class photo: median {np.median(best_same):.4f}, 99th percentile "
        f"{np.quantile(best_same, 0.99):.4f}"
    )
    print("\nthreshold  recall jpeg / rescale / crop / combined   distinct pairs flagged (same class)")
    for threshold in (0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97):
        recalls = " / ".join(f"{(copy_cos[e] >= threshold).mean():.3f}" for e in EDITS)
        print(
            f"  {threshold:.2f}     {recalls}        {int((upper >= threshold).sum()):5} "
            f"({int((same_upper >= threshold).sum())})"
        )


if __name__ == "__main__":
    main()
