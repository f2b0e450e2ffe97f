"""What damage looks like, in one sentence: the structural checks every write makes first, and block-wise row checks.

Three parts, shared by `embedder verify`, `embedder pack` and the writer:

- `structure_problems`: a backbone group's datasets are there and row-aligned, its lookup tables
  have one entry per row, and each segment file it maps exists, opens, and holds the rows its
  runs read. Cheap (no row data is read): a write runs it on every backbone before it writes.
- `RowChecker`: the row values, fed block by block (bounded memory): finite embeddings, well-formed
  content hashes, labels in range, unique paths, lookup tables that match the rows.
- `reading`: turns what h5py raises on damaged bytes (OSError, or a KeyError from a damaged object
  header) into a CacheError naming the file, so a command says one line instead of a traceback.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from embedder.cache.layout import GROUP
from embedder.cache.lookup import DIGEST, RowLookup, path_hashes
from embedder.cache.segments import COLUMNS, read_runs, segment_file
from embedder.errors import CacheError

RESTORE = "restore the cache from a backup, or extract again into a new file"
LOOKUP = ("path_hash", "path_row", "sha", "sha_row")
SHOWN = 3  # row ranges named in one line


def damaged(path: Path, what: str) -> CacheError:
    """The one error of a damaged cache: what is wrong, and how to find out more and recover."""
    return CacheError(
        f"cache '{path}' is damaged: {what}. Run `embedder verify {path}` for every problem; restore "
        "the file from a backup, or extract again into a new file (the images are re-embedded)."
    )


def from_h5py(exc: BaseException) -> bool:
    """Whether `exc` was raised inside h5py (a damaged file), not by the caller's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and f"{os.sep}h5py{os.sep}" in frames[-1].filename


@contextmanager
def reading(path: str | os.PathLike, what: str = "reading it failed") -> Iterator[None]:
    """Raise what h5py raises on damaged bytes as CacheError naming cache `path` (`what` says what was read)."""
    try:
        yield
    except OSError as exc:
        raise damaged(Path(path), f"{what} ({exc})") from None
    except KeyError as exc:
        if not from_h5py(exc):
            raise
        raise damaged(
            Path(path), f"{what} (an object is missing or unreadable: {exc.args[0] if exc.args else exc})"
        ) from None


def structure_problems(cache: Path, group: h5py.Group) -> list[str]:
    """The structural problems of backbone group `group` of cache file `cache`, one line each (no row data read)."""
    problems: list[str] = []
    members: dict[str, h5py.Dataset] = {}
    for name in COLUMNS:
        try:
            if name in group:
                members[name] = group[name]
        except (OSError, KeyError) as exc:
            problems.append(f"dataset {name} cannot be opened ({exc}); {RESTORE}.")
            members[name] = None
    missing = [name for name in (*COLUMNS, "failures") if name not in group and name not in members]
    if missing:
        problems.append(f"dataset {', '.join(missing)} missing (damaged, or written by another tool); {RESTORE}.")
    lengths = {name: int(dataset.shape[0]) for name, dataset in members.items() if dataset is not None}
    if len(set(lengths.values())) > 1:
        problems.append(
            f"datasets are not row-aligned ({', '.join(f'{n} {r}' for n, r in lengths.items())}); {RESTORE}."
        )
    rows = max(lengths.values(), default=0)
    if "index" in group:
        try:
            table = group["index"]
            absent = [name for name in LOOKUP if name not in table]
            sizes = {name: int(table[name].shape[0]) for name in LOOKUP if name in table}
        except (OSError, KeyError) as exc:
            absent, sizes = [], {}
            problems.append(f"the lookup tables cannot be opened ({exc}); {RESTORE}.")
        if absent:
            problems.append(f"lookup table index/{', index/'.join(absent)} missing; {RESTORE}.")
        wrong = [f"index/{name} {size}" for name, size in sizes.items() if size != rows]
        if wrong and len(set(lengths.values())) <= 1:
            problems.append(
                f"the lookup tables do not have one entry per row ({rows} rows: {', '.join(wrong)}); {RESTORE}."
            )
    if "runs" in group:
        problems += _segment_structure(cache, group, members)
    return problems


