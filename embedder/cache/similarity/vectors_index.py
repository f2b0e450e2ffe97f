"""A faiss index of normalised rows: exact inner product when small, IVF with 8-bit scalar quantisation when large.

Below `EXACT_ROWS` rows the index is a flat inner-product index: every search compares the query with
every row, so its answers are those of an exact all-pairs product. From `EXACT_ROWS` rows on it is an
inverted file (IVF) of `nlist` k-means cells over 8-bit scalar-quantised rows (1 byte per component,
a quarter of float32): a search scans the `nprobe` cells nearest the query. `plan_for` chooses both
from the row count; the choice travels with the index (`Plan`). Ids are the caller's (int64); rows
can be added (O(k)) and removed without a rebuild.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

EXACT_ROWS = 20_000  # below this many rows: exact search (a flat index)
OUTGROWN = 10  # an IVF trained on T rows is retrained once it holds more than OUTGROWN x T rows
TRAIN_PER_CELL = 40  # k-means sample: this many rows per cell (faiss warns below 39)
SEARCH_ROWS = 4096  # queries per faiss call when searching many rows


@dataclass(frozen=True)
class Plan:
    """How an index is built: "exact" (flat) or "ivf-sq8" with `nlist` cells, `nprobe` scanned per query."""

    kind: str
    nlist: int = 0
    nprobe: int = 0
    trained_on: int = 0  # rows the IVF's cells and quantiser were trained on (0 for exact)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The plan in words, for logs and reports."""
        if self.kind == "exact":
            return "exact inner product (faiss IndexFlatIP)"
        return (
            f"approximate: faiss IVF{self.nlist},SQ8 (inner product), nprobe {self.nprobe}, "
            f"trained on {self.trained_on:,} rows"
        )


def plan_for(rows: int) -> Plan:
    """The plan for an index of `rows` rows: exact below EXACT_ROWS, else IVF-SQ8 with about 4 sqrt(rows) cells.

    nlist is the power of two nearest 4 sqrt(rows) (1,024 at 100k rows, 4,096 at 1M); nprobe is
    nlist / 256, at least 8 (8 at 100k, 16 at 1M): on the benchmark (`benchmarks/audit_scale.py`)
    recall@10 is 0.976 at 100k with nprobe 8 and barely moves with more (0.981 at 64: what is left is
    the 8-bit quantisation), while the cost of a search grows with nprobe.
    """
    if rows < EXACT_ROWS:
        return Plan("exact")
    nlist = 2 ** round(math.log2(4 * math.sqrt(rows)))
    return Plan("ivf-sq8", nlist=nlist, nprobe=max(8, nlist // 256), trained_on=min(rows, TRAIN_PER_CELL * nlist))


def outgrown(plan: Plan, rows: int) -> str | None:
    """Why an index of `plan` no longer fits `rows` rows (a rebuild is due), or None."""
    wanted = plan_for(rows)
    if wanted.kind != plan.kind:
        return f"{rows:,} rows call for {wanted.describe()}, the index is {plan.describe()}"
    if plan.kind != "exact" and rows > OUTGROWN * plan.trained_on:
        return f"{rows:,} rows are more than {OUTGROWN}x the {plan.trained_on:,} rows its cells were trained on"
    return None


class VectorIndex:
    """A faiss index of unit rows under caller-chosen int64 ids."""

    def __init__(self, index: Any, plan: Plan) -> None:
        self.faiss = index
        self.plan = plan

    @classmethod
    def create(cls, plan: Plan, dim: int, sample: np.ndarray | None = None) -> VectorIndex:
        """An empty index of `plan`; an IVF is trained on `sample` (normalised rows, float32)."""
        import faiss

        if plan.kind == "exact":
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), plan)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, plan.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        if sample is None or len(sample) < plan.nlist:
            raise ValueError(f"an IVF of {plan.nlist} cells needs at least {plan.nlist} training rows")
        index.train(np.ascontiguousarray(sample, np.float32))
        index.nprobe = plan.nprobe
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # lets remove_ids and reconstruct work by id
        return cls(index, Plan(plan.kind, plan.nlist, plan.nprobe, len(sample)))

    @property
    def ntotal(self) -> int:
        return int(self.faiss.ntotal)

    def add(self, Z: np.ndarray, ids: np.ndarray) -> None:
        """Add normalised rows `Z` under `ids`."""
        if len(Z):
            self.faiss.add_with_ids(np.ascontiguousarray(Z, np.float32), np.asarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> int:
        """Remove the rows of `ids`; how many were there."""
        import faiss

        ids = np.ascontiguousarray(ids, np.int64)
        if not len(ids):
            return 0
        # the IVF's hash-table direct map removes ids one by one (an array); the flat id map scans with a set
        kind = faiss.IDSelectorBatch if self.plan.kind == "exact" else faiss.IDSelectorArray
        return int(self.faiss.remove_ids(kind(len(ids), faiss.swig_ptr(ids))))

    def search(self, Z: np.ndarray, k: int, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar rows of each query: similarities (n, k) float32 descending and ids (-1: none)."""
        import faiss

        Z = np.ascontiguousarray(Z, np.float32)
        if self.plan.kind != "exact":
            params = faiss.SearchParametersIVF(nprobe=nprobe or self.plan.nprobe)
            return self.faiss.search(Z, k, params=params)
        return self.faiss.search(Z, k)

    def range_search(self, Z: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row with similarity >= threshold to each query: (limits, similarities, ids), faiss's layout."""
        import faiss

        Z = np.ascontiguousarray(Z, np.float32)
        if self.plan.kind != "exact":
            return self.faiss.range_search(
                Z, float(threshold), params=faiss.SearchParametersIVF(nprobe=self.plan.nprobe)
            )
        return self.faiss.range_search(Z, float(threshold))

    def write(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.faiss, str(path))

    @classmethod
    def read(cls, path: Path, plan: Plan) -> VectorIndex:
        import faiss

        index = faiss.read_index(str(path))
        if plan.kind != "exact":
            index.nprobe = plan.nprobe
        return cls(index, plan)
