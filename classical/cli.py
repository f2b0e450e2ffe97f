"""`classical` command line: sweep, audit, finetune, report, predict, suggest, label, log, export.

Each command parses options and calls the Python API."""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from classical.audit import summary_line as audit_line
from classical.data import DEFAULT_THRESHOLD
from classical.experiments.sweep import rerender, summary
from classical.experiments.sweep import sweep as run_sweep
from classical.modelfiles.predict import predict as run_predict
from classical.models.zoo import MODEL_NAMES
from embedder import EmbedderError
from embedder.cli import Engine, Verbose, fail, setup_logging

app = typer.Typer(
    help="Classical models and neural heads on cached embeddings, compared on one split.",
    no_args_is_help=True,
    add_completion=False,
)


class Search(str, Enum):
    auto = "auto"
    grid = "grid"
    halving = "halving"


FROM_ENV = "env"
MlflowUri = Annotated[
    str | None,
    typer.Option(
        "--mlflow",
        metavar="URI",
        help="Log the run to MLflow at URI ('env': $MLFLOW_TRACKING_URI); off by default (pip extra [mlflow]).",
    ),
]
Experiment = Annotated[
    str | None, typer.Option(help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else bottleneck-lab).")
]
Register = Annotated[
    str | None, typer.Option(help="With --mlflow: register the report's best model in MLflow's registry as NAME.")
]


def tracking(mlflow: str | None, experiment: str | None, register: str | None) -> Any:
    """The MLflow target of --mlflow (checked before any fit), or None when tracking is off."""
    if mlflow is None:
        if register or experiment:
            raise ValueError("--register and --experiment need --mlflow URI.")
        return None
    from classical.tracking import tracking_target

    return tracking_target(None if mlflow == FROM_ENV else mlflow, experiment=experiment, register=register)


def track(out: Path, target: Any, command: str) -> None:
    """Log the finished run folder to MLflow; an unreachable server is one warning line, not an error."""
    if target is None:
        return
    from classical.tracking import log_or_warn

    logged = log_or_warn(out, target, command=command)
    if logged is not None:
        typer.echo(logged.line())


class Format(str, Enum):
    text = "text"
    json = "json"
    csv = "csv"


@app.callback()
def main(verbose: Verbose = False) -> None:
    setup_logging(verbose)


