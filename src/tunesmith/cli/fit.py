"""``tunesmith fit``, ``evaluate`` and ``predict``: train any kind, score it, predict with it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunesmith.cli.common import (
    FIT_ELSEWHERE,
    PRIMARY,
    app,
    console,
    detect_kind,
    err_console,
    metrics_table,
    plain_settings,
    print_cv,
    print_uncertainty,
    setting_names,
    text_settings,
)
from tunesmith.errors import ArtifactError


def print_fit_summary(ft: Any) -> None:
    """The test metrics of a text fit against its baselines, the gains, training time and cleaning."""
    task = ft.schema_.task
    rows: dict[str, dict[str, Any]] = {}
    if ft.test_metrics_:
        rows[f"fine-tuned {ft.config_.backbone} ({ft.config_.strategy})"] = ft.test_metrics_
    names = {
        "majority": "majority class" if task != "regression" else "mean",
        "tfidf": "TF-IDF + linear",
        "frozen": "frozen embeddings + linear",
    }
    for key, m in ft.baseline_metrics_.items():
        rows[names.get(key, key)] = m
    if rows:
        console.print(metrics_table(f"test split ({ft.split_sizes_['test']} rows)", rows, task))
    primary = PRIMARY[task]
    if ft.test_metrics_ and ft.baseline_metrics_ and not (getattr(ft, "uncertainty_", None) or {}).get("gains"):
        for key, m in ft.baseline_metrics_.items():
            a, b = ft.test_metrics_.get(primary), m.get(primary)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                sign = "+" if a - b >= 0 else ""
                scale = 100.0 if task != "regression" else 1.0
                unit = " points" if task != "regression" else ""
                console.print(f"  gain over {names.get(key, key)}: {sign}{(a - b) * scale:.2f}{unit} {primary}")
    print_uncertainty(ft, names)
    info = ft.training_info_
    console.print(
        f"trained {info['epochs_run']} epoch(s) in {info['train_seconds']:.1f}s "
        f"({info['train_examples_per_s'] or 0:.1f} examples/s); best epoch {info['best_epoch']}"
        + (f"; stopped early: {info['stop_reason']}" if info.get("stop_reason") else "")
    )
    cleaning = getattr(ft, "cleaning_", None)
    if cleaning:
        for action in cleaning.actions:
            if action.count:
                console.print(f"[yellow]cleaning: {action.description}[/yellow]", highlight=False)
    for where, report in ft.drop_report_.items():
        if report.get("dropped_total"):
            console.print(f"[yellow]{where}: {report.get('summary', report)}[/yellow]")
    if ft.run_dir_:
        console.print(f"run record: {ft.run_dir_}")


def print_image_summary(ft: Any) -> None:
    """The test metrics of an image fit against its baselines, training time, BatchNorm and skipped files."""
    rows: dict[str, dict[str, Any]] = {}
    if ft.test_metrics_:
        rows[f"fine-tuned {ft.config_.backbone} ({ft.config_.strategy})"] = ft.test_metrics_
    names = {"majority": "majority class", "frozen": "frozen features + linear"}
    for key, m in ft.baseline_metrics_.items():
        rows[names.get(key, key)] = m
    if rows:
        console.print(metrics_table(f"test split ({ft.split_sizes_['test']} images)", rows, ft.task_))
    print_uncertainty(ft, names)
    info = ft.training_info_
    bn = info.get("batchnorm") or {}
    console.print(
        f"trained {info['epochs_run']} epoch(s) in {info['train_seconds']:.1f}s "
        f"({info['train_examples_per_s'] or 0:.1f} images/s); best epoch {info['best_epoch']}; "
        f"BatchNorm {bn.get('mode')}"
        + (f" ({'kept' if bn.get('kept') else 'not kept'})" if bn.get("recalibrated_layers") else "")
    )
    info_data = ft.data_info_ or {}
    skipped = (info_data.get("decode") or {}).get("skipped") or []
    if skipped:
        console.print(f"[yellow]{len(skipped)} unreadable image(s) skipped, e.g. {skipped[0]}[/yellow]")
    if info_data.get("ignored_files"):
        console.print(f"[yellow]{info_data['ignored_files']} file(s) in the folder are not images: ignored[/yellow]")
    if getattr(ft, "run_dir_", None):
        console.print(f"run record: {ft.run_dir_}")


def print_tabular_summary(ft: Any) -> None:
    """Every tabular candidate's metrics, and the one chosen on validation."""
    rows = {}
    for name, info in ft.candidates_.items():
        shown = info.get("test") or info.get("valid") or {}
        rows[name + (" (chosen)" if name == ft.chosen_ else "")] = shown
    which = "test" if any(i.get("test") for i in ft.candidates_.values()) else "validation"
    console.print(metrics_table(f"candidates on the {which} split", rows, ft.schema_.task))
    console.print(f"chosen on validation: {ft.chosen_}")
    print_uncertainty(ft, {"majority": "majority class" if ft.schema_.task != "regression" else "mean"})
    if getattr(ft, "run_dir_", None):
        console.print(f"run record: {ft.run_dir_}")


