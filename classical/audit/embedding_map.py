"""A 2-D map of the embeddings (PCA, or t-SNE where asked), coloured by class, flagged images marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("pca", "tsne")
MAX_POINTS = 20_000  # beyond this the map shows a seeded sample of the rows, plus every flagged row


def coordinates(Z: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D coordinates of the rows of Z (already normalised)."""
    if method not in METHODS:
        raise ValueError(f"map method must be one of {METHODS}. Received: {method!r}")
    if len(Z) < 3:
        return np.zeros((len(Z), 2))
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(Z)
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    reduced = PCA(n_components=min(50, Z.shape[1], len(Z)), random_state=seed).fit_transform(Z)
    return TSNE(n_components=2, perplexity=min(30.0, (len(Z) - 1) / 3), init="pca", random_state=seed).fit_transform(
        reduced
    )


def draw(
    Z: np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    path: Path,
    *,
    near: set[int],
    issues: set[int],
    outliers: set[int],
    method: str = "pca",
    seed: int = 0,
) -> dict:
    """Save the map as a PNG at `path`; returns what it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flagged = sorted(near | issues | outliers)
    shown = np.arange(len(Z))
    if len(Z) > MAX_POINTS:
        rng = np.random.default_rng(seed)
        shown = np.union1d(rng.choice(len(Z), MAX_POINTS, replace=False), flagged).astype(int)
    xy = np.zeros((len(Z), 2))
    xy[shown] = coordinates(Z[shown], method, seed)
    fig, ax = plt.subplots(figsize=(8, 6.5), dpi=110)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c, name in enumerate(class_names):
        members = shown[y[shown] == c]
        if len(members):
            ax.scatter(xy[members, 0], xy[members, 1], s=9, color=cmap(c % cmap.N), alpha=0.6, label=name, linewidths=0)
    unlabelled = shown[y[shown] < 0]
    if len(unlabelled):
        ax.scatter(xy[unlabelled, 0], xy[unlabelled, 1], s=9, color="0.6", alpha=0.6, label="unlabelled", linewidths=0)
    marks: list[tuple[set[int], dict[str, Any], str]] = [
        (
            near,
            {"marker": "o", "s": 60, "facecolors": "none", "edgecolors": "black", "linewidths": 1.0},
            "near-duplicate",
        ),
        (issues, {"marker": "x", "s": 45, "color": "red", "linewidths": 1.4}, "label issue"),
        (
            outliers,
            {"marker": "^", "s": 55, "facecolors": "none", "edgecolors": "purple", "linewidths": 1.0},
            "outlier",
        ),
    ]
    for members, style, label in marks:
        if members:
            rows = np.array(sorted(members))
            ax.scatter(xy[rows, 0], xy[rows, 1], label=f"{label} ({len(rows)})", **style)
    ax.set_title(f"embeddings, {method.upper()} ({len(shown):,} of {len(Z):,} images)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, loc="best", markerscale=1.2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return {"path": str(path), "method": method, "points": len(shown), "rows": len(Z)}
