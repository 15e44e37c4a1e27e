"""``tunesmith export`` and ``serve``: an ONNX graph checked against PyTorch, and the HTTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunesmith.cli.common import app, console
from tunesmith.errors import ConfigError


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
    from tunesmith.export.onnx import export_onnx

    if format != "onnx":
        raise ConfigError(f"must be onnx, got {format!r}", key="format")
    if quantize not in (None, "int8"):
        raise ConfigError(f"must be int8, got {quantize!r}", key="quantize")
    source: Any = model
    if backbone is not None:
        from tunesmith.kinds import load

        source = load(model, backbone=backbone)
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
    monitor_reference: Annotated[
        Path | None,
        typer.Option(help="Labeled reference data (model inputs and target): live drift gauges on /metrics."),
    ] = None,
    monitor_target: Annotated[
        str | None, typer.Option(help="Target column of the reference (default: the model's).")
    ] = None,
    monitor_window_rows: Annotated[
        int | None, typer.Option(help="Most recent rows each drift test compares (default 1000).")
    ] = None,
    monitor_min_rows: Annotated[
        int | None, typer.Option(help="Fewest rows a drift test runs on (default 200).")
    ] = None,
    monitor_interval: Annotated[float | None, typer.Option(help="Seconds between drift tests (default 30).")] = None,
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

    With --monitor-reference DATA (labeled rows the model is known to work on), /metrics also
    shows input and output drift and the accuracy estimated without labels, tested every
    --monitor-interval seconds over the last --monitor-window-rows predicted rows.

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
        monitor_reference=monitor_reference,
        monitor_target=monitor_target,
        monitor_window_rows=monitor_window_rows,
        monitor_min_rows=monitor_min_rows,
        monitor_interval_s=monitor_interval,
        model_nice=model_nice,
        access_log=access_log,
        log_level=log_level,
    )
    run_server(model, settings)
