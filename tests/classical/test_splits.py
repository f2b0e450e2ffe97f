"""Splits: stratified, seeded, stored, and never splitting exact duplicates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from classical import DataError, LabeledEmbeddings
from classical.data.splits import Split, load_or_make_split, make_split


def data(per_class: tuple[int, ...] = (40, 40, 20), duplicates: int = 0) -> LabeledEmbeddings:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    paths = np.array([f"c{label}/{i}.jpg" for i, label in enumerate(y)])
    sha = np.array([f"{i:064x}" for i in range(len(y))])
    sha[1 : 1 + duplicates] = sha[0]  # rows 0..duplicates share one content hash
    return LabeledEmbeddings(
        X=np.zeros((len(y), 4), np.float32),
        y=y,
        class_names=[f"c{i}" for i in range(len(per_class))],
        paths=paths,
        sha256=sha,
        backbone_key="key-a",
        provenance={},
        cache="c.h5",
    )


def fields(rows: LabeledEmbeddings) -> tuple:
    return rows.paths, rows.sha256, rows.y, rows.class_names


def test_fractions_are_stratified_and_cover_every_image() -> None:
    rows = data()
    split = make_split(*fields(rows), seed=0)
    assert split.counts() == {"train": 70, "val": 15, "test": 15}
    parts = split.indices(rows.paths)
    assert sorted(np.concatenate(list(parts.values()))) == list(range(100))
    for part, expected in (("train", 0.7), ("test", 0.15)):
        counts = Counter(rows.y[parts[part]].tolist())
        for label, n in zip(range(3), (40, 40, 20)):
            assert abs(counts[label] - expected * n) <= 1.5


def test_seed_decides_and_id_names_the_assignment() -> None:
    rows = data()
    assert make_split(*fields(rows), seed=1) == make_split(*fields(rows), seed=1)
    assert make_split(*fields(rows), seed=1).id != make_split(*fields(rows), seed=2).id


def test_exact_duplicates_never_straddle_two_parts() -> None:
    rows = data(duplicates=9)
    for seed in range(5):
        split = make_split(*fields(rows), seed=seed)
        assert len({split.assignment[rows.paths[i]] for i in range(10)}) == 1


def test_split_is_stored_and_reused(tmp_path: Path) -> None:
    rows = data()
    first = load_or_make_split(tmp_path, rows, seed=3)
    assert (tmp_path / "split.json").is_file()
    again = load_or_make_split(tmp_path, rows, seed=99)  # the stored split wins
    assert again == first == Split.load(tmp_path / "split.json")


def test_stored_split_of_another_backbone_is_refused(tmp_path: Path) -> None:
    load_or_make_split(tmp_path, data())
    other = data()
    other.backbone_key = "key-b"
    with pytest.raises(DataError, match="was split on embeddings of key-a; these are key-b"):
        load_or_make_split(tmp_path, other)


def test_split_naming_images_the_cache_lost_is_refused() -> None:
    rows = data()
    split = make_split(*fields(rows))
    fewer = data(per_class=(40, 40, 19))
    with pytest.raises(DataError, match="names 1 images that are not here"):
        split.indices(fewer.paths)


def test_class_too_small_to_stratify_names_the_counts() -> None:
    with pytest.raises(DataError, match=r"images per class: \{'c0': 40, 'c1': 40, 'c2': 1\}"):
        make_split(*fields(data(per_class=(40, 40, 1))))


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, 0.1), (1.0, 0.0, 0.0)])
def test_bad_fractions(fractions: tuple) -> None:
    with pytest.raises(ValueError, match="fractions must be three positive numbers"):
        make_split(*fields(data()), fractions=fractions)
