"""The learning curve as people read it: its table, its one-line reading and the full-label test, from report.json.

`report["learning_curve"]` (written by `classical.experiments.curves`)::

    {"per_class": [5, 10, 25, 50, "all"], "images": [labelled images per point], "seeds": k,
     "seed_values": [...], "models": {name: [mean test accuracy per point]}, "std": {name: [...]},
     "accuracies": {name: [[one per seed] per point]}, "kinds": {name: "classical" | "neural" |
     "semi-supervised"}, "fit_seconds": {name: [mean seconds per subset]}, "folds": [CV folds per point],
     "capped": [{"requested", "used", "class"}], "unlabeled": {"in_cache", "used", "left_out", ...} | null,
     "semi_heads": [[{semi model: the supervised model it extends} per seed] per point] (semi-supervised only),
     "full_labels": {"unlabeled_rows", "tests": [{"semi", "supervised", "difference", "ci", "p_value",
                     "discordant", "n_test", "significant", "helped", ...}], "not_run"} (semi-supervised only),
     "seconds", "method",
     "finetune": {name: {"seconds", "method", "subsets": [[{"train": [paths], "val": [paths]} | null (at "all")
                                                         per seed] per point]}} (`--learning-curve-neural` only)}

A value is null where a model was not fitted (semi-supervised models at "all" when the cache holds
no unlabelled rows); `std` is null with one seed.
"""

from __future__ import annotations

from typing import Any

SEMI = "semi-supervised"


def point_label(curve: dict[str, Any], index: int) -> str:
    """'10', or 'all (175)' with the mean images per class of the whole pool."""
    n = curve["per_class"][index]
    if n != "all":
        return str(n)
    return f"all ({round(curve['images'][index] / max(1, _classes(curve)))})"


def _classes(curve: dict[str, Any]) -> int:
    numbers = [(n, images) for n, images in zip(curve["per_class"], curve["images"]) if n != "all"]
    return numbers[0][1] // numbers[0][0] if numbers else 1


def curve_rows(report: dict[str, Any]) -> list[list[str]]:
    """The learning-curve table (header first): mean ± std test accuracy per point; [] without a curve."""
    curve = report.get("learning_curve")
    if not curve or not curve.get("models"):
        return []
    header = ["model", "kind", *(f"{point_label(curve, i)} / class" for i in range(len(curve["per_class"])))]
    rows = [header]
    for name, means in curve["models"].items():
        cells = []
        for mean, std in zip(means, curve["std"][name]):
            cells.append("-" if mean is None else f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}"))
        rows.append([name, curve["kinds"].get(name, ""), *cells])
    return rows


def best_at(curve: dict[str, Any], index: int, semi: bool) -> tuple[str, float] | None:
    """The best (model, mean accuracy) at a point among the semi-supervised models or the others."""
    scored = [
        (name, means[index])
        for name, means in curve["models"].items()
        if means[index] is not None and (curve["kinds"].get(name) == SEMI) == semi
    ]
    return max(scored, key=lambda item: item[1], default=None)


def curve_verdict(report: dict[str, Any]) -> str:
    """One paragraph: how accuracy grows with labels, and what the unlabelled rows changed; '' without a curve."""
    curve = report.get("learning_curve")
    if not curve or not curve.get("models"):
        return ""
    lines = []
    for index in range(len(curve["per_class"])):
        supervised, semi = best_at(curve, index, False), best_at(curve, index, True)
        if supervised is None:
            continue
        text = f"{point_label(curve, index)} per class: {supervised[0]} {supervised[1]:.3f}"
        if semi is not None:
            text += f", best semi-supervised {semi[0]} {semi[1]:.3f} ({100 * (semi[1] - supervised[1]):+.1f} points)"
        lines.append(text)
    verdict = (
        f"Learning curve (mean test accuracy over {curve['seeds']} seeds; best supervised model): "
        + "; ".join(lines)
        + "."
    )
    full = curve.get("full_labels")
    if full:
        verdict += " " + full_label_sentence(full)
    return verdict


def full_label_sentence(full: dict[str, Any]) -> str:
    """Did the unlabelled rows help at full labels? The paired test's answer, in words."""
    if full.get("not_run"):
        return f"At full labels, no paired test: {full['not_run']}."
    parts = []
    for test in full["tests"]:
        low, high = test["ci"]
        difference = f"{100 * test['difference']:+.1f} points, 95% CI [{100 * low:+.1f}, {100 * high:+.1f}]"
        if test["significant"]:
            word = "helped" if test["helped"] else "hurt"
            parts.append(
                f"{test['semi']} vs {test['supervised']}: {difference}, p = {test['p_value']:.3g}: the "
                f"{full['unlabeled_rows']} unlabelled rows {word}"
            )
        else:
            parts.append(
                f"{test['semi']} vs {test['supervised']}: {difference}, p = {test['p_value']:.2f}: within noise"
            )
    return "At full labels (McNemar exact, paired on the test images): " + "; ".join(parts) + "."


def neural_notes(curve: dict[str, Any]) -> list[str]:
    """How each fine-tuned line of the curve was trained and how long it took (`--learning-curve-neural`)."""
    return [
        f"{name}: {entry['method']}; took {entry['seconds']:.0f} s"
        for name, entry in (curve.get("finetune") or {}).items()
    ]


def curve_markdown(report: dict[str, Any], table: list[str]) -> list[str]:
    """The report.md section of the learning curve (`table`: the rows as markdown); [] without a curve."""
    curve = report.get("learning_curve")
    if not curve or not table:
        return []
    lines = [
        "",
        "## Learning curve: test accuracy vs labelled images per class",
        "",
        curve_verdict(report),
        "",
        *table,
        "",
        f"{curve['method']} Took {curve['seconds']:.0f} s.",
    ]
    lines += [f"{line}." for line in neural_notes(curve)]
    for capped in curve.get("capped") or []:
        lines.append(
            f"{capped['requested']} per class was capped to {capped['used']}, the training images of class "
            f"'{capped['class']}'."
        )
    unlabeled = curve.get("unlabeled")
    if unlabeled:
        lines.append(
            f"Unlabelled rows of the cache: {unlabeled['in_cache']}, used {unlabeled['used']}, left out "
            f"{unlabeled['left_out']} ({unlabeled['left_out_why']})."
        )
    return lines
