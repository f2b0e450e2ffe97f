"""Near-duplicate search at scale: time and peak memory at 10k, 30k and 100k rows, and a 1M-row estimate.

Rows are the real flower embeddings (1,280-d) repeated, each component multiplied by exp(N(0, NOISE))
(`--noise`, default 1.5) so that the copies are distinct images, not near-duplicates of each other
(non-negative, like pooled ReLU6 features); with less noise the copies of one photo are found as
near-duplicates of each other and storing those pairs dominates the memory. Each size runs in
its own process (`classical.data.near_duplicates.search`, exact blocked matrix products, threshold
0.90, upper triangle only); its peak RSS is that process's ru_maxrss, the input rows included.
The 1M estimate extrapolates the 100k time quadratically (the search compares every pair).

    python benchmarks/audit_scale.py --cache /tmp/audit/flowers.h5 [--sizes 10000,30000,100000] [--knn]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def child(cache: str, n: int, k: int, noise: float) -> None:
    import numpy as np

    from classical.data.near_duplicates import normalise, search
    from embedder import open_cache

    with open_cache(cache) as opened:
        base = opened.backbone().load()
    rng = np.random.default_rng(0)
    X = np.empty((n, base.shape[1]), np.float32)
    for start in range(0, n, 10_000):
        rows = rng.integers(0, len(base), min(10_000, n - start))
        X[start : start + len(rows)] = base[rows] * np.exp(rng.normal(0, noise, (len(rows), base.shape[1]))).astype(
            np.float32
        )
    Z = normalise(X)
    del X
    import tracemalloc

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    started = time.perf_counter()
    found = search(Z, k=k, normalised=True)
    seconds = time.perf_counter() - started
    search_mb = tracemalloc.get_traced_memory()[1] / 2**20  # what the search itself allocated at its peak
    tracemalloc.stop()
    peak = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(
        json.dumps(
            {
                "n": n,
                "k": k,
                "seconds": seconds,
                "peak_mb": peak,
                "search_mb": search_mb,
                "pairs": len(found.i),
                "input_mb": Z.nbytes / 2**20,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="a cache of real embeddings (e.g. the flowers)")
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument(
        "--knn",
        action="store_true",
        help="also time the audit's full pass (pairs + 10 nearest neighbours) at the smallest size",
    )
    parser.add_argument("--noise", type=float, default=1.5, help="log-normal noise of the repeated rows")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.cache, *args.child, args.noise)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = [(n, 0) for n in sizes] + ([(sizes[0], 10)] if args.knn else [])
    results = []
    for n, k in runs:
        out = subprocess.run(
            [sys.executable, __file__, "--cache", args.cache, "--noise", str(args.noise), "--child", str(n), str(k)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  ran n={n:,} k={k}: {results[-1]['seconds']:.1f} s", file=sys.stderr)
    print(
        f"exact blocked search, 1,280-d float32, threshold 0.90, {os.cpu_count()} cores "
        f"(OMP/BLAS threads: {os.environ.get('OMP_NUM_THREADS', 'all')})\n"
    )
    print(
        f"{'rows':>9} {'kNN':>4} {'seconds':>9} {'peak RSS MB':>12} {'search MB':>10} {'input MB':>9} {'pairs':>7} {'us/row':>8}"
    )
    for r in results:
        print(
            f"{r['n']:>9,} {r['k']:>4} {r['seconds']:>9.1f} {r['peak_mb']:>12.0f} {r['search_mb']:>10.0f} "
            f"{r['input_mb']:>9.0f} {r['pairs']:>7} {1e6 * r['seconds'] / r['n']:>8.0f}"
        )
    print("(peak RSS: the whole process, making the rows included; search MB: what the search allocated at its peak)")
    plain = {r["n"]: r for r in results if r["k"] == 0}
    small, large = plain[min(plain)], plain[max(plain)]
    growth = large["seconds"] / small["seconds"]
    print(
        f"\ngrowth {small['n']:,} -> {large['n']:,} rows ({large['n'] / small['n']:.0f}x): time x{growth:.1f} "
        f"(quadratic would be x{(large['n'] / small['n']) ** 2:.0f}), peak RSS x{large['peak_mb'] / small['peak_mb']:.1f}"
    )
    scale = 1_000_000 / large["n"]
    print(
        f"1M rows, estimated: {large['seconds'] * scale**2 / 3600:.1f} h of search, "
        f"{large['input_mb'] * scale / 1024:.1f} GB of rows + {(large['peak_mb'] - large['input_mb']) / 1024:.1f} GB "
        "of working memory (tiles and pairs, independent of N)"
    )


if __name__ == "__main__":
    main()
