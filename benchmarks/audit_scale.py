"""The audit at scale: the whole `classical audit` at 100k and 1M rows, the similarity graph and index, and the old exact search.

Rows are the real flower embeddings (1,280-d) repeated, each component multiplied by exp(N(0, NOISE))
(`--noise`, default 1.5) so that the copies are distinct images, not near-duplicates of each other
(non-negative, like pooled ReLU6 features). Near-duplicates are planted so that there are pairs to
find: 950 rows get one copy, 50 get 25 copies each (more than the graph's 20 edges per row: the case
where the graph alone would miss pairs), each copy the row times exp(N(0, 0.03)) per component.

`--audit` (e.g. `--audit --sizes 100000,1000000 --work /scratch`): writes a cache of that many rows
(through the cache's writer, labels of the flowers' rows, the planted copies at the end) under
`--work`, then runs the `classical audit` command on it in its own process and reports its wall
seconds, its peak RSS (VmHWM of /proc/PID/status, polled until it exits), the audit's phases (from
audit.json), the planted pairs found (pairs among each original and its copies, all far above the
threshold) and the saturated rows. The cache is deleted afterwards unless `--keep`.

`--index` (e.g. `--index --sizes 100000,1000000`): the audit's k-NN graph on rows in memory
(`embedder.neighbours`: k = 10 for outliers, 20 edges per row for the pairs, threshold 0.90): its
time and peak RSS; the split grouping (connected components of the pairs); the persisted index
of photo search (`VectorIndex` with `plan_for(n)`, as `embedder similar` builds it): build time,
single-query latency (p50/p95 of 200 queries of one row, k = 10) and recall@10 against an exact numpy
product; and the recall of the exact near-duplicate pairs: 1,000 sampled rows plus some planted
copies, all their pairs at or above 0.90 found by an exact product against every row, and the share
of them the graph has.

Without either: the exact blocked search the audit ran before the index
(`classical.data.near_duplicates.search`, threshold 0.90, upper triangle only) at each size in its
own process, peak RSS = that process's ru_maxrss, and a quadratic 1M estimate.

    python benchmarks/audit_scale.py --cache /work/data/flowers.h5 --audit --sizes 100000,1000000 --work /tmp/audit
    python benchmarks/audit_scale.py --cache /work/data/flowers.h5 --index --sizes 100000,1000000
    python benchmarks/audit_scale.py --cache /tmp/audit/flowers.h5 [--sizes 10000,30000,100000] [--knn]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

COPIES = [1] * 950 + [25] * 50  # how many near-copies each planted original gets


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


def make_rows(cache: str, n: int, noise: float):
    """n normalised rows: real embeddings with log-normal noise, then planted near-duplicate copies at the end."""
    import numpy as np

    from embedder import normalise, open_cache

    with open_cache(cache) as opened:
        base = opened.backbone().load()
    rng = np.random.default_rng(0)
    copies = COPIES
    planted = sum(copies)
    Z = np.empty((n, base.shape[1]), np.float32)
    for start in range(0, n - planted, 10_000):
        stop = min(n - planted, start + 10_000)
        rows = rng.integers(0, len(base), stop - start)
        Z[start:stop] = normalise(base[rows] * np.exp(rng.normal(0, noise, (len(rows), base.shape[1]))))
    originals = rng.permutation(n - planted)[: len(copies)]
    at = n - planted
    for count, original in zip(copies, originals):
        source = np.square(Z[original])  # back to the raw (non-negative) components, up to scale
        Z[at : at + count] = normalise(source * np.exp(rng.normal(0, 0.03, (count, base.shape[1]))))
        at += count
    return Z


def child_index(cache: str, n: int, noise: float) -> None:
    import numpy as np

    from classical.data.near_duplicates import components
    from embedder.cache.similarity import VectorIndex, neighbours, plan_for

    Z = make_rows(cache, n, noise)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    before = rss()
    started = time.perf_counter()
    graph = neighbours(Z, k=10, threshold=0.90)
    graph_seconds = time.perf_counter() - started
    graph_peak = rss()
    started = time.perf_counter()
    root = components(n, graph.i, graph.j)
    group_seconds = time.perf_counter() - started
    rng = np.random.default_rng(1)
    plan = plan_for(n)
    started = time.perf_counter()
    if plan.kind == "exact":
        index = VectorIndex.create(plan, Z.shape[1])
    else:
        index = VectorIndex.create(plan, Z.shape[1], Z[np.sort(rng.permutation(n)[: plan.trained_on])])
    for start in range(0, n, 65536):
        index.add(Z[start : start + 65536], np.arange(start, min(n, start + 65536)))
    build_seconds = time.perf_counter() - started
    queries = rng.integers(0, n, 200)
    latency = []
    found = []
    for q in queries.tolist():
        t0 = time.perf_counter()
        _, ids = index.search(Z[q : q + 1], 10)
        latency.append(time.perf_counter() - t0)
        found.append(ids[0])
    truth = np.concatenate([Z[s : s + 65536] @ Z[queries].T for s in range(0, n, 65536)])  # (n, 200)
    exact = np.argsort(-truth, axis=0)[:10].T
    recall10 = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, exact)]))
    del truth
    sample = rng.choice(n, 1000, replace=False)
    sample = np.union1d(sample, np.arange(n - 1200, n, 7))  # planted copies among them too
    pairs = set()
    for s in range(0, n, 65536):
        sims = Z[s : s + 65536] @ Z[sample].T
        a, b = np.nonzero(sims >= 0.90)
        pairs |= {(min(x, y), max(x, y)) for x, y in zip((a + s).tolist(), sample[b].tolist()) if x != y}
    got = set(zip(graph.i.tolist(), graph.j.tolist()))
    print(
        json.dumps(
            {
                "n": n,
                "plan": graph.method.describe(),
                "graph_seconds": graph_seconds,
                "graph_peak_mb": graph_peak,
                "input_mb": Z.nbytes / 2**20,
                "before_mb": before,
                "group_seconds": group_seconds,
                "groups": len(np.unique(root)),
                "pairs": len(graph.i),
                "saturated": graph.saturated,
                "index_seconds": build_seconds,
                "p50_ms": 1000 * float(np.median(latency)),
                "p95_ms": 1000 * float(np.percentile(latency, 95)),
                "recall10": recall10,
                "pair_recall": len(pairs & got) / max(len(pairs), 1),
                "sampled_pairs": len(pairs),
                "peak_mb": rss(),
            }
        )
    )


def main_index(args: argparse.Namespace) -> None:
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        out = subprocess.run(
            [sys.executable, __file__, "--cache", args.cache, "--noise", str(args.noise), "--index-child", str(n)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  ran n={n:,}: {results[-1]['graph_seconds']:.1f} s", file=sys.stderr)
    print(f"similarity index, 1,280-d, threshold 0.90, {os.cpu_count()} cores, load average {os.getloadavg()}\n")
    print(
        f"{'rows':>9} {'graph s':>8} {'graph peak MB':>13} {'rows MB':>8} {'group s':>8} {'pairs':>7} {'saturated':>9} "
        f"{'index s':>8} {'p50 ms':>7} {'p95 ms':>7} {'recall@10':>9} {'pair recall':>11}"
    )
    for r in results:
        print(
            f"{r['n']:>9,} {r['graph_seconds']:>8.1f} {r['graph_peak_mb']:>13.0f} {r['input_mb']:>8.0f} "
            f"{r['group_seconds']:>8.1f} {r['pairs']:>7} {r['saturated']:>9} {r['index_seconds']:>8.1f} "
            f"{r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['recall10']:>9.3f} {r['pair_recall']:>11.3f}"
        )
        print(f"          {r['plan']}; {r['sampled_pairs']} exact pairs of the sampled rows")


def write_cache(cache: str, path: Path, n: int, noise: float) -> list[list[str]]:
    """A cache of n rows at `path` (see the module); returns the paths of each planted group (original first)."""
    import numpy as np

    from embedder import open_cache
    from embedder.cache import Batch, CacheWriter, Row

    with open_cache(cache) as opened:
        rows = opened.backbone()
        base, labels, names, key, provenance = rows.load(), rows.labels, rows.class_names, rows.key, rows.provenance
    rng = np.random.default_rng(0)
    planted = sum(COPIES)
    originals = np.sort(rng.permutation(n - planted)[: len(COPIES)])
    source = np.empty((n, 2), np.int64)  # the flower row and the block of each generated row
    raw: dict[int, np.ndarray] = {}
    groups: list[list[str]] = []
    name = lambda row, flower: f"{names[labels[flower]]}/{row:07d}.jpg"  # noqa: E731
    with CacheWriter(path) as writer:
        writer.begin(key, provenance)
        for start in range(0, n - planted, 50_000):
            stop = min(n - planted, start + 50_000)
            flowers = rng.integers(0, len(base), stop - start)
            X = base[flowers] * np.exp(rng.normal(0, noise, (stop - start, base.shape[1]))).astype(np.float32)
            for r in originals[(originals >= start) & (originals < stop)].tolist():
                raw[r] = X[r - start].copy()
            source[start:stop, 0] = flowers
            batch = [
                Row(name(r, f), rng.bytes(32).hex(), names[labels[f]], 1, 1)
                for r, f in zip(range(start, stop), flowers)
            ]
            writer.write_batch(key, Batch(embeddings=X, rows=batch))
            if (start // 50_000) % 4 == 3:  # merge every 200,000 rows, then journal again
                writer.commit()
                writer.begin(key, provenance)
        at = n - planted
        X = np.empty((planted, base.shape[1]), np.float32)
        batch = []
        for count, original in zip(COPIES, originals.tolist()):
            X[at - (n - planted) : at - (n - planted) + count] = raw[original] * np.exp(
                rng.normal(0, 0.03, (count, base.shape[1]))
            ).astype(np.float32)
            flower = int(source[original, 0])
            group = [name(original, flower)]
            for r in range(at, at + count):
                group.append(name(r, flower))
                batch.append(Row(group[-1], rng.bytes(32).hex(), names[labels[flower]], 1, 1))
            groups.append(group)
            at += count
        writer.write_batch(key, Batch(embeddings=X, rows=batch))
    return groups


def run_audit(cache: str, n: int, noise: float, work: Path, keep: bool) -> dict:
    """Write the cache, run `classical audit` on it in its own process, and read what it did."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"audit-{n}.h5"
    for old in (path, path.with_name(path.name + ".segments"), path.with_name(path.name + ".lock")):
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    started = time.perf_counter()
    groups = write_cache(cache, path, n, noise)
    write_seconds = time.perf_counter() - started
    run = work / f"run-{n}"
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "classical.cli", "audit", str(path), "--out", str(run)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hwm = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            hwm = max(hwm, int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]))
        except (OSError, StopIteration):
            pass
        time.sleep(0.5)
    wall = time.perf_counter() - started
    output = process.stdout.read() if process.stdout else ""
    if process.returncode:
        raise RuntimeError(f"classical audit failed ({process.returncode}):\n{output}")
    result = json.loads((run / "audit.json").read_text())
    found = {(p["a"], p["b"]) for p in result["near_duplicates"]}
    planted = {(min(a, b), max(a, b)) for group in groups for i, a in enumerate(group) for b in group[i + 1 :]}
    found_sorted = {(min(a, b), max(a, b)) for a, b in found}
    if not keep:
        shutil.rmtree(path.with_name(path.name + ".segments"), ignore_errors=True)
        for old in (path, path.with_name(path.name + ".lock")):
            old.unlink(missing_ok=True)
    near, issues = result["near_duplicates_method"], result["label_issues_method"]
    return {
        "n": n,
        "write_seconds": write_seconds,
        "wall_seconds": wall,
        "peak_mb": hwm / 1024,
        "audit_seconds": result["seconds"],
        "near_seconds": near["seconds"],
        "issue_seconds": issues["seconds"],
        "outlier_seconds": result["outliers_method"]["seconds"],
        "map_seconds": (result.get("map") or {}).get("seconds"),
        "pairs": len(found),
        "planted": len(planted),
        "planted_found": len(planted & found_sorted),
        "saturated": result["summary"]["near_duplicate_saturated_rows"],
        "search": near["search"],
        "features": issues.get("features"),
        "fit_rows": issues.get("fit_rows"),
        "label_issues": result["summary"]["label_issues"],
        "outliers": result["summary"]["outliers"],
        "load": os.getloadavg(),
    }


