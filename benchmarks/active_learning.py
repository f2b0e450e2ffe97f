"""Which photos to label next, measured: a simulated labelling loop against random labelling.

For each cache (the shared flowers and blood cells, embedded with the real weights), the rows are
split once as a run would (`make_split`, seed 0, 70/15/15): the test part is fixed, the train and
validation parts are the pool whose labels stay hidden until a strategy asks for them. Each seed
starts from 5 random labelled photos per class; each round reveals 5 x classes more, chosen by

    random       uniformly among the hidden ones
    uncertainty  the smallest margins of the current model's probabilities
    diversity    k-center greedy on the audit's similarity
    hybrid       weighted k-means over the 5 x budget most uncertain, one pick per cluster, no
                 near-duplicates (the default)

(the ranking functions of `classical suggest`), up to 50 per class. After each round the model
(standardize + logistic regression, the zoo's `lr` at C = 0.1: fast, and the best head on these
embeddings) is refitted and scored on the test part. It prints each strategy's mean and std over
the seeds per round, the labels hybrid needs to reach random's final accuracy (as a share of
random's labels), and hybrid's worst gap to random in units of random's std; draws
OUT/plots/active_learning.png.

    python benchmarks/active_learning.py --cache /tmp/suggest/flowers.h5 --cache /tmp/suggest/blood.h5 --out /tmp/suggest/bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from classical import load_labeled, make_split
from classical.data import DEFAULT_THRESHOLD, normalise, search
from classical.data.near_duplicates import effective_threshold
from classical.labelling import rank

STRATEGIES = ("random", "uncertainty", "diversity", "hybrid")


def model(seed: int) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=0.1, max_iter=2000, random_state=seed))])


def loop(X, y, Z, pool, test, strategy, seed, start, step, stop, threshold):
    """Test accuracy after each round of one strategy and seed; labels per class at each round."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    labelled = np.concatenate([rng.choice(pool[y[pool] == c], start, replace=False) for c in classes])
    accuracies, sizes = [], []
    per_round = step * len(classes)
    while True:
        fitted = model(seed).fit(X[labelled], y[labelled])
        accuracies.append(float((fitted.predict(X[test]) == y[test]).mean()))
        sizes.append(len(labelled) / len(classes))
        if len(labelled) >= stop * len(classes):
            return accuracies, sizes
        hidden = np.setdiff1d(pool, labelled)
        if strategy == "random":
            chosen = rng.choice(hidden, per_round, replace=False)
        else:
            probs = fitted.predict_proba(X[hidden])
            ranked = rank(strategy, probs, Z[hidden], Z[labelled], per_round, threshold, seed=seed)
            chosen = hidden[ranked.index]
            if len(chosen) < per_round:  # too few rows left that are no near-duplicates: fill at random
                rest = np.setdiff1d(hidden, chosen)
                chosen = np.concatenate([chosen, rng.choice(rest, per_round - len(chosen), replace=False)])
        labelled = np.concatenate([labelled, chosen])


def run_set(cache: Path, seeds: int, start: int, step: int, stop: int) -> dict:
    data = load_labeled(cache)
    split = make_split(data.paths, data.sha256, data.y, data.class_names, seed=0, X=data.X)
    parts = split.indices(list(data.paths))
    pool, test = np.concatenate([parts["train"], parts["val"]]), parts["test"]
    Z = normalise(data.X)
    threshold = effective_threshold(DEFAULT_THRESHOLD, search(Z, threshold=None, k=1, normalised=True).knn[:, 0])
    results = {}
    for strategy in STRATEGIES:
        began = time.perf_counter()
        runs = [loop(data.X, data.y, Z, pool, test, strategy, s, start, step, stop, threshold) for s in range(seeds)]
        results[strategy] = {
            "accuracy": [r[0] for r in runs],
            "per_class": runs[0][1],
            "seconds": time.perf_counter() - began,
        }
    return {"name": cache.stem, "classes": len(data.class_names), "test": len(test), "pool": len(pool),
            "threshold": threshold, "strategies": results}  # fmt: skip


