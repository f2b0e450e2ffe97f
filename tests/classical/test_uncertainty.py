"""Intervals of test scores and the paired test of two models: known values, and the report's use of them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from classical.report import (
    add_rows,
    align_predictions,
    bootstrap_macro_f1,
    comparison,
    format_table,
    mcnemar_exact,
    new_report,
    newcombe_paired_interval,
    paired_comparison,
    score,
    verdict,
    wilson_interval,
)
from classical.report.tables import table_rows
from classical.report.uncertainty import macro_f1_of_counts


def test_wilson_interval_brackets_the_accuracy_and_narrows_with_more_images() -> None:
    assert wilson_interval(9, 10) == pytest.approx((0.59585, 0.98212), abs=1e-5)  # the textbook value for 9/10
    widths = []
    for n in (20, 80, 320, 1280):
        low, high = wilson_interval(int(0.9 * n), n)
        assert low < 0.9 < high
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 5
    low, high = wilson_interval(10, 10)  # no error: the Wald interval would be [1, 1]
    assert high == 1.0 and 0.6 < low < 0.75
    assert wilson_interval(0, 10)[0] == 0.0


def test_score_carries_both_intervals_and_the_predictions() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 190)
    pred = np.where(rng.random(190) < 0.85, y, rng.integers(0, 4, 190))
    proba = np.full((190, 4), 0.1)
    proba[np.arange(190), pred] = 0.7
    metrics = score(y, proba, ["a", "b", "c", "d"])
    assert metrics["test_predictions"] == pred.tolist() and metrics["n_test"] == 190
    low, high = metrics["test_accuracy_ci"]
    assert low < metrics["test_accuracy"] < high and high - low < 0.12
    low, high = metrics["macro_f1_ci"]
    assert low < metrics["macro_f1"] < high
    again = score(y, proba, ["a", "b", "c", "d"])
    assert again["macro_f1_ci"] == metrics["macro_f1_ci"]  # fixed seed: the same interval every time
    small = score(y[:40], proba[:40], ["a", "b", "c", "d"])
    assert np.diff(small["macro_f1_ci"])[0] > np.diff(metrics["macro_f1_ci"])[0]


def test_bootstrap_counts_give_scikit_learns_macro_f1() -> None:
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 5, 60), rng.integers(0, 4, 60)  # class 4 never predicted
    counts = [np.bincount(a, minlength=5) for a in (y, pred)]
    hits = np.bincount(y[y == pred], minlength=5)
    assert macro_f1_of_counts(*counts, hits) == pytest.approx(
        f1_score(y, pred, labels=range(5), average="macro", zero_division=0)
    )
    low, high = bootstrap_macro_f1(y, pred, 5)
    assert 0 <= low < high <= 1
    assert bootstrap_macro_f1(y, y, 5) == (1.0, 1.0)


def test_mcnemar_exact_known_values() -> None:
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375, abs=1e-12)  # 2 * (1 + 10) / 2**10
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # the same from prediction vectors: 100 images, 80 both right, 1 only A, 9 only B, 10 both wrong
    y = np.zeros(100, int)
    a = np.r_[np.zeros(80), np.zeros(1), np.ones(9), np.ones(10)].astype(int)
    b = np.r_[np.zeros(80), np.ones(1), np.zeros(9), np.ones(10)].astype(int)
    paired = paired_comparison(y, a, b)
    assert paired["discordant"] == [1, 9] and paired["p_value"] == pytest.approx(0.021484375)
    assert paired["difference"] == pytest.approx(-0.08) and paired["significant"] is True
    low, high = paired["ci"]
    assert low < -0.08 < high < 0


def test_newcombe_interval_matches_the_worked_example() -> None:
    # Altman et al., Statistics with confidence (2000), table 6.2: 14, 5 / 0, 22 -> 0.122 (0.011 to 0.226)
    assert newcombe_paired_interval(14, 5, 0, 22) == pytest.approx((0.0115, 0.2265), abs=2e-4)
    low, high = newcombe_paired_interval(50, 0, 0, 0)  # both always right: no difference, but not a certain one
    assert low < 0 < high and high == pytest.approx(-low)
    low, high = newcombe_paired_interval(0, 40, 0, 0)  # A always right, B never
    assert high == 1.0 and 0.8 < low < 1.0


def rows_for(y: np.ndarray, predictions: dict[str, tuple[str, np.ndarray]]) -> list[dict]:
    rows = []
    for name, (kind, pred) in predictions.items():
        proba = np.full((len(y), 5), 0.05)
        proba[np.arange(len(y)), pred] = 0.8
        rows.append(
            {
                "name": name,
                "kind": kind,
                **score(y, proba, list("abcde")),
                "cv_mean": None,
                "cv_std": None,
                "selection": "",
                "fit_seconds": 1.0,
                "head_ms_per_image": 0.01,
                "predict_ms_per_image": None,
                "model_bytes": 1024,
                "params": {},
                "model_path": "",
            }
        )
    return rows


def report_for(y: np.ndarray) -> dict:
    paths = [f"c/{i:03d}.jpg" for i in range(len(y))]
    split = {
        "id": "s",
        "n_train": 800,
        "n_val": 190,
        "n_test": len(y),
        "seed": 0,
        "fractions": [0.7, 0.15, 0.15],
        "test_paths": paths,
        "test_labels": y.tolist(),
    }
    return new_report(backbone="k", cache="c.h5", class_names=list("abcde"), split=split)


def test_three_images_on_190_are_within_noise() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 190)
    neural = y.copy()
    neural[:16] = (y[:16] + 1) % 5  # 16 errors
    classical = y.copy()
    classical[3:16] = (y[3:16] + 1) % 5  # 13 errors: 3 images better, all discordant on the same side
    report = report_for(y)
    add_rows(report, rows_for(y, {"svm": ("classical", classical), "dense": ("neural", neural)}))
    block = report["comparison"]
    assert (block["classical"], block["neural"]) == ("svm", "dense")
    assert block["difference"] == pytest.approx(3 / 190) and block["discordant"] == [3, 0]
    assert block["p_value"] == pytest.approx(0.25) and block["significant"] is False
    assert block["ci"][0] < 0 < block["ci"][1] and block["n_test"] == 190
    text = verdict(report)
    assert "within noise (p = 0.25" in text and "+1.6 points for classical" in text


def test_a_large_gap_is_significant_and_the_comparison_follows_new_rows() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 190)
    classical, neural = y.copy(), y.copy()
    neural[:30] = (y[:30] + 1) % 5
    report = report_for(y)
    add_rows(report, rows_for(y, {"lr": ("classical", classical), "dense": ("neural", neural)}))
    assert report["comparison"]["significant"] is True and report["comparison"]["p_value"] < 1e-6
    assert "significant difference" in verdict(report) and "95% CI [+" in verdict(report)
    better = neural.copy()
    better[:30] = y[:30]
    better[100:101] = (y[100:101] + 2) % 5
    add_rows(report, rows_for(y, {"finetune-a": ("neural", better)}))  # never stale: recomputed on add
    assert report["comparison"]["neural"] == "finetune-a" and report["comparison"]["significant"] is False


def test_misaligned_predictions_are_not_paired() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 100)
    report = report_for(y)
    neural = y.copy()
    neural[:10] = (y[:10] + 1) % 5
    rows = rows_for(y, {"lr": ("classical", y.copy()), "dense": ("neural", neural)})
    rows[1]["test_predictions"] = rows[1]["test_predictions"][::-1]  # another order than split.test_paths
    add_rows(report, rows)
    assert report["comparison"]["p_value"] is None and "align_predictions" in report["comparison"]["test"]
    assert "no paired test" in verdict(report)


def test_align_predictions_orders_by_the_reports_test_paths() -> None:
    y = np.array([0, 1, 2, 3])
    report = report_for(y)  # test paths c/000.jpg .. c/003.jpg
    assert align_predictions(report, ["c/003.jpg", "c/001.jpg", "c/000.jpg", "c/002.jpg"], [3, 1, 0, 2]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="1 missing"):
        align_predictions(report, ["c/003.jpg", "c/001.jpg", "c/000.jpg"], [3, 1, 0])
    with pytest.raises(ValueError, match="another label"):
        align_predictions(
            report, ["c/000.jpg", "c/001.jpg", "c/002.jpg", "c/003.jpg"], [0, 1, 2, 3], labels=[1, 1, 2, 3]
        )
    fresh = new_report(backbone="k", cache="c", class_names=list("ab"), split={"id": "s", "n_test": 2})
    assert align_predictions(fresh, ["z.jpg", "a.jpg"], [1, 0], labels=[1, 0]) == [0, 1]
    assert fresh["split"]["test_paths"] == ["a.jpg", "z.jpg"] and fresh["split"]["test_labels"] == [0, 1]


def test_costs_from_pixels_and_tables_accept_missing_costs() -> None:
    y = np.random.default_rng(5).integers(0, 5, 50)
    report = report_for(y)
    report["embedding"] = {"ms_per_image": 8.0, "train_seconds": 990 * 8.0 / 1000, "method": "test"}
    rows = rows_for(y, {"lr": ("classical", y.copy()), "knn": ("classical", y.copy())})
    tuned = rows_for(y, {"finetune-a": ("neural", y.copy())})[0] | {
        "head_ms_per_image": None,
        "predict_ms_per_image": 19.0,
        "fit_seconds": 300.0,
    }
    add_rows(report, [*rows, tuned])
    lr, _, finetune = report["models"]
    assert lr["predict_ms_per_image"] == pytest.approx(8.01) and lr["head_ms_per_image"] == 0.01
    assert lr["fit_seconds_with_embedding"] == pytest.approx(1.0 + 7.92 / 2)  # shared by the 2 rows on embeddings
    assert report["embedding"]["amortised_over"] == 2
    assert finetune["predict_ms_per_image"] == 19.0 and "fit_seconds_with_embedding" not in finetune
    table = table_rows(report)
    assert table[0][2] == "test acc [95% CI]"
    tuned_row = next(row for row in table if row[0] == "finetune-a")
    assert tuned_row[8] == "-" and tuned_row[9] == "19.000" and tuned_row[10] == "-"
    report["models"][0]["model_bytes"] = None
    report["embedding"]["ms_per_image"] = None
    add_rows(report, [])
    assert report["models"][0]["predict_ms_per_image"] is None
    assert "lr" in format_table(report)
    assert comparison(report) is not None
