"""The ``tunesmith`` command line: parse arguments, call the library, print.

A user error prints one line (``error: ...``) and exits with status 2; no stack trace.
"""

from __future__ import annotations

import os

# Sleeping (not spinning) OpenMP threads: on a shared machine spin-waiting threads slow a
# training step several-fold. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.errors import TunesmithError

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune pre-trained models on your labeled data, measured against baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

PRIMARY = {"binary": "accuracy", "multiclass": "accuracy", "regression": "rmse"}
COLUMNS = {
    "classification": ["accuracy", "f1_macro", "roc_auc", "log_loss"],
    "regression": ["mae", "rmse", "r2"],
}


def _settings(config: Path | None, overrides: list[str] | None, **flags: Any) -> dict[str, Any]:
    from tunesmith.config import load_config_file, make_config, parse_override

    params: dict[str, Any] = load_config_file(config) if config else {}
    for text in overrides or []:
        key, value = parse_override(text)
        params[key] = value
    params.update({k: v for k, v in flags.items() if v is not None})
    make_config(params)
    return params


def metrics_table(title: str, rows: dict[str, dict[str, Any]], task: str) -> Table:
    """A rich table with models as rows and the task's metrics as columns."""
    cols = COLUMNS["regression" if task == "regression" else "classification"]
    table = Table(title=title)
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in rows.items():
        table.add_row(name, *[f"{m[c]:.4f}" if isinstance(m.get(c), (int, float)) else "-" for c in cols])
    return table


def print_fit_summary(ft: Any) -> None:
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
    if ft.test_metrics_ and ft.baseline_metrics_:
        for key, m in ft.baseline_metrics_.items():
            a, b = ft.test_metrics_.get(primary), m.get(primary)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                sign = "+" if a - b >= 0 else ""
                scale = 100.0 if task != "regression" else 1.0
                unit = " points" if task != "regression" else ""
                console.print(f"  gain over {names.get(key, key)}: {sign}{(a - b) * scale:.2f}{unit} {primary}")
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


KINDS = ("auto", "text", "image", "tabular")


def _detect_kind(data: Path, kind: str, image_column: str | None, backbone: str | None, target: str | None) -> str:
    """Which estimator a fit needs: image for a folder or an image-path column, tabular for a table without text."""
    if kind not in KINDS:
        raise typer.BadParameter(f"must be one of {', '.join(KINDS)}, got {kind!r}", param_hint="--kind")
    if kind != "auto":
        return kind
    from tunesmith.backbones import backbone_modality

    if data.is_dir() or image_column or (backbone and backbone_modality(backbone) == "image"):
        return "image"
    from tunesmith.data.io import read_table
    from tunesmith.data.schema import column_role

    df = read_table(data)
    roles = [column_role(df[c], str(c)) for c in df.columns if c != target]
    return "text" if "text" in roles else "tabular"


def _plain_settings(
    fields: Sequence[str], config: Path | None, overrides: list[str] | None, **flags: Any
) -> dict[str, Any]:
    """Settings for the image and tabular estimators (``fields``: the names each one accepts)."""
    from tunesmith.config import load_config_file, parse_override

    params: dict[str, Any] = load_config_file(config, fields) if config else {}
    for text in overrides or []:
        key, value = parse_override(text, fields)
        params[key] = value
    params.update({k: v for k, v in flags.items() if v is not None})
    return params


def _print_image_summary(ft: Any) -> None:
    rows: dict[str, dict[str, Any]] = {}
    if ft.test_metrics_:
        rows[f"fine-tuned {ft.config_.backbone} ({ft.config_.strategy})"] = ft.test_metrics_
    names = {"majority": "majority class", "frozen": "frozen features + linear"}
    for key, m in ft.baseline_metrics_.items():
        rows[names.get(key, key)] = m
    if rows:
        console.print(metrics_table(f"test split ({ft.split_sizes_['test']} images)", rows, ft.task_))
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


