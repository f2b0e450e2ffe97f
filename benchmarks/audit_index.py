"""The audit's near-duplicate search on the similarity index's k-NN graph against the exact all-pairs product.

Rows are synthetic and clustered, 1,280-d and non-negative like pooled ReLU6 features: n / 50 cluster
centres (Gamma(0.5) components), each row a centre times exp(N(0, 1)) per component (the median
nearest-neighbour similarity is about 0.8, as on the flowers, so the threshold stays at 0.90).
Near-duplicates are planted: 950 rows get one copy, 50 get 25 copies each (more than the graph's 20
neighbours per row: the case where the graph alone would miss pairs), each copy the row times
exp(N(0, 0.03)) per component.

Each size and method runs in its own process (peak RSS = that process's ru_maxrss, the rows included):

- `index`: what the audit and split grouping run now, `classical.data.near_duplicates.find_near_duplicates`
  (`embedder.neighbours`: k = 10 for outliers, 20 graph neighbours per row for the pairs, the threshold
  raised by the nearest-neighbour rule), then the outlier scores and the connected components;
- `exact`: what they ran before, `search` (exact blocked matrix products, pairs at 0.90 and k = 10),
  the same threshold rule, outlier scores and components; only up to `--exact-max` rows (quadratic).
  With `--exact-pairs-only` the exact run finds the pairs at 0.90 only (k = 0: the upper triangle,
  half the products of the audit's old search, so its time is a lower bound of the old audit's).

Recall: of the exact run's pairs where there is one; at every size also of the planted pairs (the
pairs among each original and its copies, all far above the threshold) and of the exact pairs of
1,000 sampled rows (an exact product of those rows against all rows).

    python benchmarks/audit_index.py [--sizes 100000,1000000] [--exact-max 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THRESHOLD = 0.90
DIM = 1280
COPIES = [1] * 950 + [25] * 50  # near-copies per planted original


def make_rows(n: int):
    """n normalised clustered rows, then the planted copies at the end; and the planted groups (original, copies)."""
    import numpy as np

    from embedder import normalise

    rng = np.random.default_rng(0)
    centres = rng.gamma(0.5, 1.0, (max(1, n // 50), DIM)).astype(np.float32)
    planted = sum(COPIES)
    Z = np.empty((n, DIM), np.float32)
    for start in range(0, n - planted, 10_000):
        stop = min(n - planted, start + 10_000)
        noise = np.exp(rng.normal(0, 1.0, (stop - start, DIM)).astype(np.float32))
        Z[start:stop] = normalise(centres[rng.integers(0, len(centres), stop - start)] * noise)
    originals = rng.permutation(n - planted)[: len(COPIES)]
    groups = []
    at = n - planted
    for count, original in zip(COPIES, originals.tolist()):
        source = np.square(Z[original])  # the raw non-negative components, up to scale
        Z[at : at + count] = normalise(source * np.exp(rng.normal(0, 0.03, (count, DIM)).astype(np.float32)))
        groups.append([original, *range(at, at + count)])
        at += count
    return Z, groups


def child(n: int, method: str, out: str, knn_k: int) -> None:
    import numpy as np

    from classical.audit import outliers
    from classical.data.near_duplicates import components, effective_threshold, find_near_duplicates, search

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    started = time.perf_counter()
    Z, groups = make_rows(n)
    make_seconds = time.perf_counter() - started
    rows_peak = rss()
    cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # noqa: E731 (user + system seconds)
    cpu_started = cpu()
    started = time.perf_counter()
    if method == "index":
        found, threshold = find_near_duplicates(Z, threshold=THRESHOLD, k=outliers.K, normalised=True)
        i, j, knn = found.i, found.j, found.knn
        described, saturated = found.search, found.saturated
    else:
        found = search(Z, threshold=THRESHOLD, k=knn_k, normalised=True)
        threshold = effective_threshold(THRESHOLD, found.knn[:, 0]) if knn_k else THRESHOLD
        keep = found.cosine >= threshold
        i, j, knn = found.i[keep], found.j[keep], found.knn
        described, saturated = f"exact, blocked matrix products, k = {knn_k}", 0
    search_seconds = time.perf_counter() - started
    search_cpu = cpu() - cpu_started
    started = time.perf_counter()
    flagged, _ = outliers.flag(outliers.scores(knn))
    root = components(n, i, j)
    rest_seconds = time.perf_counter() - started
    np.savez(out, i=i, j=j, flagged=flagged if knn.shape[1] else np.zeros(0, np.int64))
    planted = {(min(a, b), max(a, b)) for g in groups for x, a in enumerate(g) for b in g[x + 1 :]}
    got = set(zip(i.tolist(), j.tolist()))
    rng = np.random.default_rng(1)
    sample = rng.choice(n, 1000, replace=False)
    sampled = set()
    for s in range(0, n, 65536):
        a, b = np.nonzero(Z[s : s + 65536] @ Z[sample].T >= threshold)
        sampled |= {(min(x, y), max(x, y)) for x, y in zip((a + s).tolist(), sample[b].tolist()) if x != y}
    print(
        json.dumps(
            {
                "n": n,
                "method": method,
                "search": described,
                "threshold": threshold,
                "make_seconds": make_seconds,
                "seconds": search_seconds,
                "cpu_seconds": search_cpu,
                "rest_seconds": rest_seconds,
                "rows_mb": Z.nbytes / 2**20,
                "rows_peak_mb": rows_peak,
                "peak_mb": rss(),
                "pairs": len(i),
                "groups": len(np.unique(root)),
                "saturated": saturated,
                "planted_recall": len(planted & got) / len(planted),
                "sampled_recall": len(sampled & got) / max(1, len(sampled)),
                "sampled_pairs": len(sampled),
            }
        )
    )


def run(n: int, method: str, out: Path, knn_k: int = 10) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(n), method, str(out), str(knn_k)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    record = json.loads(result.strip().splitlines()[-1])
    print(f"  ran n={n:,} {method}: {record['seconds']:.1f} s, peak {record['peak_mb']:.0f} MB", file=sys.stderr)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--exact-max", type=int, default=100_000, help="run the exact search up to this many rows")
    parser.add_argument(
        "--exact-pairs-only", action="store_true", help="the exact run finds pairs only (no k nearest neighbours)"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], args.child[2], int(args.child[3]))
        return
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in [int(s) for s in args.sizes.split(",")]:
            index = run(n, "index", Path(scratch) / f"index-{n}.npz")
            index["exact_recall"] = index["outliers_same"] = None
            if n <= args.exact_max:
                exact = run(n, "exact", Path(scratch) / f"exact-{n}.npz", 0 if args.exact_pairs_only else 10)
                a, b = np.load(Path(scratch) / f"index-{n}.npz"), np.load(Path(scratch) / f"exact-{n}.npz")
                truth = set(zip(b["i"].tolist(), b["j"].tolist()))
                index["exact_recall"] = len(truth & set(zip(a["i"].tolist(), a["j"].tolist()))) / max(1, len(truth))
                if not args.exact_pairs_only:
                    index["outliers_same"] = len(set(a["flagged"].tolist()) & set(b["flagged"].tolist())) / max(
                        1, len(b["flagged"])
                    )
                rows.append(exact)
            rows.append(index)
    print(
        f"\naudit near-duplicates + outliers + components, {DIM}-d synthetic clustered rows, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end\n"
    )
    print(
        f"{'rows':>9} {'method':>6} {'search s':>9} {'CPU s':>7} {'rest s':>7} {'peak MB':>8} {'rows MB':>8} {'pairs':>7} "
        f"{'saturated':>9} {'exact recall':>12} {'planted':>8} {'sampled':>8} {'outliers =':>10}"
    )
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        print(
            f"{r['n']:>9,} {r['method']:>6} {r['seconds']:>9.1f} {r.get('cpu_seconds', float('nan')):>7.0f} "
            f"{r['rest_seconds']:>7.1f} {r['peak_mb']:>8.0f} "
            f"{r['rows_mb']:>8.0f} {r['pairs']:>7} {r['saturated']:>9} {fmt(r.get('exact_recall')):>12} "
            f"{r['planted_recall']:>8.4f} {r['sampled_recall']:>8.4f} {fmt(r.get('outliers_same')):>10}"
        )
    for r in rows:
        print(f"  {r['n']:,} {r['method']}: {r['search']}, threshold {r['threshold']:.4f}")
    exact = {r["n"]: r for r in rows if r["method"] == "exact"}
    for r in rows:
        if r["method"] == "index" and r["n"] in exact:
            e = exact[r["n"]]
            print(
                f"{r['n']:,} rows: index {e['seconds'] / r['seconds']:.1f}x faster than exact "
                f"({r['seconds']:.0f} s vs {e['seconds']:.0f} s), peak {r['peak_mb']:.0f} vs {e['peak_mb']:.0f} MB"
            )
    print(
        "(search s: pairs + 10 nearest neighbours, wall clock; CPU s: its user + system seconds; rest s: outlier scores and components; peak MB: the whole "
        "process, the rows included; outliers =: share of the exact run's flagged outliers the index run flags too)"
    )


if __name__ == "__main__":
    main()