def verdict(result: dict) -> dict:
    per_class = np.asarray(result["strategies"]["random"]["per_class"])
    random = np.asarray(result["strategies"]["random"]["accuracy"])
    hybrid = np.asarray(result["strategies"]["hybrid"]["accuracy"])
    target = random.mean(axis=0)[-1]
    reached = np.flatnonzero(hybrid.mean(axis=0) >= target)
    needed = float(per_class[reached[0]]) if len(reached) else None
    gap = hybrid.mean(axis=0) - random.mean(axis=0)
    std = random.std(axis=0)
    worst = int(np.argmin(gap))
    return {
        "random_final": float(target),
        "hybrid_final": float(hybrid.mean(axis=0)[-1]),
        "labels_per_class_needed": needed,
        "share_of_random_labels": None if needed is None else needed / float(per_class[-1]),
        "worst_gap": float(gap[worst]),
        "worst_gap_std": float(std[worst]),
        "worst_gap_round": float(per_class[worst]),
        "never_worse_by_more_than_std": bool(np.all(gap >= -std)),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, result in zip(axes[0], results):
        for strategy in STRATEGIES:
            acc = np.asarray(result["strategies"][strategy]["accuracy"])
            x = np.asarray(result["strategies"][strategy]["per_class"]) * result["classes"]
            mean, std = acc.mean(axis=0), acc.std(axis=0)
            ax.plot(x, mean, marker="o", markersize=3, label=strategy)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_title(f"{result['name']} (test n = {result['test']})")
        ax.set_xlabel("labelled photos")
        ax.set_ylabel("test accuracy (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, action="append", required=True, help="a labelled cache (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="folder for plots/active_learning.png and results")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--start", type=int, default=5, help="labelled photos per class at the start")
    parser.add_argument("--step", type=int, default=5, help="photos per class added each round")
    parser.add_argument("--stop", type=int, default=50, help="labelled photos per class at the end")
    args = parser.parse_args()
    began = time.perf_counter()
    results = []
    for cache in args.cache:
        result = run_set(cache, args.seeds, args.start, args.step, args.stop)
        result["verdict"] = verdict(result)
        results.append(result)
        per_class = result["strategies"]["random"]["per_class"]
        print(f"\n{result['name']}: {result['classes']} classes, pool {result['pool']}, test {result['test']}, "
              f"near-duplicate threshold {result['threshold']:.3f}, {args.seeds} seeds")  # fmt: skip
        print("per class  " + "  ".join(f"{s:>15}" for s in STRATEGIES))
        for r, n in enumerate(per_class):
            cells = []
            for strategy in STRATEGIES:
                acc = np.asarray(result["strategies"][strategy]["accuracy"])[:, r]
                cells.append(f"{acc.mean():.3f} ± {acc.std():.3f}")
            print(f"{n:>9.0f}  " + "  ".join(f"{c:>15}" for c in cells))
        v = result["verdict"]
        share = "not reached" if v["labels_per_class_needed"] is None else (
            f"{v['labels_per_class_needed']:.0f}/class = {v['share_of_random_labels']:.0%} of random's labels")  # fmt: skip
        print(f"random's final accuracy {v['random_final']:.3f} (hybrid's final {v['hybrid_final']:.3f}); "
              f"hybrid reaches it at {share} (target <= 60%)")  # fmt: skip
        print(f"hybrid's worst round vs random: {v['worst_gap']:+.3f} at {v['worst_gap_round']:.0f}/class "
              f"(random's std there {v['worst_gap_std']:.3f}); never worse by more than one std: "
              f"{v['never_worse_by_more_than_std']}")  # fmt: skip
        print("seconds: " + ", ".join(f"{s} {result['strategies'][s]['seconds']:.0f}" for s in STRATEGIES))
    plot(results, args.out / "plots" / "active_learning.png")
    (args.out / "active_learning.json").write_text(json.dumps(results, indent=2))
    print(f"\nplot: {args.out / 'plots' / 'active_learning.png'}; total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