def _print_tabular_summary(ft: Any) -> None:
    rows = {}
    for name, info in ft.candidates_.items():
        shown = info.get("test") or info.get("valid") or {}
        rows[name + (" (chosen)" if name == ft.chosen_ else "")] = shown
    which = "test" if any(i.get("test") for i in ft.candidates_.values()) else "validation"
    console.print(metrics_table(f"candidates on the {which} split", rows, ft.schema_.task))
    console.print(f"chosen on validation: {ft.chosen_}")


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
    kind: Annotated[str, typer.Option(help="auto, text, image or tabular (auto: from the data).")] = "auto",
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
) -> None:
    """Fine-tune a backbone on DATA, compare with baselines, save the model and a run record.

    Text tables fine-tune a text encoder; a folder of images or a table with --image-column
    fine-tunes an image CNN; a table without text trains the tabular models (LightGBM and a
    neural network, the better on validation kept). --kind tabular also takes tables that mix
    text with numbers and categories.
    """
    from tunesmith.errors import ArtifactError

    if output is not None and output.exists() and not overwrite:
        # Say so now, not after the training run.
        raise ArtifactError(
            "the output folder already exists", path=output, hint="Pass --overwrite or choose another -o"
        )
    chosen = _detect_kind(data, kind, image_column, backbone, target)
    if chosen in ("image", "tabular"):
        # Say so rather than split at random behind the user's back.
        unsupported = {
            "--group-column": group_column,
            "--split-column": split_column,
            "--cv": cv,
            "--time-column": time_column,
            "--task": task if chosen == "image" else None,
        }
        for flag, value in unsupported.items():
            if value is not None:
                raise typer.BadParameter(f"is not supported for {chosen} models yet", param_hint=flag)
    if chosen == "image":
        from tunesmith.vision import ImageConfig, ImageFineTuner

        params = _plain_settings(
            list(ImageConfig.model_fields),
            config,
            overrides,
            backbone=backbone,
            target=target,
            path_column=image_column,
            root=str(root) if root else None,
        )
        ift = ImageFineTuner(**params).fit(data)
        _print_image_summary(ift)
        out = output or Path("model")
        ift.save(out, overwrite=overwrite)
        console.print(f"model saved to {out}")
        return
    if target is None:
        raise typer.BadParameter("is required for a table (the column holding the labels)", param_hint="--target")
    if chosen == "tabular":
        from tunesmith.tabular import TabularFineTuner

        params = _plain_settings(
            TabularFineTuner._param_names(),
            config,
            overrides,
            task=task,
            text_columns=[text_column] if text_column else None,
        )
        tft = TabularFineTuner(target=target, **params).fit(data)
        _print_tabular_summary(tft)
        out = output or Path("model")
        tft.save(out, overwrite=overwrite)
        console.print(f"model saved to {out}")
        return
    from tunesmith.estimator import FineTuner

    params = _settings(
        config, overrides, task=task, backbone=backbone, group_column=group_column, split_column=split_column
    )
    if cv is not None:
        from tunesmith.evaluate.cv import cross_validate

        result = cross_validate(
            params,
            str(data),
            target=target,
            text_column=text_column,
            k=cv,
            strategy=cv_strategy,
            group_column=group_column,
            time_column=time_column,
            seed=int(params.get("seed", 0)),
        )
        scores = ", ".join(f"{v:.4f}" for v in result.scores)
        console.print(
            f"{cv}-fold {cv_strategy} cross-validation, {result.metric}: {result.mean:.4f} ± {result.std:.4f} "
            f"(folds: {scores})",
            highlight=False,
        )
    ft = FineTuner(**params).fit(data, target=target, text_column=text_column)
    print_fit_summary(ft)
    out = output or (Path(ft.run_dir_) / "model" if ft.run_dir_ else Path("model"))
    ft.save(out, overwrite=overwrite)
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
    import tunesmith
    from tunesmith.runs.artifacts import atomic_write_json, json_safe

    ft = tunesmith.load(model, backbone=backbone)
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


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Model folder written by fit.")],
    format: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    quantize: Annotated[str | None, typer.Option(help="Also write an int8 graph (dynamic quantisation).")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Labeled rows for the checks; the training file gives the run's own test split."),
    ] = None,
    target: Annotated[str | None, typer.Option(help="Label column of --data (default: the training target).")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest |logit difference| from PyTorch allowed.")] = 1e-3,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="Fail when int8 costs more accuracy points than this.")
    ] = None,
    max_mae_increase: Annotated[
        float | None, typer.Option(help="Regression: fail when int8 raises the MAE by more than this.")
    ] = None,
    sample_size: Annotated[int, typer.Option(help="Rows in the parity check.")] = 256,
    backbone: Annotated[
        str | None,
        typer.Option(help="Local backbone folder of a head-only model (never taken from the model folder)."),
    ] = None,
) -> None:
    """Export MODEL to ONNX (into MODEL/onnx/), checked against PyTorch; optionally int8 too."""
    from tunesmith.errors import ConfigError
    from tunesmith.export.onnx import export_onnx

    if format != "onnx":
        raise ConfigError(f"must be onnx, got {format!r}", key="format")
    if quantize not in (None, "int8"):
        raise ConfigError(f"must be int8, got {quantize!r}", key="quantize")
    source: Any = model
    if backbone is not None:
        from tunesmith.estimator import FineTuner

        source = FineTuner.load(model, backbone=backbone)
    with console.status("exporting and checking the graph"):
        result = export_onnx(
            source,
            quantize=quantize,
            data=data,
            target=target,
            tolerance=tolerance,
            max_accuracy_drop=max_accuracy_drop,
            max_mae_increase=max_mae_increase,
            sample_size=sample_size,
        )
    p = result.parity
    console.print(
        f"parity (fp32 vs PyTorch, {p['rows']} rows from {p['source']}): "
        f"max |logit difference| {p['max_abs_diff']:.2e} <= {p['tolerance']:g}",
        soft_wrap=True,
    )
    q = result.int8
    if q is not None:
        if "accuracy_drop_points" in q:
            console.print(
                f"int8 accuracy on {q['source']}: {100 * q['accuracy_fp32']:.2f}% -> {100 * q['accuracy_int8']:.2f}% "
                f"({q['accuracy_drop_points']:.2f} points lost)",
                soft_wrap=True,
            )
        elif "mae_change" in q:
            console.print(f"int8 MAE on {q['source']}: {q['mae_fp32']:.4g} -> {q['mae_int8']:.4g}")
        else:
            console.print(f"int8 accuracy {q.get('accuracy_note', 'not measured')}")
    for rel in result.files.values():
        console.print(f"wrote {model / rel}", soft_wrap=True)


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="Model folder written by fit (exported for --backend onnx).")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    backend: Annotated[
        str | None, typer.Option(help="onnx (after tunesmith export; default) or torch (default with --adapters).")
    ] = None,
    precision: Annotated[str, typer.Option(help="ONNX graph: auto (int8 when exported), int8 or fp32.")] = "auto",
    adapters: Annotated[
        Path | None,
        typer.Option(help="Adapter store of tunesmith personalize: each row is answered by its user's adapter."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Server processes, each with its own model.")] = 1,
    threads: Annotated[int | None, typer.Option(help="Compute threads per worker (default: cores // workers).")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Most rows in one model call.")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Longest wait to fill a batch.")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Rows that may wait; beyond that 503.")] = None,
    max_rows_per_request: Annotated[int | None, typer.Option(help="Most rows in one request.")] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help="Largest request body; larger is 413.")] = None,
    request_timeout_s: Annotated[float | None, typer.Option(help="Seconds before a 504.")] = None,
    graceful_timeout_s: Annotated[float | None, typer.Option(help="Seconds to drain after SIGTERM.")] = None,
    model_version: Annotated[str | None, typer.Option(help="Version to report (default: hash of the weights).")] = None,
    prediction_log: Annotated[Path | None, typer.Option(help="Log predictions to this SQLite or Parquet file.")] = None,
    prediction_log_format: Annotated[str | None, typer.Option(help="sqlite or parquet.")] = None,
    prediction_log_rotate_rows: Annotated[int | None, typer.Option(help="Records per log file.")] = None,
    prediction_log_buffer_rows: Annotated[
        int | None, typer.Option(help="Rows the log may hold in memory; beyond that records are dropped and counted.")
    ] = None,
    prediction_log_buffer_bytes: Annotated[
        int | None, typer.Option(help="Bytes the log may hold in memory; beyond that records are dropped and counted.")
    ] = None,
    model_nice: Annotated[
        int | None, typer.Option(help="Nice steps of the model threads below the event loop (0 = same priority).")
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="Local backbone folder of a head-only model (never taken from the model folder)."),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Print one line per request.")] = False,
    log_level: Annotated[str | None, typer.Option(help="critical, error, warning, info or debug.")] = None,
) -> None:
    """Serve MODEL over HTTP: /v1/predict, /v1/metadata, /live, /ready, /metrics.

    With --adapters STORE (torch backend), each row names its user in the store's user column
    and is answered by that user's adapter, else its segment's, else the shared model; every
    prediction says which (served_by). A store built for another model is refused.

    The API key and the admin token (which turns on POST /admin/reload) are read from the
    TUNESMITH_API_KEY and TUNESMITH_ADMIN_TOKEN environment variables, never from flags.
    """
    from tunesmith.serve.command import run_server
    from tunesmith.serve.settings import ServeSettings

    settings = ServeSettings.from_options(
        host=host,
        port=port,
        backend=backend,
        precision=precision,
        adapters=adapters,
        backbone=backbone,
        workers=workers,
        threads=threads,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_rows_per_request=max_rows_per_request,
        max_body_bytes=max_body_bytes,
        request_timeout_s=request_timeout_s,
        graceful_timeout_s=graceful_timeout_s,
        model_version=model_version,
        prediction_log=prediction_log,
        prediction_log_format=prediction_log_format,
        prediction_log_rotate_rows=prediction_log_rotate_rows,
        prediction_log_buffer_rows=prediction_log_buffer_rows,
        prediction_log_buffer_bytes=prediction_log_buffer_bytes,
        model_nice=model_nice,
        access_log=access_log,
        log_level=log_level,
    )
    run_server(model, settings)