SUMMARIES = {"text": print_fit_summary, "image": print_image_summary, "tabular": print_tabular_summary}


@app.command()
def fit(
    data: Annotated[
        Path, typer.Argument(help="Labeled data: CSV, TSV, Parquet or JSONL, or a folder of images (one per class).")
    ],
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Column holding the labels (image folders: not needed).")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Settings as key=value (e.g. lr=3e-5).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of settings.")] = None,
    kind: Annotated[
        str, typer.Option(help="auto, or a registered kind: text, image or tabular (auto: from the data).")
    ] = "auto",
    text_column: Annotated[str | None, typer.Option(help="Text column (inferred if omitted).")] = None,
    image_column: Annotated[str | None, typer.Option(help="Column of image paths (an image model).")] = None,
    root: Annotated[
        Path | None, typer.Option(help="Folder image paths are relative to (default: the table's).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="binary, multiclass or regression (inferred).")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone name or local model folder.")] = None,
    group_column: Annotated[str | None, typer.Option(help="Keep each group inside one split.")] = None,
    split_column: Annotated[str | None, typer.Option(help="Column naming each row's split.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Model folder to write.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model folder.")] = False,
    cv: Annotated[int | None, typer.Option(help="First cross-validate with K folds and print the spread.")] = None,
    cv_strategy: Annotated[str, typer.Option(help="stratified, group or time folds.")] = "stratified",
    time_column: Annotated[str | None, typer.Option(help="Order of rows for --cv-strategy time.")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Run folder of a killed fit: continue it from its last checkpoint (same DATA)."),
    ] = None,
) -> None:
    """Fine-tune a backbone on DATA, compare with baselines, save the model and a run record.

    Text tables fine-tune a text encoder; a folder of images or a table with --image-column
    fine-tunes an image CNN; a table without text trains the tabular models (LightGBM and a
    neural network, the better on validation kept). --kind tabular also takes tables that mix
    text with numbers and categories. --cv K first cross-validates the same settings (any kind).
    --resume RUN continues a killed fit from its run folder with the settings it was started with
    (and ends with the same weights as a fit never stopped).
    """
    # Imported here: --help and the other commands must not load every estimator (and torch).
    from tunesmith.estimators import registry
    from tunesmith.estimators.resume import read_run_config
    from tunesmith.kinds import names as kind_names
    from tunesmith.search.cv import cross_validate

    if output is not None and output.exists() and not overwrite:
        # Say so now, not after the training run.
        raise ArtifactError(
            "the output folder already exists", path=output, hint="Pass --overwrite or choose another -o"
        )
    base: dict[str, Any] | None = None
    if resume is not None:
        if config is not None or cv is not None:
            flag = "--config" if config is not None else "--cv"
            raise typer.BadParameter("cannot be combined with --resume (the run's settings are used)", param_hint=flag)
        base = read_run_config(resume)
        target = target or base.pop("target", None)
        base.pop("target", None)
        if kind == "auto":
            # The kind whose settings the run holds (a table fit as tabular must not resume as text).
            fits = [
                k
                for k in kind_names()
                if k not in FIT_ELSEWHERE and set(base) <= set(setting_names(registry.estimator(k)))
            ]
            kind = fits[0] if len(fits) == 1 else kind
    chosen = detect_kind(data, kind, image_column, backbone, target, kind_names())
    if chosen in FIT_ELSEWHERE:
        raise typer.BadParameter(f"{chosen} models are trained by: {FIT_ELSEWHERE[chosen]}", param_hint="--kind")
    if chosen != "text":
        # Say so rather than split at random behind the user's back.
        unsupported = {
            "--group-column": group_column if cv is None or cv_strategy != "group" else None,
            "--split-column": split_column,
            "--time-column": time_column if cv is None else None,
            "--task": task if chosen == "image" else None,
            "--text-column": text_column if chosen == "image" else None,
        }
        for flag, value in unsupported.items():
            if value is not None:
                raise typer.BadParameter(f"is not supported for {chosen} models yet", param_hint=flag)
    if chosen != "image" and target is None:
        raise typer.BadParameter("is required for a table (the column holding the labels)", param_hint="--target")
    estimator_class = registry.estimator(chosen)
    if chosen == "text":
        params = text_settings(
            config, overrides, base, task=task, backbone=backbone, group_column=group_column, split_column=split_column
        )
        fit_options: dict[str, Any] = {"target": target, "text_column": text_column}
    elif chosen == "image":
        params = plain_settings(
            setting_names(estimator_class),
            config,
            overrides,
            base,
            backbone=backbone,
            path_column=image_column,
            root=str(root) if root else None,
        )
        fit_options = {"target": target} if target is not None else {}
    else:
        params = plain_settings(
            setting_names(estimator_class),
            config,
            overrides,
            base,
            task=task,
            text_columns=[text_column] if text_column else None,
        )
        fit_options = {"target": target}
    estimator = estimator_class(**params)
    if cv is not None:
        result = cross_validate(
            estimator,
            str(data),
            target=fit_options.get("target"),
            text_column=text_column if chosen == "text" else None,
            k=cv,
            strategy=cv_strategy,
            group_column=group_column,
            time_column=time_column,
            seed=int(params.get("seed", 0)),
        )
        print_cv(result, cv, cv_strategy)
    fitted = estimator.fit(data, **fit_options, **({"resume": resume} if resume is not None else {}))
    SUMMARIES[chosen](fitted)
    run_dir = getattr(fitted, "run_dir_", None) if chosen == "text" else None
    out = output or (Path(run_dir) / "model" if run_dir else Path("model"))
    fitted.save(out, overwrite=overwrite)
    console.print(f"model saved to {out}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="Model folder written by fit.")],
    data: Annotated[Path, typer.Argument(help="Labeled data to score.")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="Label column (default: as trained).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics as JSON.")] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="Local backbone folder of a head-only model (never taken from the model folder)."),
    ] = None,
) -> None:
    """Score a saved model on labeled DATA."""
    from tunesmith.kinds import load
    from tunesmith.runs.artifacts import atomic_write_json, json_safe

    ft = load(model, **({"backbone": backbone} if backbone is not None else {}))
    metrics = ft.evaluate(data, target=target)
    schema = getattr(ft, "schema_", None)
    task = schema.task if schema is not None else getattr(ft, "task_", "binary")
    console.print(metrics_table(f"{data.name} ({metrics.get('n', '?')} rows)", {"model": metrics}, task))
    dropped = metrics.get("dropped") or {}
    if dropped.get("dropped_total"):
        console.print(f"[yellow]{dropped.get('summary')}[/yellow]")
    if json_out:
        atomic_write_json(json_out, json_safe(metrics))


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Model folder written by fit.")],
    data: Annotated[Path, typer.Argument(help="Rows to predict: CSV, TSV, Parquet or JSONL.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write predictions (by suffix).")],
    proba: Annotated[bool, typer.Option("--proba", help="Add a probability column per class.")] = False,
    backend: Annotated[str, typer.Option(help="torch, or onnx (after tunesmith export; fastest on a CPU).")] = "torch",
    precision: Annotated[str, typer.Option(help="ONNX graph: auto (int8 when exported), int8 or fp32.")] = "auto",
    chunk_rows: Annotated[int, typer.Option(help="Rows read, scored and written at a time.")] = 4096,
    batch_size: Annotated[int, typer.Option(help="Rows per model call.")] = 64,
    threads: Annotated[int | None, typer.Option(help="Compute threads (default: all cores).")] = None,
    root: Annotated[Path | None, typer.Option(help="Image models: folder the paths are relative to.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    backbone: Annotated[
        str | None,
        typer.Option(help="Local backbone folder of a head-only model (never taken from the model folder)."),
    ] = None,
) -> None:
    """Predict labels (or values) for DATA and write them beside the input columns.

    Large files are read, scored and written in chunks, so memory stays flat. For an image
    model DATA is a table with the image-path column, or a folder of images.
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

    from tunesmith.export.batch import predict_file
    from tunesmith.export.runtime import load_predictor

    if chunk_rows < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--chunk-rows")
    predictor = load_predictor(
        model, backend=backend, precision=precision, batch_size=batch_size, threads=threads, backbone=backbone
    )
    if hasattr(predictor, "root"):
        predictor.root = root or (data if data.is_dir() else data.parent)
        if data.is_dir():
            _predict_image_folder(predictor, data, output, proba)
            return
    if proba and predictor.task == "regression":
        console.print("[yellow]--proba ignored: this model does regression[/yellow]")
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
        transient=True,
    ) as bar:
        task_id = bar.add_task(f"predicting ({predictor.backend} {predictor.precision})", total=None)

        def advance(done: int, total: int, unit: str) -> None:
            # Streamed text files report bytes read, the others rows: the bar shows a percentage of either.
            bar.update(task_id, completed=done, total=total)

        result = predict_file(predictor, data, output, probabilities=proba, chunk_rows=chunk_rows, progress=advance)
    if result.empty_text_rows:
        console.print(f"[yellow]{result.empty_text_rows} row(s) had no text; predicted from an empty text[/yellow]")
    console.print(
        f"wrote {result.rows} predictions to {output} ({predictor.backend} {predictor.precision}, "
        f"model {predictor.version})",
        soft_wrap=True,
    )


def _predict_image_folder(predictor: Any, folder: Path, output: Path, proba: bool) -> None:
    """Every image under ``folder`` (recursively), predicted and written as a table of path and label."""
    import pandas as pd

    from tunesmith.data.images import list_images
    from tunesmith.data.io import write_table

    base = folder.resolve()
    paths = [str(Path(p).relative_to(base)) for p in list_images(base)]
    frame = pd.DataFrame({predictor.path_column: paths})
    preds, probabilities = predictor.predict_frame(frame)
    frame["prediction"] = preds
    if proba and probabilities is not None:
        for i, label in enumerate(predictor.labels):
            frame[f"proba_{label}"] = probabilities[:, i]
    write_table(frame, output)
    console.print(f"wrote {len(frame)} predictions to {output} ({predictor.backend}, model {predictor.version})")
