"""RUN/report.html: one page for people who would rather look than read, from report.json, audit.json and suggest.json.

It works offline, opened from disk: no script, no network; the plots sit in RUN/plots/ and the
photo thumbnails in RUN/thumbnails/ (small JPEGs made once per photo), both beside the page.
Everything on it is read from the two JSON contracts, so the page never disagrees with them:
the comparison table with intervals, the paired verdict, the repeats, the learning curve, the plots, the test photos
each model got wrong (true and predicted class, the model's probability), the best model's most
confident errors each beside its nearest training photos (`errors_nearest_train`), and the audit's
near-duplicate pairs, label-issue candidates, outliers and map; and the photos `classical suggest`
ranked to label next (RUN/suggest.json), when there are any.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
from pathlib import Path
from typing import Any

from classical.report.curve import curve_rows, curve_verdict, neural_notes
from classical.report.document import verdict
from classical.report.neighbours import nearest_reading
from classical.report.tables import repeats_rows, table_rows
from embedder import atomic_path, open_cache

logger = logging.getLogger(__name__)

THUMBNAIL = 112  # px, the longer side
MAX_ERRORS_SHOWN = 60  # per model
MAX_FINDINGS_SHOWN = 60  # per audit finding

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .3rem; }
table { border-collapse: collapse; font-size: .9rem; } th, td { padding: .3rem .6rem; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { background: #f3f7fb; border-left: 4px solid #4a7fb5; padding: .8rem 1rem; }
.grid { display: flex; flex-wrap: wrap; gap: .6rem; } figure { margin: 0; width: 124px; font-size: .75rem; }
figcaption { overflow-wrap: anywhere; } td.num { white-space: nowrap; }
figure img { width: 112px; height: 112px; object-fit: cover; display: block; border: 1px solid #ccc; }
.pair { display: flex; gap: .4rem; align-items: flex-start; padding: .4rem; border: 1px solid #eee; }
.nearest { margin-bottom: .4rem; } .pair .error { padding-right: .6rem; margin-right: .2rem; border-right: 3px solid #c0392b; }
.plots img { max-width: 100%; border: 1px solid #eee; margin: .5rem 0; } .muted { color: #777; }
details { margin: .6rem 0; } summary { cursor: pointer; font-weight: 600; }
"""


def render_page(report: dict[str, Any], run: Path, plots: list[Path]) -> Path:
    """Write RUN/report.html (and the thumbnails it shows) from the report and the run's audit.json, if any."""
    audit_path = run / "audit.json"
    audit = json.loads(audit_path.read_text()) if audit_path.is_file() else None
    thumbnails = _Thumbnails(run, _image_root(report))
    body = [
        f"<h1>Transfer-learning comparison: {_e(run.name)}</h1>",
        _summary(report),
        f'<p class="verdict" id="verdict">{_e(verdict(report))}</p>',
        _models_table(report),
        _comparison(report),
        _repeats(report),
        _curve(report),
        _plots(run, plots),
        _errors(report, thumbnails),
        _nearest(report, thumbnails),
    ]
    if audit is not None:
        body.append(_audit(audit, run, thumbnails))
    suggested = run / "suggest.json"
    if suggested.is_file():
        body.append(_suggestions(json.loads(suggested.read_text()), thumbnails))
    thumbnails.report_missing()
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(run.name)}: transfer-learning report</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )
    path = run / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _e(value: Any) -> str:
    return html.escape(str(value))


def _summary(report: dict[str, Any]) -> str:
    split = report["split"]
    return (
        f"<p>Backbone <code>{_e(report['backbone'])}</code>; classes: {_e(', '.join(report['class_names']))}. "
        f"Split <code>{_e(split['id'])}</code>: {split['n_train']} train / {split['n_val']} validation / "
        f"{split['n_test']} test images, the same for every model. Intervals are 95%: test accuracy by Wilson's "
        "score interval, macro-F1 by a percentile bootstrap over the test images.</p>"
    )


