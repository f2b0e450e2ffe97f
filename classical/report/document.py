"""The comparison report as data: report.json (the contract for scripts), its rows, costs, comparison and verdict.

report.json::

    {"backbone": KEY, "cache": PATH, "class_names": [...],
     "split": {"id", "n_train", "n_val", "n_test", "seed", "fractions",
               "test_paths" (sorted), "test_labels" (class index of each test path)},
     "created", "updated",
     "embedding": {"ms_per_image", "runtime", "images", "pixels", "seconds", "train_seconds",
                   "amortised_over", "method", ...},
     "models": [{"name", "kind" ("classical" | "neural"), "description",
                 "test_accuracy", "test_accuracy_ci", "macro_f1", "macro_f1_ci", "balanced_accuracy",
                 "log_loss", "n_test", "cv_mean", "cv_std", "selection",
                 "fit_seconds", "fit_seconds_with_embedding", "predict_ms_per_image", "head_ms_per_image",
                 "model_bytes", "params", "model_path", "confusion_matrix", "per_class_f1",
                 "test_predictions", "strategy" (exact | halving | subsample-then-refit | approximated), "search"
                 (grid | halving), "rows", "search_rows", "approximation", "cut", "search_seconds",
                 "refit_seconds", ...}],
     "planning": {"time_budget", "cuts", "trial_seconds", "estimated_seconds", "estimated_total", "trial"},
     "threads": {"cores", "workers", "threads_per_worker", "worker_threads", "max_busy_threads", "oversubscribed"},
     "comparison": {"classical", "neural", "difference", "ci", "ci_method", "p_value", "test",
                    "discordant", "n_test", "significant"},
     "repeats": {"k", "seeds", "splits", "models": {name: {"accuracies", "mean", "std", "first"}},
                 "seconds", "method"},
     "learning_curve": {"per_class": [5, 10, 25, 50, "all"], "seeds", "models": {name: [mean test accuracy per point]},
                        "std": {name: [...]}, ...}  (shape: `classical.report.curve`),
     "errors_nearest_train": {"model", "errors": [{"path", ..., "nearest": [{"path", "label", "similarity"}]}], ...}
                             (the best row's most confident test errors and their nearest training photos;
                             shape: `classical.report.neighbours`)}

`cv_std` is null for neural rows (selected on the validation split, not by CV). Costs compare
like with like: `predict_ms_per_image` is the cost of one image from decoded pixels, backbone +
head (for rows on embeddings: `embedding.ms_per_image` + `head_ms_per_image`, the head alone on
embeddings; fine-tuned rows time their whole network and have `head_ms_per_image` null).
`fit_seconds_with_embedding` of a row on embeddings is `fit_seconds` + `embedding.train_seconds`
/ `embedding.amortised_over`: the embedding of the train + validation images, computed once for
the sweep, shared equally by the rows on embeddings. Rows are identified by name: adding a row
with an existing name replaces it. The costs and the comparison are recomputed from the rows
whenever rows are added and whenever the report is written, so they never go stale.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classical.report.uncertainty import CI_NAME, TEST_NAME, paired_comparison
from embedder import utc_now

logger = logging.getLogger(__name__)

AMORTISATION = (
    "fit_seconds_with_embedding = fit_seconds + embedding.train_seconds / amortised_over: the train+val "
    "images are embedded once for the sweep and that time is shared equally by the rows on embeddings"
)


def new_report(*, backbone: str, cache: str, class_names: list[str], split: dict[str, Any]) -> dict[str, Any]:
    now = utc_now()
    return {
        "backbone": backbone,
        "cache": cache,
        "class_names": class_names,
        "split": split,
        "created": now,
        "updated": now,
        "models": [],
    }


def add_rows(report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Add model rows, replacing rows of the same name; recompute the costs and the comparison."""
    names = {row["name"] for row in rows}
    report["models"] = [row for row in report["models"] if row["name"] not in names] + rows
    report["updated"] = utc_now()
    refresh(report)


def refresh(report: dict[str, Any]) -> None:
    """Recompute what is derived from the rows: costs from pixels and the paired comparison."""
    refresh_costs(report)
    report["comparison"] = comparison(report)