def _segment_structure(cache: Path, group: h5py.Group, members: dict[str, h5py.Dataset]) -> list[str]:
    """Each segment file of the group's runs exists, opens, and has every dataset with the rows its runs read."""
    try:
        runs = read_runs(group)
    except (OSError, KeyError, ValueError) as exc:
        return [f"its list of segments (runs/) cannot be read ({exc}); {RESTORE}."]
    problems = []
    sizes: dict[str, int] = {}
    for run in runs:
        sizes[run.file] = max(sizes.get(run.file, 0), run.rows)
    embeddings = members.get("embeddings")
    dim = int(embeddings.shape[1]) if embeddings is not None and len(embeddings.shape) == 2 else None
    for file, rows in sizes.items():
        segment = segment_file(cache, file)
        if not segment.is_file():
            problems.append(
                f"segment {segment} is missing; move the cache together with its .segments folder, or {RESTORE}."
            )
            continue
        try:
            with h5py.File(segment, "r") as handle:
                for name in COLUMNS:
                    if name not in handle or handle[name].shape[0] != rows:
                        problems.append(f"segment {segment}: dataset {name} missing or not {rows} rows; {RESTORE}.")
                    elif name == "embeddings" and dim is not None and handle[name].shape[1:] != (dim,):
                        problems.append(f"segment {segment}: embeddings are not {dim}-d; {RESTORE}.")
        except (OSError, KeyError) as exc:
            problems.append(f"segment {segment} cannot be opened ({exc}; truncated?); {RESTORE}.")
    return problems


def bad_segments(cache: Path, group: h5py.Group) -> set[str]:
    """The segment files (as runs name them) of the group that are missing or cannot be opened."""
    bad = set()
    for run in read_runs(group):
        if run.file in bad:
            continue
        try:
            with h5py.File(segment_file(cache, run.file), "r"):
                pass
        except (OSError, FileNotFoundError):
            bad.add(run.file)
    return bad


def check_before_write(path: Path) -> None:
    """Raise CacheError (one line) when cache file `path` has a structural problem: a write never proceeds on one.

    Every backbone group is checked (structure and lookup tables), since a write carries every group into
    the new file; the row data a write reads is checked by HDF5's checksums as it reads it (see `reading`).
    """
    if not path.exists():
        return
    problems: list[str] = []
    with reading(path, "it cannot be read"), h5py.File(path, "r") as handle:
        groups = handle.get(GROUP, {})
        for key in groups:
            problems += [f"backbone {key}: {p.rsplit('; ', 1)[0]}" for p in structure_problems(path, groups[key])]
    if not problems:
        check_tables(path)  # checksummed, 48 bytes per row: what planning and merging read anyway
        return
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise CacheError(
            f"cache '{path}' is damaged, nothing was written: {problems[0]}{more}. Run `embedder verify {path}` "
            "for every problem; restore the file from a backup, or extract again into a new file."
        )


def check_tables(path: str | os.PathLike) -> None:
    """Read the small file's lookup tables and labels of every backbone (checksummed); raise CacheError naming the
    file if one fails.

    52 bytes per row: what every write reads anyway, and what `embedder info` reads to say damage there too.
    """
    path = Path(path)
    with reading(path, "its lookup tables cannot be read"), h5py.File(path, "r") as handle:
        for group in handle.get(GROUP, {}).values():
            check_group_tables(path, group)


def check_group_tables(path: Path, group: h5py.Group) -> None:
    """Read backbone group `group`'s lookup tables and own labels (if it has them); raise CacheError naming cache
    `path` if they fail."""
    key = group.name.rsplit("/", 1)[-1]
    if "index" in group:
        with reading(path, f"the lookup tables of backbone {key} cannot be read"):
            RowLookup.read(group)
    if "runs" in group and "label" in group and not group["label"].is_virtual:
        with reading(path, f"the labels of backbone {key} cannot be read"):
            group["label"][...]


def ranges(starts: list[tuple[int, int]]) -> str:
    """Row ranges as text: 'rows 0-8191, 16384-24575 (and 3 more ranges)'."""
    merged: list[list[int]] = []
    for start, stop in sorted(starts):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    shown = ", ".join(f"{a}-{b}" for a, b in merged[:SHOWN])
    more = f" (and {len(merged) - SHOWN} more ranges)" if len(merged) > SHOWN else ""
    return f"rows {shown}{more}"


