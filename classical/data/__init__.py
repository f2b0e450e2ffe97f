"""Labelled rows of a cache and the split every model is scored on.

`load_labeled` reads a cache's labelled rows; `make_split` makes the stored, stratified, seeded
split in which duplicate images and near-duplicates (the similarity of `near_duplicates`) never
straddle two parts.
"""

from classical.data.near_duplicates import DEFAULT_THRESHOLD, SIMILARITY, Neighbours, components, normalise, search
from classical.data.rows import LabeledEmbeddings, load_labeled
from classical.data.splits import Split, load_or_make_split, make_split

__all__ = [
    "DEFAULT_THRESHOLD",
    "SIMILARITY",
    "LabeledEmbeddings",
    "Neighbours",
    "Split",
    "components",
    "load_labeled",
    "load_or_make_split",
    "make_split",
    "normalise",
    "search",
]