@app.command()
def sweep(
    cache: Annotated[Path, typer.Argument(help="HDF5 cache written by `embedder extract`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (split, models, report).")],
    models: Annotated[str, typer.Option(help="Comma-separated models to fit.")] = ",".join(MODEL_NAMES),
    backbone: Annotated[str | None, typer.Option(help="Backbone key, when the cache holds several.")] = None,
    grid: Annotated[Path | None, typer.Option(help="JSON/TOML file of grids: {model: {param: [values]}}.")] = None,
    search: Annotated[
        Search,
        typer.Option(
            help="'auto': each model's strategy by its size (exact, halving, subsample-then-refit, approximated); 'grid' or 'halving': that search on all rows."
        ),
    ] = Search.auto,
    cv: Annotated[int, typer.Option(help="Stratified CV folds (fewer if a class is too small).")] = 5,
    n_jobs: Annotated[int, typer.Option(help="Parallel jobs for the searches (-1: all cores).")] = -1,
    seed: Annotated[int, typer.Option(help="Seed of the split, the folds and the models.")] = 0,
    fractions: Annotated[str, typer.Option(help="train,val,test fractions of a new split.")] = "0.7,0.15,0.15",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    engine: Annotated[
        Engine, typer.Option(help="'local', or 'ray': the searches run on a Ray cluster (pip extra [ray]).")
    ] = Engine.local,
    address: Annotated[
        str | None, typer.Option(help="ray: 'auto', 'ray://HOST:PORT' or HOST:PORT (default: a local Ray).")
    ] = None,
    repeats: Annotated[
        int,
        typer.Option(
            help="Also re-split with seeds seed..seed+K-1 and fit the models on each: mean, std, times ranked first (0: off)."
        ),
    ] = 0,
    embedding_cost: Annotated[
        bool, typer.Option(help="Time the backbone from pixels, so costs count backbone + head.")
    ] = True,
    audit: Annotated[
        bool,
        typer.Option(
            "--audit/--no-audit",
            help="Audit the cache first (near-duplicates, label issues, outliers: RUN/audit.json).",
        ),
    ] = True,
    learning_curve: Annotated[
        str | None,
        typer.Option(
            help="Also fit the models on N labelled images per class, e.g. 5,10,25,50 ('all' implied last): report.json learning_curve."
        ),
    ] = None,
    curve_seeds: Annotated[
        int, typer.Option(help="Seeded subsets per learning-curve point (mean and std over them).")
    ] = 3,
    semi_supervised: Annotated[
        bool,
        typer.Option(
            help="Add semi-... models to the learning curve: unlabelled rows and held-back labels put to work."
        ),
    ] = False,
    time_budget: Annotated[
        float | None,
        typer.Option(
            help="Seconds for the model fits: planned from a trial fit per model, searches cut to fit; refused before any fit if it cannot."
        ),
    ] = None,
    mlflow: MlflowUri = None,
    experiment: Experiment = None,
    register: Register = None,
) -> None:
    """Fit every model on the cache's embeddings and compare them on one stored test split."""
    try:
        target = tracking(mlflow, experiment, register)
        report = run_sweep(
            cache,
            out,
            models=[name.strip() for name in models.split(",") if name.strip()],
            backbone=backbone,
            grids=grid,
            search=search.value,
            cv=cv,
            n_jobs=n_jobs,
            seed=seed,
            fractions=tuple(float(f) for f in fractions.split(",")),
            progress=None if progress else False,
            engine=engine.value,
            address=address,
            repeats=repeats,
            embedding_cost=embedding_cost,
            audit=audit,
            learning_curve=learning_curve,
            curve_seeds=curve_seeds,
            semi_supervised=semi_supervised,
            time_budget=time_budget,
        )
    except (EmbedderError, ValueError) as exc:
        fail(exc)
    for cut in report["planning"]["cuts"]:
        typer.echo(f"time budget {time_budget:g} s: cut {cut}")
    if audit:
        typer.echo(f"audit ({out / 'audit.json'}): {audit_line(json.loads((out / 'audit.json').read_text()))}\n")
    typer.echo(summary(report))
    typer.echo(report_pointer(out))
    track(out, target, "sweep")


def report_pointer(run: Path) -> str:
    """The last line of a command that writes a report: the page to open, and what lies beside it."""
    return f"\nreport: {run / 'report.html'} (open it in a browser; report.md, report.json, report.csv and plots/ beside it)"


class MapMethod(str, Enum):
    pca = "pca"
    tsne = "tsne"


@app.command("audit")
def audit_command(
    cache: Annotated[Path, typer.Argument(help="HDF5 cache written by `embedder extract`.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Run directory: audit.json and plots/ go there; its split.json, if any, is used."
        ),
    ],
    backbone: Annotated[str | None, typer.Option(help="Backbone key, when the cache holds several.")] = None,
    threshold: Annotated[
        float, typer.Option(help="Near-duplicate similarity threshold (power-normalised cosine).")
    ] = DEFAULT_THRESHOLD,
    cv: Annotated[
        int, typer.Option(help="Cross-validation folds of the out-of-fold probabilities (label issues).")
    ] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the map.")] = 0,
    map: Annotated[
        MapMethod, typer.Option("--map", help="2-D map of the embeddings: 'pca' or 'tsne'.")
    ] = MapMethod.pca,
    plot: Annotated[bool, typer.Option(help="Draw plots/embedding_map.png.")] = True,
    mlflow: MlflowUri = None,
    experiment: Experiment = None,
) -> None:
    """Audit a cache's embeddings: near-duplicates (and pairs across the run's split), label issues, outliers, a map."""
    from classical.audit import audit as run_audit

    try:
        target = tracking(mlflow, experiment, None)
        result = run_audit(
            cache, out, backbone=backbone, threshold=threshold, cv=cv, seed=seed, map_method=map.value, plot=plot
        )
    except (EmbedderError, ValueError) as exc:
        fail(exc)
    typer.echo(audit_line(result))
    for pair in result["near_duplicates"][:10]:
        typer.echo(f"  near-duplicate {pair['cosine']:.3f}: {pair['a']}  {pair['b']}  {pair['splits']}")
    for issue in result["label_issues"][:10]:
        typer.echo(
            f"  label issue {issue['score']:.3f}: {issue['path']} given {issue['given']}, suggested {issue['suggested']}"
        )
    for outlier in result["outliers"][:10]:
        typer.echo(f"  outlier {outlier['score']:.3f}: {outlier['path']}")
    typer.echo(f"audit: {out / 'audit.json'}")
    track(out, target, "audit")