class RowChecker:
    """The checks of row values, fed one block of rows at a time; then `problems()`.

    Keeps 48 bytes per row (each row's path hash and raw content hash) to check unique paths and the
    lookup tables at the end, and to build the lookup tables of a copy (`lookup()`).
    """

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.nonfinite = 0
        self.malformed = 0
        self.first_malformed: bytes | None = None
        self.bad_labels = 0
        self.rows: list[np.ndarray] = []
        self.path_hash: list[np.ndarray] = []
        self.sha: list[np.ndarray] = []
        self.skipped = 0

    def add(
        self,
        start: int,
        embeddings: np.ndarray,
        paths: np.ndarray,
        shas: np.ndarray,
        labels: np.ndarray,
        keep: np.ndarray | None = None,
    ) -> None:
        """Check rows [start, start + len(paths)); `keep` (bool per row) leaves rows out (e.g. of a missing segment)."""
        n = len(paths)
        keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
        self.skipped += int((~keep).sum())
        embeddings, paths, shas, labels = embeddings[keep], paths[keep], shas[keep], labels[keep]
        self.nonfinite += int((~np.isfinite(embeddings).all(axis=1)).sum())
        self.bad_labels += int(((labels < -1) | (labels >= self.classes)).sum())
        hexes = np.frombuffer(np.ascontiguousarray(shas, dtype="S64").tobytes(), np.uint8).reshape(-1, 64)
        digit, letter = (hexes >= 48) & (hexes <= 57), (hexes >= 97) & (hexes <= 102)
        well_formed = (digit | letter).all(axis=1)
        if not well_formed.all():
            self.malformed += int((~well_formed).sum())
            if self.first_malformed is None:
                self.first_malformed = bytes(shas[~well_formed][0])
        nibbles = np.where(digit, hexes - 48, hexes - 87).astype(np.uint8)
        raw = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
        self.rows.append(np.arange(start, start + n, dtype=np.int64)[keep])
        self.path_hash.append(path_hashes(str(p) for p in paths))
        self.sha.append(np.ascontiguousarray(raw).view(DIGEST).ravel())

    def lookup(self) -> RowLookup:
        """The lookup tables of the rows seen (what a copy of them stores)."""
        rows = np.concatenate(self.rows) if self.rows else np.empty(0, np.int64)
        return RowLookup.from_entries(
            np.concatenate(self.path_hash) if self.path_hash else np.empty(0, np.uint64),
            rows,
            np.concatenate(self.sha) if self.sha else np.empty(0, DIGEST),
            rows,
        )

    def problems(self, paths: h5py.Dataset, stored: RowLookup | None) -> list[str]:
        """Every problem of the rows seen; `paths` confirms duplicate path hashes, `stored` is compared (if given)."""
        problems = []
        if self.nonfinite:
            problems.append(f"{self.nonfinite} embedding row(s) hold NaN or infinite values; {RESTORE}.")
        built = self.lookup()
        same = np.flatnonzero(np.diff(built.path_hash) == 0) if len(built.path_hash) > 1 else np.empty(0, np.int64)
        if len(same):
            candidates = sorted({int(r) for at in same.tolist() for r in built.path_row[[at, at + 1]].tolist()})
            stored_paths = paths.asstr()[candidates] if candidates else []
            names, counts = np.unique(np.asarray(stored_paths, dtype=object).astype(str), return_counts=True)
            if (counts > 1).any():
                problems.append(
                    f"{int((counts > 1).sum())} path(s) appear more than once (first: {names[counts > 1][0]}); {RESTORE}."
                )
        if self.malformed:
            problems.append(
                f"{self.malformed} content hash(es) are not 64 hex digits (first: {(self.first_malformed or b'').decode(errors='replace')!r}); "
                f"{RESTORE}."
            )
        if self.bad_labels:
            problems.append(f"labels outside -1..{self.classes - 1} (the class names); {RESTORE}.")
        if stored is not None and not self.malformed and not self.skipped and not _same_entries(stored, built):
            problems.append(
                f"the lookup tables do not match the rows (a rerun could skip or duplicate images); {RESTORE}."
            )
        return problems


def _same_entries(a: RowLookup, b: RowLookup) -> bool:
    """Whether two lookups hold the same (key, row) entries, whatever the order of equal keys."""
    for key, row in (("path_hash", "path_row"), ("sha", "sha_row")):
        ka, ra, kb, rb = getattr(a, key), getattr(a, row), getattr(b, key), getattr(b, row)
        if len(ka) != len(kb):
            return False
        oa, ob = np.lexsort((ra, ka)), np.lexsort((rb, kb))
        if not (np.array_equal(ka[oa], kb[ob]) and np.array_equal(ra[oa], rb[ob])):
            return False
    return True