@app.command()
def tune(
    data: Annotated[Path, typer.Argument(help="Labeled data: CSV, TSV, Parquet or JSONL.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Column holding the labels.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Fixed settings as key=value.")] = None,
    trials: Annotated[int | None, typer.Option(help="Finished trials to reach (the study's total).")] = None,
    time_budget: Annotated[str | None, typer.Option(help="Stop after this long: 90s, 30m, 2h.")] = None,
    space: Annotated[Path | None, typer.Option(help="Search space YAML (default: one for the task).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of fixed settings.")] = None,
    sampler: Annotated[str, typer.Option(help="tpe, random or grid.")] = "tpe",
    pruner: Annotated[str, typer.Option(help="median, halving or none.")] = "median",
    cv: Annotated[int | None, typer.Option(help="Score each trial by K-fold cross-validation.")] = None,
    cv_strategy: Annotated[str, typer.Option(help="stratified, group or time.")] = "stratified",
    group_column: Annotated[str | None, typer.Option(help="Groups for --cv-strategy group.")] = None,
    time_column: Annotated[str | None, typer.Option(help="Order for --cv-strategy time.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column (inferred if omitted).")] = None,
    storage: Annotated[
        str | None, typer.Option(help="Journal file or database URL (default: OUT/study.journal).")
    ] = None,
    study_name: Annotated[str, typer.Option(help="Study name in the storage.")] = "tunesmith",
    workers: Annotated[int, typer.Option(help="Processes sharing the study on this machine.")] = 1,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for results and plots.")] = Path("tuning"),
    refit: Annotated[bool, typer.Option(help="Refit the best settings on train + validation and save it.")] = False,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Search fine-tuning settings on DATA; write best_config.yaml, every trial and a report."""
    from tunesmith.search.tuner import tune as run_search
    from tunesmith.search.tuner import tune_summary

    base = _settings(config, overrides)
    if trials is None and time_budget is None and sampler != "grid":
        trials = 20
    result = run_search(
        str(data),
        target,
        base_params=base,
        space=str(space) if space else None,
        n_trials=trials,
        time_budget=time_budget,
        sampler=sampler,
        pruner=pruner,
        cv=cv,
        cv_strategy=cv_strategy,
        group_column=group_column,
        time_column=time_column,
        text_column=text_column,
        storage=storage,
        study_name=study_name,
        workers=workers,
        out_dir=output,
        refit=refit,
        seed=seed,
        progress=not quiet,
    )
    table = Table(title=f"best trials by {result.metric}")
    top = tune_summary(result, top=5)
    names = sorted({k for t in top for k in t["params"]})
    for col in ("trial", "value", *names):
        table.add_column(col, justify="right")
    for t in top:
        table.add_row(
            str(t["number"]),
            f"{t['value']:.4f}",
            *[f"{v:.3g}" if isinstance(v := t["params"].get(n), float) else str(v) for n in names],
        )
    console.print(table)
    saved = result.compute_saved_by_pruning
    console.print(
        f"{len(result.trials)} trials ({result.count('COMPLETE')} complete, {result.count('PRUNED')} pruned, "
        f"{result.count('FAIL')} failed) in {result.seconds:.0f} s"
        + (f"; pruning spared {100 * saved:.0f}% of the epochs" if saved is not None else ""),
        highlight=False,
    )
    console.print(f"best config: {output / 'best_config.yaml'}; report: {output / 'report.md'}")
    if result.model_dir:
        console.print(f"refitted model: {result.model_dir}")


SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


@app.command()
def inspect(
    data: Annotated[Path, typer.Argument(help="Labeled data: CSV, TSV, Parquet or JSONL.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Column holding the labels.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for report.md, report.json, plots.")] = Path(
        "inspection"
    ),
    text_column: Annotated[str | None, typer.Option(help="Text column (inferred if omitted).")] = None,
    task: Annotated[str | None, typer.Option(help="binary, multiclass or regression (inferred).")] = None,
    test: Annotated[Path | None, typer.Option(help="A test file to check for overlap with DATA.")] = None,
    split_column: Annotated[str | None, typer.Option(help="Column naming each row's split.")] = None,
    group_column: Annotated[str | None, typer.Option(help="Rows of a group belong together.")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone that embeds the texts.")] = "minilm-l6",
    label_errors: Annotated[str, typer.Option(help="Label-error search: fast, thorough or none.")] = "fast",
    folds: Annotated[int, typer.Option(help="Folds of the label-error search.")] = 5,
    threshold: Annotated[float, typer.Option(help="Cosine similarity of near-duplicate texts.")] = 0.95,
    max_length: Annotated[int, typer.Option(help="Tokens the model will keep per text.")] = 128,
    fail_on: Annotated[str, typer.Option(help="Exit 1 on findings of this severity: error, warning or never.")] = (
        "never"
    ),
    max_rows: Annotated[int | None, typer.Option(help="Inspect only the first N rows (a sample).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Report what is wrong with DATA: duplicates, conflicts, leakage, imbalance, label errors and more."""
    from tunesmith.data.inspect import inspect_data
    from tunesmith.errors import ConfigError

    if fail_on not in ("error", "warning", "never"):
        raise ConfigError(f"must be error, warning or never, got {fail_on!r}", key="fail_on")
    report = inspect_data(
        str(data),
        target,
        text_column=text_column,
        task=task,
        test=str(test) if test else None,
        split_column=split_column,
        group_column=group_column,
        backbone=backbone,
        label_errors=label_errors,  # type: ignore[arg-type]
        folds=folds,
        near_duplicate_threshold=threshold,
        max_length=max_length,
        max_rows=max_rows,
        progress=not quiet,
    )
    path = report.write(output)
    task_name = report.schema.task if report.schema else "?"
    console.print(f"{data.name}: {report.n_rows} rows, target {target!r} ({task_name})", highlight=False)
    if report.class_counts:
        ratio = report.imbalance_ratio
        shown = ", ".join(f"{k}: {v}" for k, v in list(report.class_counts.items())[:12])
        console.print(f"classes: {shown}" + (f" (imbalance ratio {ratio:.1f})" if ratio else ""), highlight=False)
    table = Table(title=f"{len(report.findings)} finding(s)")
    for col in ("severity", "finding", "examples (rows)", "suggested action"):
        table.add_column(col, overflow="fold")
    for f in report.findings:
        table.add_row(
            f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]", f.title, ", ".join(map(str, f.rows[:5])), f.action
        )
    if report.findings:
        console.print(table)
    else:
        console.print("no problems found")
    console.print(f"report: {path} (and report.json, plots/) in {report.timings.get('total', 0):.0f} s")
    worst = {"error": report.has_errors, "warning": bool(report.by_severity("warning")) or report.has_errors}
    if fail_on != "never" and worst[fail_on]:
        raise typer.Exit(1)