class Variant(str, Enum):
    a = "a"
    b = "b"


class Schedule(str, Enum):
    cosine = "cosine"
    plateau = "plateau"
    constant = "constant"


@app.command()
def finetune(
    images: Annotated[
        Path, typer.Argument(help="The images of the run: the folder (or list) its cache was extracted from.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; its stored split is used (or created).")],
    variant: Annotated[
        Variant, typer.Option(help="'a': head first, then unfreeze the top; 'b': all trainable from the start.")
    ] = Variant.a,
    size: Annotated[
        int | None,
        typer.Option(help="Input side in pixels (96-224; default: the run's embeddings' size, else 224)."),
    ] = None,
    weights: Annotated[
        str, typer.Option(help="'auto' (the run cache's weights, else imagenet), 'imagenet', a file or 'none'.")
    ] = "auto",
    head_epochs: Annotated[
        int, typer.Option(help="Variant a: most epochs of head training on the frozen base (early stopping).")
    ] = 30,
    epochs: Annotated[
        int, typer.Option(help="Most epochs with unfrozen layers (early stopping on validation accuracy).")
    ] = 20,
    head_lr: Annotated[float, typer.Option(help="Learning rate of head training.")] = 1e-3,
    lr: Annotated[float, typer.Option(help="Learning rate with unfrozen layers.")] = 1e-4,
    unfreeze: Annotated[int, typer.Option(help="Variant a: layer groups unfrozen from the top (1-7).")] = 2,
    unfreeze_layers: Annotated[
        int | None, typer.Option(help="Variant a: unfreeze the top N layers instead of groups.")
    ] = None,
    gradual: Annotated[
        bool, typer.Option(help="Variant a: unfreeze the groups one at a time over the epochs.")
    ] = False,
    lr_decay: Annotated[
        float, typer.Option(help="Discriminative rates: group g (1 = top) gets lr x decay^g; 1 = off.")
    ] = 1.0,
    schedule: Annotated[Schedule, typer.Option(help="Learning-rate schedule with unfrozen layers.")] = Schedule.cosine,
    augment: Annotated[
        bool, typer.Option(help="Flip, rotation, zoom and contrast augmentation during training.")
    ] = True,
    views: Annotated[int, typer.Option(help="Cached versions of each training image (1 plain + augmented ones).")] = 4,
    cached: Annotated[
        bool, typer.Option(help="Head on cached embeddings, top blocks on cached activations (same network, faster).")
    ] = True,
    patience: Annotated[int, typer.Option(help="Epochs without a better validation accuracy that end a phase.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Images per training step.")] = 32,
    seed: Annotated[
        int, typer.Option(help="Seed of weights initialisation, shuffling, augmentation and a new split.")
    ] = 0,
    progress: Annotated[bool, typer.Option(help="One line per epoch.")] = True,
    learning_curve_neural: Annotated[
        bool,
        typer.Option(
            "--learning-curve-neural",
            help="Also train it on the subsets of the run's learning curve (from `classical sweep --learning-curve`): far more costly.",
        ),
    ] = False,
    mlflow: MlflowUri = None,
    experiment: Experiment = None,
    register: Register = None,
) -> None:
    """Fine-tune MobileNetV2 on the run's images and add its row to the run's report (recipe 3)."""
    from classical.finetuning.workflow import finetune as run_finetune

    try:
        target = tracking(mlflow, experiment, register)
        report = run_finetune(
            images,
            out,
            variant=variant.value,
            size=size,
            weights=weights,
            head_epochs=head_epochs,
            epochs=epochs,
            head_learning_rate=head_lr,
            learning_rate=lr,
            unfreeze=unfreeze,
            unfreeze_layers=unfreeze_layers,
            gradual=gradual,
            lr_decay=lr_decay,
            schedule=schedule.value,
            augment=augment,
            views=views if augment else 1,
            cached=cached,
            patience=patience,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            learning_curve_neural=learning_curve_neural,
        )
    except (EmbedderError, ValueError) as exc:
        fail(exc)
    row = next(row for row in report["models"] if row["name"] == f"finetune-{variant.value}")
    for phase in row["phases"]:
        typer.echo(
            f"phase {phase['name']:>16}: {phase['epochs']} epochs at lr {phase['learning_rate']:g} "
            f"({phase['epochs_run']} run), {phase['trainable']:,} trainable / {phase['non_trainable']:,} "
            f"non-trainable parameters, {phase['seconds_per_epoch'] or 0:.1f} s/epoch, {phase['method']}"
        )
    typer.echo("")
    typer.echo(summary(report))
    typer.echo(report_pointer(out))
    track(out, target, "finetune")


