"""Both cores busy, never oversubscribed: joblib workers x BLAS/OpenMP threads <= the cores this process may use.

The searches run `workers` joblib processes; each worker's BLAS and OpenMP pools are limited to
`threads = cores // workers` (joblib's `inner_max_num_threads`); the parent, which fits alone
(refits) or waits for its workers, keeps at most `cores` threads (`threadpoolctl.threadpool_limits`).
`measure` asks the workers themselves what their thread pools hold, so the report shows the
limits that were in force, not the ones that were asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import joblib
from threadpoolctl import threadpool_info, threadpool_limits


def cores() -> int:
    """The cores this process may use (affinity and cgroup quotas counted, as joblib counts them)."""
    return max(1, int(joblib.cpu_count(only_physical_cores=False)))


def plan_threads(n_jobs: int, available: int | None = None) -> dict[str, int]:
    """Workers and threads per worker for `n_jobs` (-1: all cores): workers x threads <= cores."""
    available = available or cores()
    if n_jobs == 0:
        raise ValueError("n_jobs must be a number of workers >= 1, or -1 for all cores. Received: n_jobs=0")
    workers = available if n_jobs < 0 else min(n_jobs, available)
    return {"cores": available, "workers": workers, "threads_per_worker": max(1, available // workers)}


def _pool_threads() -> int:
    return max((pool["num_threads"] for pool in threadpool_info()), default=1)


def measure(plan: dict[str, int]) -> dict[str, Any]:
    """Threads held by the thread pools of the parent and of each joblib worker, asked inside them."""
    in_workers = joblib.Parallel(n_jobs=plan["workers"])(
        joblib.delayed(_pool_threads)() for _ in range(plan["workers"])
    )
    busy = max(max(in_workers) * plan["workers"], _pool_threads())  # workers run together; the parent alone
    return {
        "parent_threads": _pool_threads(),
        "worker_threads": sorted(set(in_workers)),
        "max_busy_threads": busy,
        "oversubscribed": busy > plan["cores"],
        "method": "threadpoolctl.threadpool_info() in the parent and in each joblib worker (largest BLAS/OpenMP pool)",
    }


@contextlib.contextmanager
def limited(plan: dict[str, int], local: bool = True) -> Iterator[None]:
    """Run the block with the plan's limits: workers' pools at `threads_per_worker`, the parent's at `cores`.

    `local=False` (the jobs run on a Ray cluster, whose nodes have their own cores): the parent only.
    """
    with (
        threadpool_limits(limits=plan["cores"]),
        (
            joblib.parallel_config(
                backend="loky", n_jobs=plan["workers"], inner_max_num_threads=plan["threads_per_worker"]
            )
            if local
            else contextlib.nullcontext()
        ),
    ):
        yield
