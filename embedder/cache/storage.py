"""A cache's own storage: the segment folder named after the cache file, and nothing else.

The rows of a segmented cache `photos.h5` live in `photos.h5.segments/`, next to it; the folder is
always derived from the cache file's own name, never from paths stored inside the file. The small file
records a `cache_id` (a uuid) and the folder an `OWNER` file with the same id, so a copy of the small
file alone, or a folder of another cache under the copy's name, fails on first use with one line saying
how to copy a cache properly. A proper copy under another name (`copy.h5` + `copy.h5.segments`) has its
virtual-dataset mappings rewritten once to its own folder (`relink`), so plain h5py reads it from its own
storage too; two caches never share a folder, so a write or compaction in one never touches another.
"""

from __future__ import annotations

import fcntl
import shutil
import uuid
from pathlib import Path

import h5py

from embedder.atomic import atomic_path, write_bytes_atomic
from embedder.cache.layout import GROUP
from embedder.cache.segments import link_columns, read_runs, segments_folder, virtual_columns
from embedder.errors import CacheError

OWNER = "OWNER"  # the file in the segment folder holding the id of the cache it belongs to


def new_cache_id() -> str:
    return uuid.uuid4().hex


def owner_of(cache: Path) -> str | None:
    """The cache id recorded in the segment folder of `cache`, or None when it has none."""
    marker = segments_folder(cache) / OWNER
    return marker.read_text().strip() if marker.is_file() else None


def claim(cache: Path, cache_id: str) -> None:
    """Make the segment folder of `cache` its own (create it, record the id); before the small file names the id."""
    folder = segments_folder(cache)
    folder.mkdir(exist_ok=True)
    if owner_of(cache) != cache_id:
        write_bytes_atomic(folder / OWNER, f"{cache_id}\n".encode())


def how_to_copy(cache: Path, origin: str | None = None) -> str:
    source = Path(origin) if origin else cache
    return (
        f"copy a cache with its folder, renaming both alike (`cp -r {source} {segments_folder(source)} DEST/`), "
        f"or make one self-contained file with `embedder pack {source} --out {cache.name}`"
    )


def _segmented(handle: h5py.File) -> list[h5py.Group]:
    groups = handle.get(GROUP, {})
    return [groups[key] for key in groups if "runs" in groups[key] and len(groups[key]["runs/file"]) > 0]


def _mapped_folders(group: h5py.Group) -> set[str]:
    """The first path component of every source file the group's embeddings are mapped onto."""
    dataset = group.get("embeddings")
    if dataset is None or not dataset.is_virtual:
        return set()
    return {Path(source.file_name).parts[0] for source in dataset.virtual_sources()}


def check_storage(cache: Path) -> None:
    """Raise CacheError (one line) unless the segments of `cache` are in its own folder; relink a renamed copy.

    A cache without segments (written before them, packed, or empty) needs no folder.
    """
    try:
        with h5py.File(cache, "r") as handle:
            groups = _segmented(handle)
            if not groups:
                return
            cache_id = handle.attrs.get("cache_id")
            origin = handle.attrs.get("written_as")
            stale = any(_mapped_folders(group) - {segments_folder(cache).name} for group in groups)
    except (OSError, KeyError, ValueError):
        return  # damage: said by the damage checks, in their words
    folder = segments_folder(cache)
    origin = str(origin) if origin is not None else None
    copied = origin is not None and Path(origin) != cache.resolve()
    if not folder.is_dir():
        was = f" (it is a copy of '{origin}'; the copy has no folder of its own)" if copied else ""
        raise CacheError(
            f"cache '{cache}' cannot be read: its rows are in '{folder}', which does not exist{was}; "
            f"{how_to_copy(cache, origin if copied else None)}."
        )
    owner = owner_of(cache)
    if owner != (str(cache_id) if cache_id is not None else owner):
        raise CacheError(
            f"cache '{cache}' cannot be read: the folder '{folder}' next to it belongs to another cache "
            f"(id {owner or 'unknown'}, this file has id {cache_id}); {how_to_copy(cache, origin if copied else None)}."
        )
    if stale:
        relink(cache)


def relink(cache: Path) -> None:
    """Rewrite the mappings of `cache` onto its own segment folder (a renamed copy, or one of an older layout).

    Costs the small file, not the rows. Skipped when a writer holds the cache: it relinks on its merge.
    """
    lock_path = cache.with_name(cache.name + ".lock")
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheError(
                f"cache '{cache}' was copied under a new name and is being written by another process; "
                "wait for it to finish and run the command again."
            ) from None
        with atomic_path(cache, durable=True) as tmp:
            shutil.copyfile(cache, tmp)
            with h5py.File(tmp, "r+") as handle:
                for group in _segmented(handle):
                    dim, mapped = int(group["embeddings"].shape[1]), virtual_columns(group)
                    for name in mapped:
                        del group[name]
                    link_columns(group, cache, read_runs(group), dim, mapped)
                handle.attrs["written_as"] = str(cache.resolve())