@app.command()
def report(run: Annotated[Path, typer.Argument(help="Run directory of a sweep.")]) -> None:
    """Re-render a run's plots and report files from its report.json, and print the table."""
    try:
        rendered = rerender(run)
    except (FileNotFoundError, EmbedderError) as exc:
        fail(exc)
    typer.echo(summary(rendered))


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A saved model: runs/NAME/MODEL or runs/NAME/MODEL.model.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    format: Annotated[
        Format, typer.Option("--format", help="'text', 'json' (one object per line) or 'csv'.")
    ] = Format.text,
    runtime: Annotated[str, typer.Option(help="'auto', 'onnx' or 'keras'.")] = "auto",
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Also read a model file of an earlier release (a pickle: it can run code; only for files you trust).",
        ),
    ] = False,
) -> None:
    """Classify new images with a saved model, embedding them with the model's own backbone."""
    try:
        results = run_predict(model, inputs, runtime=runtime, trust_pickle=trust_pickle)
    except (EmbedderError, ValueError) as exc:
        fail(exc)
    if format is Format.json:
        for result in results:
            typer.echo(json.dumps(result))
    elif format is Format.csv:
        classes = next((list(r["probs"]) for r in results if "probs" in r), [])
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "label", "prob", *classes, "error"])
        for r in results:
            writer.writerow(
                [
                    r["path"],
                    r.get("label", ""),
                    r.get("prob", ""),
                    *(r["probs"][c] if "probs" in r else "" for c in classes),
                    r.get("error", ""),
                ]
            )
        typer.echo(buffer.getvalue().rstrip("\n"))
    else:
        for r in results:
            typer.echo(
                f"{r['path']}: error: {r['error']}" if "error" in r else f"{r['path']}: {r['label']} {r['prob']:.3f}"
            )
    if any("error" in r for r in results):
        raise typer.Exit(1)


class Strategy(str, Enum):
    uncertainty = "uncertainty"
    diversity = "diversity"
    hybrid = "hybrid"


class SuggestFormat(str, Enum):
    csv = "csv"
    json = "json"
    label_studio = "label-studio"


@app.command("suggest")
def suggest_command(
    cache: Annotated[Path, typer.Argument(help="HDF5 cache whose unlabelled rows (label -1) are the candidates.")],
    run: Annotated[Path, typer.Option("--run", help="Run directory of a sweep: its best model ranks the rows.")],
    budget: Annotated[int, typer.Option(help="Photos to suggest.")] = 50,
    strategy: Annotated[
        Strategy,
        typer.Option(
            help="'uncertainty' (smallest margin), 'diversity' (k-center greedy) or 'hybrid' (one photo per cluster "
            "of the most uncertain, by uncertainty-weighted k-means; no near-duplicates)."
        ),
    ] = Strategy.hybrid,
    format: Annotated[
        SuggestFormat,
        typer.Option(
            "--format",
            help="RUN/suggest.csv, RUN/suggest.json or RUN/suggest.label-studio.json (Label Studio tasks); "
            "suggest.json is always written, and report.html gains the photos.",
        ),
    ] = SuggestFormat.csv,
    model: Annotated[str | None, typer.Option(help="A model of the run instead of its best one, e.g. lr.")] = None,
    threshold: Annotated[
        float, typer.Option(help="Near-duplicate similarity threshold (the audit's; raised in dense domains).")
    ] = DEFAULT_THRESHOLD,
) -> None:
    """Rank the cache's unlabelled photos for labelling next, by the run's best model and the embeddings."""
    from classical.labelling import suggest, write_outputs

    try:
        result = suggest(cache, run, budget=budget, strategy=strategy.value, model=model, threshold=threshold)
        written = write_outputs(result, run, format.value)
    except (EmbedderError, ValueError, OSError) as exc:
        fail(exc)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(
        f"{len(result.rows)} of {result.unlabelled} unlabelled photos suggested ({result.strategy}, model "
        f"{result.model}, {result.labelled} labelled)"
    )
    for row in result.rows[:20]:
        typer.echo(f"  {row['score']:.3f} {row['path']}: {row['label']} {row['prob']:.3f}; {row['reason']}")
    typer.echo(f"suggestions: {written[-1]} (and {written[0].name}); report: {run / 'report.html'}")