def main_audit(args: argparse.Namespace) -> None:
    results = []
    load = os.getloadavg()
    for n in [int(s) for s in args.sizes.split(",")]:
        results.append(run_audit(args.cache, n, args.noise, Path(args.work), args.keep))
        print(f"  ran n={n:,}: {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    print(f"classical audit, 1,280-d, {os.cpu_count()} cores, load average {load} at the start\n")
    print(
        f"{'rows':>9} {'write s':>8} {'audit wall s':>12} {'peak RSS MB':>11} {'near-dup s':>10} {'label s':>8} "
        f"{'outlier s':>9} {'map s':>6} {'pairs':>6} {'planted found':>13} {'saturated':>9} {'load after':>16}"
    )
    for r in results:
        print(
            f"{r['n']:>9,} {r['write_seconds']:>8.0f} {r['wall_seconds']:>12.0f} {r['peak_mb']:>11,.0f} "
            f"{r['near_seconds']:>10.0f} {r['issue_seconds']:>8.0f} {r['outlier_seconds']:>9.1f} "
            f"{r['map_seconds'] or 0:>6.1f} {r['pairs']:>6} {r['planted_found']:>6}/{r['planted']:<6} "
            f"{r['saturated']:>9} {' '.join(f'{x:.1f}' for x in r['load']):>16}"
        )
        print(f"          {r['search']}; label issues on {r['features']} (fit rows {r['fit_rows']})")


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
    parser.add_argument("--index", action="store_true", help="measure the similarity index instead (see above)")
    parser.add_argument("--audit", action="store_true", help="measure the whole classical audit (see above)")
    parser.add_argument("--work", default="/tmp/audit-scale", help="folder of --audit's caches and runs")
    parser.add_argument("--keep", action="store_true", help="keep --audit's caches")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--index-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.index_child:
        child_index(args.cache, args.index_child, args.noise)
        return
    if args.index:
        main_index(args)
        return
    if args.audit:
        main_audit(args)
        return
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