def _table(rows: list[list[str]], table_id: str, names: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in rows[0])
    lines = []
    for index, row in enumerate(rows[1:]):
        name = f' data-model="{_e(names[index])}"' if names else ""
        cells = "".join(
            f'<td class="num">{_e(cell)}</td>' if i > 1 else f"<td>{_e(cell)}</td>" for i, cell in enumerate(row)
        )
        lines.append(f"<tr{name}>{cells}</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'


def _models_table(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    return "<h2>Models, best first</h2>" + _table(rows, "models", [row[0] for row in rows[1:]])


def _comparison(report: dict[str, Any]) -> str:
    compared = report.get("comparison")
    if not compared:
        return ""
    fields = [
        ("classical", "best classical"),
        ("neural", "best neural"),
        ("difference", "difference (accuracy)"),
        ("ci", "95% interval of the difference"),
        ("p_value", "p-value"),
        ("discordant", "discordant images [b, c]"),
        ("significant", "significant at 0.05"),
        ("test", "test"),
    ]
    cells = "".join(f"<tr><th>{_e(label)}</th><td>{_e(_plain(compared.get(key)))}</td></tr>" for key, label in fields)
    return f'<h2>Paired comparison</h2><table id="comparison">{cells}</table>'


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_plain(item) for item in value) + "]"
    return "-" if value is None else str(value)


def _repeats(report: dict[str, Any]) -> str:
    rows = repeats_rows(report)
    if not rows:
        return ""
    repeats = report["repeats"]
    return f'<h2>Repeats: {repeats["k"]} re-splits</h2><p class="muted">{_e(repeats.get("method", ""))}</p>' + _table(
        rows, "repeats"
    )


def _curve(report: dict[str, Any]) -> str:
    rows = curve_rows(report)
    if not rows:
        return ""
    curve = report["learning_curve"]
    return (
        "<h2>Learning curve: test accuracy vs labelled images per class</h2>"
        f'<p class="verdict" id="curve-verdict">{_e(curve_verdict(report))}</p>'
        + _table(rows, "learning-curve")
        + f'<p class="muted">{_e(curve["method"])}</p>'
        + "".join(f'<p class="muted">{_e(note)}.</p>' for note in neural_notes(curve))
    )


def _plots(run: Path, plots: list[Path]) -> str:
    images = "".join(
        f'<img src="plots/{_e(path.name)}" alt="{_e(path.stem)}">'
        for path in plots
        if (run / "plots" / path.name).is_file()
    )
    return f'<h2>Plots</h2><div class="plots">{images}</div>'


def _errors(report: dict[str, Any], thumbnails: _Thumbnails) -> str:
    """The test photos each model got wrong, as thumbnails with true and predicted class and probability."""
    split, names = report["split"], report["class_names"]
    paths, labels = split.get("test_paths"), split.get("test_labels")
    if not paths or labels is None:
        return '<h2>Test photos each model got wrong</h2><p class="muted">The report records no test labels.</p>'
    parts = ["<h2>Test photos each model got wrong</h2>"]
    for rank, row in enumerate(sorted(report["models"], key=lambda r: -r["test_accuracy"])):
        predicted = row.get("test_predictions")
        if not predicted or len(predicted) != len(paths):
            continue
        confidence = row.get("test_confidence") or [None] * len(paths)
        wrong = [i for i, (p, y) in enumerate(zip(predicted, labels)) if p != y]
        figures = []
        for i in wrong[:MAX_ERRORS_SHOWN]:
            probability = "" if confidence[i] is None else f" ({confidence[i]:.2f})"
            caption = f"{names[labels[i]]} → {names[predicted[i]]}{probability}"
            figures.append(_figure(thumbnails, paths[i], caption, paths[i]))
        more = (
            f'<p class="muted">… and {len(wrong) - MAX_ERRORS_SHOWN} more</p>' if len(wrong) > MAX_ERRORS_SHOWN else ""
        )
        parts.append(
            f"<details{' open' if rank == 0 else ''}><summary>{_e(row['name'])}: "
            f"{len(wrong)} of {len(paths)} wrong (true → predicted)</summary>"
            f'<div class="grid">{"".join(figures)}</div>{more}</details>'
        )
    return "".join(parts)


def _nearest(report: dict[str, Any], thumbnails: _Thumbnails) -> str:
    """The best model's most confident test errors, each followed by its nearest training photos."""
    record = report.get("errors_nearest_train")
    if not record or not record["errors"]:
        return ""
    parts = [
        f'<h2 id="errors-nearest-train">Why {_e(record["model"])} erred: the training photos nearest its most '
        "confident test errors</h2>",
        f'<p id="errors-nearest-reading">{_e(nearest_reading(record))}</p>',
        f'<p class="muted">Similarity: the {_e(record["similarity"])}.</p>',
    ]
    if record.get("skipped"):
        parts.append(f'<p class="muted">No neighbours: {_e(record["skipped"])}.</p>')
    for error in record["errors"]:
        probability = "" if error["confidence"] is None else f" ({error['confidence']:.2f})"
        test = _figure(thumbnails, error["path"], f"test: {error['label']} → {error['predicted']}{probability}")
        neighbours = "".join(
            _figure(thumbnails, near["path"], f"{near['label']} {near['similarity']:.3f}", near["path"])
            for near in error["nearest"]
        )
        parts.append(f'<div class="pair nearest"><div class="error">{test}</div>{neighbours}</div>')
    if record.get("search"):
        parts.append(f'<p class="muted">Search: {_e(record["search"])}.</p>')
    return "".join(parts)


def _audit(audit: dict[str, Any], run: Path, thumbnails: _Thumbnails) -> str:
    parts = ["<h2>Data audit</h2>"]
    summary = audit.get("summary")
    if summary:
        parts.append(
            f'<p id="audit-summary">{_e(", ".join(f"{key}: {_plain(value)}" for key, value in summary.items()))}</p>'
        )
    for finding in ("near_duplicates", "label_issues", "outliers"):
        method = audit.get(f"{finding}_method") or {}
        described = "; ".join(
            f"{key} {_plain(value)}" for key, value in method.items() if key not in ("seconds", "skipped")
        )
        parts.append(f'<p class="muted">{_e(finding.replace("_", " "))}: {_e(described)}</p>')
    duplicates = audit.get("near_duplicates") or []
    pairs = []
    for pair in duplicates[:MAX_FINDINGS_SHOWN]:
        splits = " / ".join(str(part) for part in pair.get("splits") or [])
        pairs.append(
            f'<div class="pair">{_figure(thumbnails, pair["a"], pair["a"])}{_figure(thumbnails, pair["b"], pair["b"])}'
            f"<div>cosine {pair['cosine']:.4f}<br>{'same label' if pair.get('same_label') else 'different labels'}"
            f"<br>{_e(splits)}</div></div>"
        )
    parts.append(f'<h3>Near-duplicate pairs ({len(duplicates)})</h3><div class="grid">{"".join(pairs)}</div>')
    issues = audit.get("label_issues")
    if isinstance(issues, list):
        figures = [
            _figure(
                thumbnails,
                item["path"],
                f"given {item['given']} → {item['suggested']} ({item['score']:.2f})",
                item["path"],
            )
            for item in issues[:MAX_FINDINGS_SHOWN]
        ]
        parts.append(f'<h3>Label-issue candidates ({len(issues)})</h3><div class="grid">{"".join(figures)}</div>')
    if audit.get("label_issues_skipped"):
        parts.append(f'<p class="muted">Label issues skipped: {_e(audit["label_issues_skipped"])}</p>')
    outliers = audit.get("outliers") or []
    figures = [
        _figure(thumbnails, item["path"], f"score {item['score']:.3f}", item["path"])
        for item in outliers[:MAX_FINDINGS_SHOWN]
    ]
    parts.append(f'<h3>Outliers ({len(outliers)})</h3><div class="grid">{"".join(figures)}</div>')
    drawn = (audit.get("map") or {}).get("path")
    if drawn and (run / drawn).is_file():
        parts.append(
            f'<h3>Map of the embeddings</h3><div class="plots"><img src="{_e(drawn)}" alt="embedding map"></div>'
        )
    return "".join(parts)


def _suggestions(suggested: dict[str, Any], thumbnails: _Thumbnails) -> str:
    """The photos `classical suggest` would have labelled next (RUN/suggest.json), with the model's guess."""
    rows = suggested.get("suggestions") or []
    figures = [
        _figure(thumbnails, row["path"], f"#{row['rank']} {row['label']} {row['prob']:.2f}", row["reason"])
        for row in rows[:MAX_FINDINGS_SHOWN]
    ]
    return (
        f'<h2 id="suggestions">Photos to label next ({len(rows)}, {_e(suggested.get("strategy"))}, '
        f"model {_e(suggested.get('model'))})</h2>"
        f'<p class="muted">{_e(" ".join(suggested.get("warnings") or []))}</p><div class="grid">{"".join(figures)}</div>'
    )


def _figure(thumbnails: _Thumbnails, path: str, caption: str, title: str | None = None) -> str:
    source = thumbnails.get(path)
    image = (
        f'<img src="{_e(source)}" alt="{_e(path)}" title="{_e(title or path)}">'
        if source
        else '<div class="muted">(photo not found)</div>'
    )
    return f"<figure>{image}<figcaption>{_e(caption)}</figcaption></figure>"


def _image_root(report: dict[str, Any]) -> Path | None:
    """The folder the run's image paths are relative to: its cache's source, or the folder it was fine-tuned from."""
    cache = Path(report["cache"])
    if cache.is_dir():
        return cache
    if cache.suffix == ".h5" and cache.is_file():
        with open_cache(cache) as opened:
            if report["backbone"] in opened.keys:
                source = opened[report["backbone"]].provenance.get("source")
                if source and Path(source).exists():
                    return Path(source) if Path(source).is_dir() else Path(source).parent
    return None


class _Thumbnails:
    """Small JPEGs of the run's photos in RUN/thumbnails/, made once per photo, addressed relative to the page."""

    def __init__(self, run: Path, root: Path | None) -> None:
        self.run, self.root, self.folder = run, root, run / "thumbnails"
        self.missing: dict[str, str] = {}  # path -> why its photo could not be read

    def report_missing(self) -> None:
        """One warning for every photo the page shows without a thumbnail (not one line per photo)."""
        if self.missing:
            path, why = next(iter(self.missing.items()))
            logger.warning(
                "report.html: no thumbnail of %d photo(s), e.g. %s (%s); the cache's paths are read relative "
                "to %s, the source of its last extraction",
                len(self.missing),
                path,
                why,
                self.root,
            )

    def get(self, path: str) -> str | None:
        if self.root is None:
            return None
        name = hashlib.sha256(path.encode()).hexdigest()[:16] + ".jpg"
        target = self.folder / name
        if not target.is_file():
            from PIL import Image, ImageOps

            try:
                with Image.open(self.root / path) as opened:
                    image = ImageOps.exif_transpose(opened).convert("RGB")
                    image.thumbnail((THUMBNAIL, THUMBNAIL))
                    self.folder.mkdir(exist_ok=True)
                    with atomic_path(target) as tmp:
                        image.save(tmp, format="JPEG", quality=80)
            except OSError as exc:
                self.missing[path] = exc.strerror or str(exc)
                return None
        return f"thumbnails/{name}"