@app.command("label")
def label_command(
    cache: Annotated[Path, typer.Argument(help="HDF5 cache whose rows get the labels.")],
    file: Annotated[Path, typer.Argument(help="A CSV with path and label columns, or a Label Studio JSON export.")],
    backbone: Annotated[str | None, typer.Option(help="Backbone key, when the cache holds several.")] = None,
    new_classes: Annotated[
        bool, typer.Option("--new-classes", help="Append classes the cache does not know yet.")
    ] = False,
) -> None:
    """Set the labels of cached rows from a label file, without re-embedding: all of them or none."""
    from classical.labelling import import_labels

    try:
        update = import_labels(cache, file, backbone=backbone, new_classes=new_classes)
    except (EmbedderError, ValueError) as exc:
        fail(exc)
    added = f", new classes {', '.join(update.new_classes)}" if update.new_classes else ""
    typer.echo(
        f"{len(update.changed)} labels changed, {len(update.unchanged)} already so in {cache} ({update.key}){added}"
    )


@app.command("log")
def log_command(
    run: Annotated[Path, typer.Argument(help="A run folder (report.json and/or audit.json) to log again.")],
    mlflow: MlflowUri = None,
    experiment: Experiment = None,
    register: Register = None,
    models: Annotated[bool, typer.Option(help="Also log each model row as an MLflow ONNX model.")] = True,
) -> None:
    """Log an existing run folder to MLflow from its report.json: a parent run and one nested run per model."""
    from classical.tracking import log_run, tracking_target, unreachable

    try:
        uri = None if mlflow in (None, FROM_ENV) else mlflow
        target = tracking_target(uri, experiment=experiment, register=register, models=models)
        problem = unreachable(target)
        if problem:
            raise ConnectionError(f"cannot log {run} to {target.uri}: {problem}")
        logged = log_run(run, target, command="log")
    except (EmbedderError, ValueError, OSError) as exc:
        fail(exc)
    typer.echo(logged.line())
    for item in logged.not_logged:
        typer.echo(f"not logged: {item}", err=True)


class ExportFormat(str, Enum):
    onnx = "onnx"
    saved_model = "saved_model"
    tflite = "tflite"


@app.command("export")
def export_command(
    model: Annotated[Path, typer.Argument(help="A model file of the sweep or fine-tuning (runs/NAME/MODEL[.model]).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="File to write: FILE.onnx, FILE.tflite, or a SavedModel folder.")
    ],
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format", help="'onnx' (every model), 'saved_model' or 'tflite' (Dense head, fine-tuned networks)."
        ),
    ] = ExportFormat.onnx,
    int8: Annotated[
        bool,
        typer.Option("--int8", help="Static int8 quantization (onnx, tflite), calibrated on --calibration photos."),
    ] = False,
    calibration: Annotated[
        list[Path] | None, typer.Option(help="Real photos (files or folders) like the ones to classify, for --int8.")
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle", help="Also read a model file of an earlier release (a pickle: only if you trust it)."
        ),
    ] = False,
) -> None:
    """Write a model as one file from uint8 RGB pixels to class probabilities, runnable without this project."""
    from classical.export import export_model

    try:
        result = export_model(
            model, out, format=format.value, int8=int8, calibration=calibration, trust_pickle=trust_pickle
        )
    except (EmbedderError, ValueError, ImportError) as exc:
        fail(exc)
    typer.echo(
        f"wrote {result.path} ({result.format}, {result.precision}, {result.bytes / 1e6:.1f} MB) in {result.seconds:.1f} s"
    )
    typer.echo(
        f"input images: uint8 RGB [N, {result.image_size}, {result.image_size}, 3] ({result.resize}); output probabilities over {result.class_names}"
    )
    typer.echo(
        f"check on {result.check_images}: max abs difference from the model {result.max_abs_diff:.1e}, "
        f"same label {result.agreement:.1%}"
    )


if __name__ == "__main__":
    sys.exit(app())
