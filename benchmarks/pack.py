"""`embedder pack` at scale: a 200,000-row x 1280 cache over several segments packed into one self-contained file.

Builds the cache through the cache's own writer, in --commits commits (one segment each, as growing a cache
does), from synthetic float32 rows; then times one whole `embedder pack` process (seconds and its own peak
RSS, measured as benchmarks/cache_scale.py does), against a plain `cp -r` of the cache file and its segments
folder, and prints sizes on disk and the ratios. It also times what a write now checks before it writes
(every segment opened, the lookup tables read), and the packed file's first and second growth:

    python benchmarks/pack.py                      # 200,000 rows x 1280, 8 commits
    python benchmarks/pack.py --rows 20000 --dim 256 --work /tmp/pack-bench
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cache_scale import BUILD_BATCH, RUN

from embedder import open_cache
from embedder.cache import Batch, CacheWriter, Row, verify
from embedder.cache.damage import check_before_write

KEY = "mobilenet_v2-1.0-224-synthetic-bench-avg-crop-fp32"


def provenance(dim: int) -> dict:
    return {
        "backbone_key": KEY,
        "architecture": "mobilenet_v2",
        "alpha": 1.0,
        "size": 224,
        "weights": "synthetic",
        "weights_file": "",
        "weights_sha256": "0" * 64,
        "pooling": "avg",
        "resize": "crop",
        "precision": "fp32",
        "dim": dim,
        "source": "synthetic",
    }


def commit(cache: Path, start: int, count: int, dim: int, seed: int) -> None:
    """One commit (one segment) of `count` synthetic rows, written through the cache's writer in batches."""
    rng = np.random.default_rng(seed)
    with CacheWriter(cache) as writer:
        writer.begin(KEY, provenance(dim))
        for at in range(start, start + count, BUILD_BATCH):
            n = min(BUILD_BATCH, start + count - at)
            embeddings = rng.random((n, dim), dtype=np.float32) * 6
            rows = [
                Row(f"photos/{i // 1000:04d}/{i:07d}.jpg", rng.bytes(32).hex(), f"class{i % 10}", 1000 + i, i)
                for i in range(at, at + n)
            ]
            writer.write_batch(KEY, Batch(embeddings=embeddings, rows=rows))


def disk(cache: Path) -> int:
    """Bytes on disk of a cache file and everything beside it named after it (segments, index)."""
    return sum(
        q.stat().st_size
        for p in cache.parent.glob(cache.name + "*")
        for q in ([p] if p.is_file() else p.rglob("*"))
        if q.is_file()
    )


def timed_process(args: list[str]) -> dict[str, float]:
    """One whole `embedder pack` process: its seconds, those of the packing itself, and its own peak RSS (VmHWM)."""
    result = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr}")
    packing = re.search(r" in ([0-9.]+) s$", result.stdout.strip())
    return {**json.loads(result.stderr.strip().splitlines()[-1]), "packing": float(packing.group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--commits", type=int, default=8, help="Commits (segments) the cache is built in.")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="pack-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    (work / "copy").mkdir()
    cache, packed = work / "src" / "cache.h5", work / "packed.h5"

    started = time.perf_counter()
    per = -(-args.rows // args.commits)
    for c, start in enumerate(range(0, args.rows, per)):
        commit(cache, start, min(per, args.rows - start), args.dim, seed=c)
    build = time.perf_counter() - started
    segments = len(list(cache.parent.rglob("*.segments/*/*.h5")))
    print(f"built {args.rows:,} x {args.dim} rows in {segments} segments in {build:.1f} s", flush=True)

    started = time.perf_counter()
    check_before_write(cache)
    check = time.perf_counter() - started

    started = time.perf_counter()
    subprocess.run(
        ["cp", "-r", str(cache), str(cache.with_name(cache.name + ".segments")), str(work / "copy")], check=True
    )
    cp = time.perf_counter() - started

    (work / "tiny").mkdir()
    commit(work / "tiny" / "cache.h5", 0, 100, args.dim, seed=99)
    baseline = timed_process(["pack", str(work / "tiny" / "cache.h5"), "--out", str(work / "tiny" / "packed.h5")])
    run = timed_process(["pack", str(cache), "--out", str(packed)])
    source_bytes, packed_bytes = disk(cache), disk(packed)

    started = time.perf_counter()
    problems = verify(packed)
    verify_seconds = time.perf_counter() - started
    with open_cache(cache) as a, open_cache(packed) as b:
        same = all(
            np.array_equal(a[KEY].embeddings[s : s + 65536], b[KEY].embeddings[s : s + 65536])
            for s in range(0, args.rows, 65536)
        )

    growth = []
    for g in range(2):  # the first write moves the packed rows into a segment (once); the second costs what it adds
        started = time.perf_counter()
        commit(packed, args.rows + 100 * g, 100, args.dim, seed=1000 + g)
        growth.append(time.perf_counter() - started)

    print(f"\n{'':28}{'seconds':>9}  {'peak MB':>8}  {'disk MB':>8}")
    print(f"{'cp -r (file + segments)':28}{cp:>9.2f}  {'':>8}  {source_bytes / 1e6:>8.0f}")
    print(f"{'embedder pack (process)':28}{run['seconds']:>9.2f}  {run['peak_mb']:>8.0f}  {packed_bytes / 1e6:>8.0f}")
    print(f"{'  of which packing':28}{run['packing']:>9.1f}")
    print(f"{'embedder pack, 100 rows':28}{baseline['seconds']:>9.2f}  {baseline['peak_mb']:>8.0f}")
    print(f"\npack / cp -r time          {run['seconds'] / cp:.2f} (process), {run['packing'] / cp:.2f} (packing)")
    print(f"packed / source size       {packed_bytes / source_bytes:.3f}")
    print(
        f"peak RSS over 100 rows     +{run['peak_mb'] - baseline['peak_mb']:.0f} MB, for "
        f"{args.rows * args.dim * 4 / 1e6:.0f} MB of embeddings"
    )
    print(f"verify of the packed file  {verify_seconds:.2f} s, {'sound' if not problems else problems[:3]}")
    print(f"rows bit-identical         {same}")
    print(f"write's damage check       {check * 1000:.0f} ms ({segments} segments opened, lookup tables read)")
    print(
        f"packed file grows by 100   {growth[0]:.2f} s (first write: rows move into a segment), then {growth[1]:.2f} s"
    )
    print(f"load average               {os.getloadavg()[0]:.2f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