def refresh_costs(report: dict[str, Any]) -> None:
    embedding = report.get("embedding")
    if not embedding:
        return
    ms = embedding.get("ms_per_image")
    on_embeddings = [row for row in report["models"] if row.get("head_ms_per_image") is not None]
    split = report["split"]
    train_seconds = embedding.get("train_seconds")
    if train_seconds is None and ms is not None:
        train_seconds = (split["n_train"] + split["n_val"]) * ms / 1000
    embedding["amortised_over"] = len(on_embeddings)
    embedding["amortisation"] = AMORTISATION
    for row in on_embeddings:
        row["predict_ms_per_image"] = None if ms is None else ms + row["head_ms_per_image"]
        row["fit_seconds_with_embedding"] = (
            None if train_seconds is None else row["fit_seconds"] + train_seconds / len(on_embeddings)
        )


def align_predictions(
    report: dict[str, Any], paths: Sequence[str], predictions: Sequence[int], labels: Sequence[int] | None = None
) -> list[int]:
    """`predictions` (one class index per path of `paths`) in the order of the report's `split.test_paths`.

    Use it to make a row's `test_predictions` pairable with the other rows': `paths` must be
    exactly the report's test paths, in any order. A report that records no test paths yet (made
    by `new_report` from a split summary) adopts these, sorted, with their `labels` (true class
    indices, same order as `paths`), which the paired comparison needs.
    """
    paths, predictions = [str(p) for p in paths], [int(p) for p in predictions]
    if len(paths) != len(predictions):
        raise ValueError(f"{len(paths)} paths but {len(predictions)} predictions")
    if len(set(paths)) != len(paths):
        raise ValueError("paths must be distinct")
    split = report["split"]
    if "test_paths" not in split:
        order = sorted(range(len(paths)), key=paths.__getitem__)
        split["test_paths"] = [paths[i] for i in order]
        if labels is not None:
            if len(labels) != len(paths):
                raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
            split["test_labels"] = [int(labels[i]) for i in order]
    by_path = dict(zip(paths, predictions))
    expected = split["test_paths"]
    if set(by_path) != set(expected):
        missing, extra = sorted(set(expected) - set(by_path)), sorted(set(by_path) - set(expected))
        raise ValueError(
            f"the predictions are not of the report's {len(expected)} test images: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} others (e.g. {extra[:3]})"
        )
    if labels is not None and "test_labels" in split:
        by_label = dict(zip(paths, (int(label) for label in labels)))
        wrong = [path for path, label in zip(expected, split["test_labels"]) if by_label[path] != label]
        if wrong:
            raise ValueError(f"{len(wrong)} test images have another label than the report's (e.g. {wrong[:3]})")
    return [by_path[path] for path in expected]


def load_report(run: Path) -> dict[str, Any]:
    path = run / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report in '{run}'; create one with `classical sweep CACHE --out {run}`.")
    return json.loads(path.read_text())


def best_row(report: dict[str, Any], kind: str | None = None) -> dict[str, Any] | None:
    rows = [row for row in report["models"] if kind is None or row["kind"] == kind]
    return max(rows, key=lambda row: (row["test_accuracy"], row["macro_f1"]), default=None)


def _unpairable(report: dict[str, Any], row: dict[str, Any]) -> str | None:
    """Why this row's predictions cannot be paired with the test labels (None: they can)."""
    labels = report["split"].get("test_labels")
    predictions = row.get("test_predictions")
    if labels is None:
        return "the report records no test labels"
    if predictions is None:
        return f"row {row['name']} has no test_predictions"
    if len(predictions) != len(labels):
        return f"row {row['name']} has {len(predictions)} test predictions for {len(labels)} test images"
    accuracy = float(np.mean(np.asarray(predictions) == np.asarray(labels))) if labels else 0.0
    matrix = row.get("confusion_matrix")
    if matrix is not None and labels:
        counts = np.zeros_like(np.asarray(matrix))
        np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
        if not np.array_equal(counts, matrix):
            accuracy = float("nan")  # the pairs of (label, prediction) are not the row's: misaligned
    if not abs(accuracy - row["test_accuracy"]) <= 1e-9:
        return (
            f"row {row['name']}'s test_predictions are not in the order of split.test_paths (paired with its "
            f"test labels they do not give the row's accuracy {row['test_accuracy']:.4f} and confusion matrix; "
            "see align_predictions)"
        )
    return None


