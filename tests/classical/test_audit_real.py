"""The audit on real flower photos with planted faults, embedded with the real weights.

3 classes x 30 untouched photos, plus 9 edited copies of 9 of them (JPEG quality 60, 0.75x
rescale, 8 % crop: 3 each) and 6 photos of the other two flower classes moved into a wrong class
folder. The audit must find the copies as near-duplicates (and the split must keep each with its
original), rank the moved photos high among label issues, and leave the untouched photos alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classical import audit, load_labeled
from classical.data.splits import load_or_make_split

CLASSES = ("daisy", "dandelion", "sunflower")
PER_CLASS = 30


def edit(source: Path, target: Path, kind: str) -> None:
    image = Image.open(source).convert("RGB")
    width, height = image.size
    if kind == "jpeg":
        image.save(target, quality=60)
    elif kind == "rescale":
        image.resize((round(0.75 * width), round(0.75 * height)), Image.LANCZOS).save(target, quality=90)
    else:
        dx, dy = round(0.08 * width), round(0.08 * height)
        image.crop((dx // 2, dy // 3, width - dx + dx // 2, height - dy + dy // 3)).save(target, quality=90)


@pytest.fixture(scope="module")
def planted(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from embedder import Backbone, extract

    root = tmp_path_factory.mktemp("planted")
    photos = root / "photos"
    flowers = shared / "data" / "flowers"
    copies: set[tuple[str, str]] = set()
    moved: dict[str, str] = {}  # path in the wrong folder -> the photo's true class
    for c, name in enumerate(CLASSES):
        (photos / name).mkdir(parents=True)
        files = sorted((flowers / name).glob("*.jpg"))
        for path in files[:PER_CLASS]:
            shutil.copy(path, photos / name / path.name)
        for i, kind in enumerate(("jpeg", "rescale", "crop")):
            original = files[3 * i + c]
            edit(original, photos / name / f"copy-{kind}-{original.name}", kind)
            copies.add((f"{name}/{original.name}", f"{name}/copy-{kind}-{original.name}"))
    for c, name in enumerate(CLASSES):  # 3 photos of each class, not among the 30, moved into the next class
        wrong = CLASSES[(c + 1) % len(CLASSES)]
        for path in sorted((flowers / name).glob("*.jpg"))[PER_CLASS + 5 : PER_CLASS + 7]:
            shutil.copy(path, photos / wrong / f"moved-{path.name}")
            moved[f"{wrong}/moved-{path.name}"] = name
    cache = root / "planted.h5"
    extract(
        photos,
        cache,
        Backbone(weights=str(shared / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")),
        progress=False,
    )
    run = root / "run"
    split = load_or_make_split(run, load_labeled(cache))
    result = audit(cache, run)
    return {"result": result, "split": split, "copies": copies, "moved": moved, "run": run}


@pytest.mark.real_data
def test_edited_copies_are_near_duplicates_in_one_split_part(planted: dict) -> None:
    result, copies = planted["result"], planted["copies"]
    found = {tuple(sorted((p["a"], p["b"]))) for p in result["near_duplicates"]}
    planted_pairs = {tuple(sorted(pair)) for pair in copies}
    recall = len(found & planted_pairs) / len(planted_pairs)
    precision = len(found & planted_pairs) / max(len(found), 1)
    print(f"near-duplicates: recall {recall:.2f}, precision {precision:.2f} ({len(found)} pairs flagged)")
    assert recall >= 8 / 9 and precision >= 0.8
    split = planted["split"]
    assert split.near_duplicates_grouped and split.near_duplicate_clusters >= 8
    for a, b in found & planted_pairs:
        assert split.assignment[a] == split.assignment[b]
    assert result["straddling"]["count"] == 0 and result["split"]["near_duplicates_grouped"] is True


@pytest.mark.real_data
def test_moved_photos_rank_high_among_label_issues(planted: dict) -> None:
    result, moved = planted["result"], planted["moved"]
    assert result["label_issues_skipped"] is None
    ranked = [issue["path"] for issue in result["label_issues"]]
    top = ranked[: 2 * len(moved)]
    recall = len(moved.keys() & set(ranked)) / len(moved)
    precision_top = len(moved.keys() & set(top)) / len(top) if top else 0.0
    untouched = [p for p in ranked if p not in moved and "/copy-" not in p]
    n_untouched = len(CLASSES) * PER_CLASS
    print(
        f"label issues: {len(ranked)} flagged, recall {recall:.2f} on the {len(moved)} moved photos, "
        f"precision {len(moved.keys() & set(ranked)) / max(len(ranked), 1):.2f}, {precision_top:.2f} in the top {len(top)}; "
        f"{len(untouched)} of {n_untouched} untouched photos flagged"
    )
    # measured: 4 of 6 found, all 4 in the top 6; the two dandelions moved among sunflowers (both yellow,
    # 90 photos to learn from) are missed. Bounds leave one photo of slack.
    assert recall >= 3 / 6
    assert len(moved.keys() & set(ranked[: len(moved) + 2])) >= 3  # the moved photos lead the ranking
    assert len(untouched) <= 0.1 * n_untouched
    by_path = {issue["path"]: issue for issue in result["label_issues"]}
    found = moved.keys() & set(ranked)
    assert all(by_path[path]["given"] == path.split("/")[0] for path in found)
    assert sum(by_path[path]["suggested"] == moved[path] for path in found) >= len(found) - 1  # the true class


@pytest.mark.real_data
def test_untouched_photos_are_not_flagged_en_masse(planted: dict) -> None:
    result = planted["result"]
    n = result["rows"]
    assert n == len(CLASSES) * PER_CLASS + 9 + 6
    assert len(result["outliers"]) <= max(1, 0.02 * n)
    flagged = {p["a"] for p in result["near_duplicates"]} | {p["b"] for p in result["near_duplicates"]}
    assert len(flagged) <= 2 * 9 + 2
    assert np.isfinite(result["outliers_method"]["cutoff"])
    assert (planted["run"] / "plots" / "embedding_map.png").is_file()