@app.command()
def clean(
    data: Annotated[Path, typer.Argument(help="Labeled data: CSV, TSV, Parquet or JSONL.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Column holding the labels.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Cleaned file to write (format by suffix).")],
    text_column: Annotated[str | None, typer.Option(help="Text column (inferred if omitted).")] = None,
    task: Annotated[str | None, typer.Option(help="binary, multiclass or regression (inferred).")] = None,
    duplicates: Annotated[str, typer.Option(help="drop or keep exact duplicates.")] = "drop",
    conflicts: Annotated[str, typer.Option(help="Same input, different labels: majority, drop or keep.")] = "majority",
    missing: Annotated[str, typer.Option(help="Missing feature values: keep, drop or impute.")] = "keep",
    label_errors: Annotated[str, typer.Option(help="Likely label errors: keep, drop or relabel.")] = "keep",
    label_error_mode: Annotated[str, typer.Option(help="fast or thorough.")] = "fast",
    label_error_fraction: Annotated[
        float, typer.Option(help="Act on only this worst-ranked fraction of the flagged rows.")
    ] = 1.0,
    folds: Annotated[int, typer.Option(help="Folds of the label-error search.")] = 5,
    balance: Annotated[str, typer.Option(help="none, oversample or undersample.")] = "none",
    backbone: Annotated[str, typer.Option(help="Backbone for the label-error search.")] = "minilm-l6",
    seed: Annotated[int, typer.Option(help="Seed for folds and resampling.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Write a cleaned copy of DATA and a JSON report (OUTPUT.clean.json) of every row dropped or changed."""
    from tunesmith.data.clean import check_policies, clean_data
    from tunesmith.data.io import write_table
    from tunesmith.errors import ArtifactError, ConfigError
    from tunesmith.runs.artifacts import atomic_write_json, json_safe

    # Checked before the (possibly long) label-error search, not after it.
    check_policies(duplicates=duplicates, conflicts=conflicts, missing=missing, label_errors=label_errors)
    if label_error_mode not in ("fast", "thorough"):
        raise ConfigError(f"must be fast or thorough, got {label_error_mode!r}", key="label_error_mode")
    if output.exists() and not overwrite:
        raise ArtifactError("the output file already exists", path=output, hint="Pass --overwrite or choose another -o")
    if output.resolve() == data.resolve():
        raise ArtifactError("the output would overwrite the input", path=output, hint="Choose another -o")
    cleaned, report = clean_data(
        str(data),
        target,
        text_column=text_column,
        task=task,
        duplicates=duplicates,  # type: ignore[arg-type]
        conflicts=conflicts,  # type: ignore[arg-type]
        missing=missing,  # type: ignore[arg-type]
        label_errors=label_errors,  # type: ignore[arg-type]
        label_error_mode=label_error_mode,  # type: ignore[arg-type]
        label_error_fraction=label_error_fraction,
        folds=folds,
        balance=balance,  # type: ignore[arg-type]
        backbone=backbone,
        seed=seed,
        progress=not quiet,
    )
    write_table(cleaned, output)
    report_path = output.with_name(output.name + ".clean.json")
    atomic_write_json(report_path, json_safe({"input": data.name, "output": output.name, **report.to_dict()}))
    console.print(report.summary(), highlight=False)
    console.print(f"wrote {len(cleaned)} rows to {output}; report: {report_path}")


@app.command()
def backbones() -> None:
    """List the registered backbones."""
    from tunesmith.backbones import list_backbones

    table = Table(title="backbones")
    table.add_column("name")
    table.add_column("description")
    for name, desc in list_backbones().items():
        table.add_row(name, desc)
    console.print(table)


@app.command()
def demo(
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 2,
    output: Annotated[Path, typer.Option(help="Where to write the model.")] = Path("runs/demo-model"),
) -> None:
    """Fine-tune minilm-l6 on Rotten Tomatoes reviews (fresh/rotten) and compare with baselines."""
    from tunesmith.datasets import rotten_tomatoes_split
    from tunesmith.estimator import FineTuner

    # Reviews and labels only: the movie title would let the model look reviews up by film.
    train_df, valid_df, test_df = (part[["text", "label"]] for part in rotten_tomatoes_split(seed=0))
    console.print(
        f"Rotten Tomatoes reviews: {len(train_df)} train / {len(valid_df)} valid / {len(test_df)} test "
        "(fresh vs rotten)"
    )
    ft = FineTuner(backbone="minilm-l6", epochs=epochs, run_name="demo")
    ft.fit(train_df, target="label", text_column="text", eval_set=valid_df, test_set=test_df)
    print_fit_summary(ft)
    ft.save(output, overwrite=True)
    sample = ["A gorgeous, moving film with a terrific cast.", "Tedious, shapeless and far too long."]
    for text, label in zip(sample, ft.predict(sample), strict=True):
        console.print(f"  {label:>6}  <- {text}")
    console.print(f"model saved to {output}; try: tunesmith predict {output} reviews.csv -o predictions.csv")


@app.command()
def personalize(
    base: Annotated[Path, typer.Argument(help="Shared model folder (a text classifier written by fit).")],
    data: Annotated[Path, typer.Argument(help="Labeled rows with a user column: CSV, TSV, Parquet or JSONL.")],
    user_column: Annotated[str, typer.Option(help="Column naming each row's user.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Adapter store folder (created or updated).")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="Label column (default: the model's).")] = None,
    segment_column: Annotated[str | None, typer.Option(help="Also one adapter per value of this column.")] = None,
    time_column: Annotated[str | None, typer.Option(help="Order of each user's rows (default: file order).")] = None,
    users: Annotated[str | None, typer.Option(help="Comma-separated users: update only their adapters.")] = None,
    min_rows: Annotated[int, typer.Option(help="Labeled rows a user needs for an adapter.")] = 10,
    valid_fraction: Annotated[float, typer.Option(help="Latest share of a user's rows that validates it.")] = 0.2,
    rank: Annotated[int, typer.Option(help="Rank of the adapters' low-rank update (head or LoRA).")] = 4,
    adapter_kind: Annotated[
        str | None,
        typer.Option(
            help="head (cheap, over cached features) or lora (on the encoder's last block); "
            "default: the store's kind, else head."
        ),
    ] = None,
    test: Annotated[
        Path | None, typer.Option(help="Held-out rows: per-user metrics, personalised vs shared, with plots.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Folder for the --test evaluation (default: STORE/report).")
    ] = None,
) -> None:
    """Train an adapter per user (and per segment) on top of a shared model.

    An adapter is kept only if it beats the shared model on the user's latest rows; users
    without one fall back to their segment's adapter, then to the shared model.
    """
    import pandas as pd

    from tunesmith.data.io import read_table
    from tunesmith.data.schema import require_column
    from tunesmith.errors import ConfigError
    from tunesmith.personalize.personalizer import SETTINGS_FILE, Personalizer, load_settings

    # An update keeps the store's kind: retraining some users of a LoRA store as head adapters
    # would leave a store of two kinds nobody asked for.
    stored = load_settings(output).get("adapter_kind", "head") if os.path.lexists(output / SETTINGS_FILE) else None
    if adapter_kind is not None and stored is not None and adapter_kind != stored:
        raise ConfigError(
            f"the store at {output} holds {stored} adapters, not {adapter_kind}",
            key="adapter_kind",
            hint="Write the other kind to a new store (-o)",
        )
    p = Personalizer(
        base,
        output,
        user_column=user_column,
        segment_column=segment_column,
        time_column=time_column,
        min_rows=min_rows,
        valid_fraction=valid_fraction,
        rank=rank,
        lora_rank=rank,
        adapter_kind=adapter_kind or stored or "head",
    )
    assert p.base.schema_ is not None
    wanted = p.base.schema_.target
    rows: Path | pd.DataFrame = data  # read by the personalizer, so its errors name the file
    if target is not None and target != wanted:
        frame = read_table(data)
        require_column(frame, target, "target", data)
        rows = frame.assign(**{wanted: frame[target]})
    chosen = [u.strip() for u in users.split(",") if u.strip()] if users else None
    p.fit(rows, users=chosen)
    absent = [u for u in chosen or [] if u not in p.report_["user"]]
    if absent:
        # Named but without a labeled row in the file: nothing to train on, their adapters are kept.
        console.print(f"[yellow]no labeled rows in {data.name} for: {', '.join(absent)} (adapters unchanged)[/yellow]")
    for level, trained in p.report_.items():
        if not trained:
            continue
        counts = pd.Series(
            [("used" if r.get("used") else "not better" if r["adapter"] else "too few rows") for r in trained.values()]
        ).value_counts()
        shown = ", ".join(f"{n} {what}" for what, n in counts.items())
        console.print(f"{level} adapters: {len(trained)} {level}(s): {shown}")
    if p.dropped_.get("unknown_or_missing_label"):
        console.print(f"[yellow]{p.dropped_['unknown_or_missing_label']} row(s) without a known label dropped[/yellow]")
    console.print(f"adapters saved to {output} ({len(p.store)} in the store)")
    if test is not None:
        from tunesmith.personalize.personalizer import write_report

        held_out: Path | pd.DataFrame = test
        if target is not None and target != wanted:
            frame = read_table(test)
            require_column(frame, target, "target", test)
            held_out = frame.assign(**{wanted: frame[target]})
        result = p.evaluate(held_out)
        paths = write_report(result, report or output / "report")
        groups = {"all users": result["summary"]["all"], **result["summary"]["by_train_rows"]}
        columns = ("auc_shared", "auc_personal", "accuracy_shared", "accuracy_personal")
        table = Table(title=f"per-user metrics on {test.name} (mean over users)")
        table.add_column("training rows")
        table.add_column("users", justify="right")
        for c in columns:
            table.add_column(c.replace("_", " "), justify="right")
        for name, values in groups.items():
            cells = [f"{values[c]:.4f}" if isinstance(values.get(c), float) else "-" for c in columns]
            table.add_row(str(name), str(values.get("users", 0)), *cells)
        console.print(table)
        console.print(f"report written to {paths['json'].parent} (evaluation.json, per_user.csv, plots)")


recommend_app = typer.Typer(
    help="Recommend items from an interaction log: fit, evaluate, predict top-k lists.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(recommend_app, name="recommend")

RECOMMEND_METRICS = ["hr@10", "ndcg@10", "recall@10", "mrr", "coverage@10"]


def _recommend_table(rec: Any) -> Table:
    """The stored test metrics of ``rec`` against its baselines, one row per model."""
    users = rec.split_.get("test_users", "?")
    table = Table(title=f"test: last positive interaction of {users} users, ranked against all unseen items")
    table.add_column("model")
    for c in RECOMMEND_METRICS:
        table.add_column(c, justify="right")
    rows = {rec.model: rec.test_metrics_.get("overall") or {}}
    rows.update({name: m.get("overall") or {} for name, m in rec.baseline_metrics_.items()})
    for name, m in rows.items():
        table.add_row(name, *[f"{m[c]:.4f}" if isinstance(m.get(c), (int, float)) else "-" for c in RECOMMEND_METRICS])
    return table


def _column_list(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


@recommend_app.command("fit")
def recommend_fit(
    log: Annotated[Path, typer.Argument(help="Interaction log: CSV, TSV, Parquet or JSONL.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write.")],
    user_column: Annotated[str, typer.Option(help="Column of user ids.")] = "user_id",
    item_column: Annotated[str, typer.Option(help="Column of item ids.")] = "item_id",
    time_column: Annotated[
        str, typer.Option(help="Column of event times (epoch seconds or date-times).")
    ] = "timestamp",
    rating_column: Annotated[str | None, typer.Option(help="Column of ratings.")] = None,
    min_rating: Annotated[float | None, typer.Option(help="Ratings at least this are the positives.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Column of 0/1 outcomes (1 = positive).")] = None,
    items: Annotated[Path | None, typer.Option(help="Item table for content vectors and cold items.")] = None,
    item_key: Annotated[str, typer.Option(help="Item id column of --items.")] = "item_id",
    item_text: Annotated[str | None, typer.Option(help="Columns of --items joined into the item text: a,b.")] = None,
    model: Annotated[str, typer.Option(help="sasrec, ease, bpr, itemknn or popularity.")] = "sasrec",
    pretrain: Annotated[bool, typer.Option("--pretrain/--no-pretrain", help="SASRec: pre-train first.")] = True,
    content_backbone: Annotated[str | None, typer.Option(help="Text backbone for item texts (minilm-l6).")] = None,
    k_core: Annotated[int | None, typer.Option(help="Keep users and items with at least K interactions.")] = None,
    epochs: Annotated[int | None, typer.Option(help="SASRec: most epochs per training phase.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int | None, typer.Option(help="Compute threads (default: all cores).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model folder.")] = False,
) -> None:
    """Train a recommender on LOG, score it against popularity on each user's last positive, save it."""
    from tunesmith.errors import ArtifactError
    from tunesmith.recsys.recommender import Recommender

    if output.exists() and not overwrite:
        # Say so now, not after the training run.
        raise ArtifactError(
            "the output folder already exists", path=output, hint="Pass --overwrite or choose another -o"
        )
    phase = {"epochs": epochs} if epochs is not None else None
    rec = Recommender(
        model,
        min_rating=min_rating,
        pretrain=pretrain,
        content_backbone=content_backbone,
        k_core=k_core,
        pretrain_settings=phase,
        finetune_settings=phase,
        seed=seed,
        threads=threads,
    )
    rec.fit(
        log,
        user=user_column,
        item=item_column,
        time=time_column,
        rating=rating_column,
        label=label_column,
        items=items,
        item_key=item_key,
        item_text=_column_list(item_text),
    )
    console.print(_recommend_table(rec))
    rec.save(output, overwrite=overwrite)
    console.print(f"model saved to {output}; try: tunesmith recommend predict {output} --users <id> -o recs.csv")


@recommend_app.command("evaluate")
def recommend_evaluate(
    model: Annotated[Path, typer.Argument(help="Model folder written by recommend fit.")],
) -> None:
    """Print the test metrics stored with a recommender, against popularity."""
    from tunesmith.recsys.recommender import Recommender

    console.print(_recommend_table(Recommender.load(model)))


@recommend_app.command("predict")
def recommend_predict(
    model: Annotated[Path, typer.Argument(help="Model folder written by recommend fit.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write: user, rank, item, score.")],
    users: Annotated[str | None, typer.Option(help="User ids, comma-separated.")] = None,
    users_file: Annotated[
        Path | None, typer.Option(help="Table of user ids (its first column, or --user-column).")
    ] = None,
    user_column: Annotated[str | None, typer.Option(help="Column of --users-file holding the ids.")] = None,
    k: Annotated[int, typer.Option("-k", help="Items per user.")] = 10,
) -> None:
    """Write the top K items for each user, one row per user and rank."""
    import pandas as pd

    from tunesmith.data.io import read_table, write_table
    from tunesmith.errors import ConfigError, DataError
    from tunesmith.recsys.recommender import Recommender

    if (users is None) == (users_file is None):
        raise ConfigError("give either --users or --users-file", key="users")
    if users is not None:
        ids = [u.strip() for u in users.split(",") if u.strip()]
    else:
        assert users_file is not None
        table = read_table(users_file)
        column = user_column or str(table.columns[0])
        if column not in table.columns:
            raise DataError(f"user column {column!r} not found", file=users_file, column=column)
        ids = table[column].astype(str).tolist()
    if not ids:
        raise DataError("no user ids given", hint="Pass --users u1,u2 or a non-empty --users-file")
    rec = Recommender.load(model)
    lists = rec.recommend_batch(users=ids, k=k)
    rows = [
        {"user": u, "rank": rank, "item": r["item"], "score": r["score"]}
        for u, recs in zip(ids, lists, strict=True)
        for rank, r in enumerate(recs, start=1)
    ]
    write_table(pd.DataFrame(rows, columns=["user", "rank", "item", "score"]), output)
    console.print(f"wrote {len(rows)} recommendations for {len(ids)} users to {output}")


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line and exit status 2."""
    import warnings

    # Warnings about the user's data read as one line, like errors, not as source locations.
    warnings.formatwarning = _one_line_warning
    try:
        code = app(args=argv, standalone_mode=False)
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        if isinstance(code, int) and code:
            sys.exit(code)
    except TunesmithError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # Files that cannot be written or read (permissions, full disk) are the user's to fix.
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        # typer may raise its own vendored copy of click's exceptions, so they are recognised by
        # what they do (show themselves, carry an exit code), not by click's classes.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