def comparison(report: dict[str, Any]) -> dict[str, Any] | None:
    """Best classical vs best neural on the same test images (null while one of them is missing)."""
    classical, neural = best_row(report, "classical"), best_row(report, "neural")
    if classical is None or neural is None:
        return None
    block: dict[str, Any] = {
        "classical": classical["name"],
        "neural": neural["name"],
        "difference": classical["test_accuracy"] - neural["test_accuracy"],
    }
    problem = _unpairable(report, classical) or _unpairable(report, neural)
    if problem:
        logger.warning("no paired test of %s vs %s: %s", classical["name"], neural["name"], problem)
        return block | {
            "ci": None,
            "ci_method": CI_NAME,
            "p_value": None,
            "test": f"{TEST_NAME}: not run, {problem}",
            "discordant": None,
            "n_test": report["split"].get("n_test"),
            "significant": None,
        }
    paired = paired_comparison(
        report["split"]["test_labels"], classical["test_predictions"], neural["test_predictions"]
    )
    return block | paired


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def format_interval(ci: Sequence[float] | None, digits: int = 3) -> str:
    """` [lo, hi]` of a 95% interval, or nothing when there is none."""
    return "" if not ci else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def verdict(report: dict[str, Any]) -> str:
    """One paragraph: who wins, by how much (with its noise), at what cost."""
    best = best_row(report)
    if best is None:
        return "no models yet"
    lines = [
        f"Best on the test split: {best['name']} ({best['kind']}), accuracy {best['test_accuracy']:.3f}"
        f"{format_interval(best.get('test_accuracy_ci'))}, macro-F1 {best['macro_f1']:.3f}, fitted in "
        f"{best['fit_seconds']:.1f} s."
    ]
    classical, neural = best_row(report, "classical"), best_row(report, "neural")
    compared = report.get("comparison") or comparison(report)
    if classical and neural and compared:
        head = (
            f"Best classical {classical['name']} {classical['test_accuracy']:.3f} vs best neural {neural['name']} "
            f"{neural['test_accuracy']:.3f}: {_points(compared['difference'])} points for classical"
        )
        if compared.get("p_value") is None:
            lines.append(f"{head} (no paired test: {compared['test'].split(': not run, ')[-1]}).")
        else:
            low, high = compared["ci"]
            b, c = compared["discordant"]
            interval = f"95% CI [{_points(low)}, {_points(high)}] points"
            if compared["significant"]:
                lines.append(
                    f"{head}, {interval}, a significant difference (McNemar exact p = {compared['p_value']:.3g}; "
                    f"{b} images only {classical['name']} gets right, {c} only {neural['name']})."
                )
            else:
                lines.append(
                    f"{head}: within noise (p = {compared['p_value']:.2f}, McNemar exact; {interval}; "
                    f"{b} images only {classical['name']} gets right, {c} only {neural['name']})."
                )
        lines.append(f"Fit time {classical['fit_seconds']:.1f} s vs {neural['fit_seconds']:.1f} s.")
    n_test = report["split"]["n_test"]
    lines.append(f"One test image is {100 / n_test:.2f} points of accuracy (n_test = {n_test}).")
    repeats = report.get("repeats")
    if repeats and repeats.get("models"):
        ranked = sorted(repeats["models"].items(), key=lambda item: -item[1]["mean"])
        name, stats = ranked[0]
        spread = "" if stats["std"] is None else f" ± {stats['std']:.3f}"
        lines.append(
            f"Over {repeats['k']} re-splits: best mean accuracy {name} {stats['mean']:.3f}{spread}, "
            f"ranked first on {stats['first']} of {repeats['k']}."
        )
    return " ".join(lines)
