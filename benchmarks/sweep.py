"""Sweep time at about 2,000, 15,000 and 50,000 rows: the scaled search next to the exact one, in one run.

Rows are real MobileNetV2 embeddings: the flower and the blood-cell caches together (1,250 +
2,400 photos, 13 classes). The 2,000-row set is a stratified subsample of those real rows; the
larger sets repeat every real row, each copy multiplied component-wise by exp(N(0, NOISE)) (small
noise, `--noise`), and give a copy the content hash of its photo, so that all copies of a photo
stay in one part of the split (test accuracy is not inflated by copies across parts; the sets
hold only 3,650 distinct photos, so accuracy does not grow with N either). Each size is split
once (stratified, grouped by content hash; no near-duplicate search) and the same split is used
by both searches. Both sweeps run with the default grids and `n_jobs=-1`, without the audit and
the backbone timing (they are not what this benchmark changes). The exact search (`search=
"grid"`) runs only up to `--exact-max-rows` (default 2,500) rows: at 15,000 rows it takes about an
hour on 2 cores (159 s at 2,137 rows growing as N^1.6, issue 19).

    python benchmarks/sweep.py [--sizes 2000,15000,50000] [--exact-max-rows 2500] [--models lr,svm-linear,...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

CACHES = (Path("/tmp/ft/flowers.h5"), Path("/tmp/ft/blood.h5"))
NOISE = 0.1


def real_rows(caches: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Embeddings, labels, class names, paths and content hashes of the caches together."""
    from classical import load_labeled

    X, y, names, paths, shas = [], [], [], [], []
    for cache in caches:
        data = load_labeled(cache)
        X.append(data.X)
        y.append(data.y + len(names))
        names += [f"{cache.stem}-{name}" for name in data.class_names]
        paths += [f"{cache.stem}/{p}" for p in data.paths]
        shas += [str(s) for s in data.sha256]
    return np.concatenate(X), np.concatenate(y), names, np.array(paths), np.array(shas)


def sized(rows: tuple, n: int, noise: float, seed: int = 0) -> tuple:
    """`n` rows: a stratified subsample of the real rows, or every real row repeated with noise."""
    from sklearn.model_selection import train_test_split

    X, y, names, paths, shas = rows
    if n <= len(y):
        keep, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
        return X[keep], y[keep], names, paths[keep], shas[keep]
    rng = np.random.default_rng(seed)
    take = np.concatenate([np.arange(len(y))] * (n // len(y)) + [rng.choice(len(y), n % len(y), replace=False)])
    copy = np.zeros(n, dtype=np.int64)
    for row in range(len(y)):  # the copy number of each row of `take`
        where = np.flatnonzero(take == row)
        copy[where] = np.arange(len(where))
    Xn = X[take] * np.exp(rng.normal(0, noise, (n, X.shape[1]))).astype(np.float32)
    Xn[copy == 0] = X[take[copy == 0]]  # copy 0 is the real row
    return Xn, y[take], names, np.array([f"{p}#{c}" for p, c in zip(paths[take], copy)]), shas[take]


def write(path: Path, rows: tuple) -> None:
    """A cache file of the rows (through the cache's writer), with the flower cache's provenance."""
    from classical import load_labeled
    from embedder.cache import Batch, CacheWriter, Row

    X, y, names, paths, shas = rows
    provenance = load_labeled(CACHES[0]).provenance
    with CacheWriter(path) as writer:
        writer.begin(provenance["backbone_key"], provenance)
        for start in range(0, len(y), 4096):
            part = slice(start, start + 4096)
            writer.write_batch(
                provenance["backbone_key"],
                Batch(
                    embeddings=X[part],
                    rows=[Row(p, s, names[label], 1, 1) for p, s, label in zip(paths[part], shas[part], y[part])],
                ),
            )


def run(cache: Path, out: Path, split_file: Path, search: str, models: list[str]) -> tuple[float, dict]:
    from classical import sweep

    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_bytes(split_file.read_bytes())
    started = time.perf_counter()
    report = sweep(cache, out, models=models, search=search, progress=False, audit=False, embedding_cost=False)
    return time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,15000,50000")
    parser.add_argument("--exact-max-rows", type=int, default=2500)
    parser.add_argument("--noise", type=float, default=NOISE)
    parser.add_argument("--models", default="lr,svm-linear,svm-rbf,rf,knn,dense")
    parser.add_argument("--caches", default=",".join(str(c) for c in CACHES))
    args = parser.parse_args()

    from classical import load_labeled, make_split
    from classical.report.uncertainty import wilson_interval
    from classical.search.threads import cores

    models = args.models.split(",")
    real = real_rows([Path(c) for c in args.caches.split(",")])
    print(
        f"{len(real[1])} real rows ({', '.join(args.caches.split(','))}), {len(real[2])} classes; "
        f"{cores()} cores, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} at start",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            folder = Path(tmp) / str(n)
            folder.mkdir()
            rows = sized(real, n, args.noise)
            write(folder / "c.h5", rows)
            data = load_labeled(folder / "c.h5")
            split = make_split(data.paths, data.sha256, data.y, data.class_names, backbone_key=data.backbone_key)
            split.save(folder / "split.json")
            how = "real rows" if n <= len(real[1]) else f"real rows repeated, noise exp(N(0, {args.noise}))"
            print(
                f"\n== {n} rows ({how}); split {split.summary()['n_train']}/{split.summary()['n_val']}/"
                f"{split.summary()['n_test']}; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            seconds, scaled = run(folder / "c.h5", folder / "auto", folder / "split.json", "auto", models)
            exact_seconds, exact = (
                run(folder / "c.h5", folder / "grid", folder / "split.json", "grid", models)
                if n <= args.exact_max_rows
                else (None, None)
            )
            exact_rows = {row["name"]: row for row in (exact or {}).get("models", [])}
            print(
                f"scaled sweep {seconds:.0f} s"
                + (
                    f", exact sweep {exact_seconds:.0f} s (x{exact_seconds / seconds:.1f})"
                    if exact
                    else f" (exact search skipped above {args.exact_max_rows} rows)"
                )
                + f"; load {os.getloadavg()[0]:.1f}; threads {scaled['threads']}"
            )
            for row in scaled["models"]:
                line = (
                    f"  {row['name']:10} {row['strategy']:21} search {row['search_rows']:>6}/{row['rows']:<6} "
                    f"fit {row['fit_seconds']:6.1f} s (search {row['search_seconds']:6.1f}, refit "
                    f"{row['refit_seconds']:5.1f})  test acc {row['test_accuracy']:.3f}"
                )
                if row["name"] in exact_rows:
                    ref = exact_rows[row["name"]]
                    low, high = wilson_interval(round(ref["test_accuracy"] * ref["n_test"]), ref["n_test"])
                    inside = "inside" if low <= row["test_accuracy"] <= high else "OUTSIDE"
                    line += (
                        f" | exact fit {ref['fit_seconds']:6.1f} s  acc {ref['test_accuracy']:.3f} "
                        f"[{low:.3f}, {high:.3f}] {inside}"
                    )
                print(line, flush=True)


if __name__ == "__main__":
    main()
