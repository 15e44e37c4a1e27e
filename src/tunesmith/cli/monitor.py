"""``tunesmith monitor``: drift, estimated performance and alerts of a served model, as a report.

Exit status: 0 when nothing moved, 3 when inputs or outputs drifted but performance holds,
4 when performance (estimated, or measured where labels arrived) fell below its threshold,
2 for a user error, as every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.common import app, console, plain_settings


@app.command()
def monitor(
    model: Annotated[str, typer.Argument(help="Model folder (or 'none' to monitor scores already in the data).")],
    reference: Annotated[
        Path, typer.Option("--reference", "-r", help="Labeled data the model works on (best: its test split).")
    ],
    current: Annotated[
        Path, typer.Option("--current", "-c", help="Prediction log of tunesmith serve (SQLite/Parquet) or a data file.")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Settings as key=value (window_rows=500, alpha=0.01, ...).")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels that arrived, joined by --key.")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Target column (default: the model's).")] = None,
    key: Annotated[str | None, typer.Option(help="Column joining labels to rows (log: request_id).")] = None,
    proba: Annotated[
        str | None, typer.Option(help="Probability column(s), comma-separated, when the data holds the scores.")
    ] = None,
    prediction: Annotated[str | None, typer.Option(help="Predicted label (or value) column in the data.")] = None,
    positive: Annotated[
        str | None, typer.Option(help="The class a single --proba column is for (unless labels are 0/1).")
    ] = None,
    model_version: Annotated[str | None, typer.Option(help="Model version of the log to monitor.")] = None,
    window_rows: Annotated[int | None, typer.Option(help="Rows per window (default 1000).")] = None,
    window_time: Annotated[str | None, typer.Option(help="Time per window instead: 1h, 1D, 7D.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for report.html, report.json, plots.")] = Path(
        "monitoring"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Compare CURRENT data (a prediction log or a file) with REFERENCE data for MODEL, window by window.

    Writes an HTML report with a plot per signal and a JSON with every figure. Exit status:
    0 fine, 3 drift (inputs or outputs moved, performance holds), 4 alert (performance fell).
    """
    from tunesmith.monitor import MonitorSettings
    from tunesmith.monitor import monitor as run_monitor

    settings = plain_settings(list(MonitorSettings.model_fields), None, overrides)
    if window_rows is not None:
        settings["window_rows"] = window_rows
    if window_time is not None:
        settings["window_time"] = window_time
    result = run_monitor(
        None if model.lower() == "none" else model,
        reference,
        current,
        labels=labels,
        target=target,
        key=key,
        proba=[p.strip() for p in proba.split(",")] if proba else None,
        prediction=prediction,
        positive=positive,
        model_version=model_version,
        settings=settings,
        progress_bar=not quiet,
    )
    paths = result.save(output)
    r = result.result
    colour = {"ok": "green", "drift": "yellow", "alert": "red"}[result.status]
    console.print(
        f"[{colour}]{result.status}[/{colour}]: {len(r['windows'])} windows of {r['current']['window']}, "
        f"{sum(w['drift'] for w in r['windows'])} with drift, {len(r['alerts'])} performance alerts",
        highlight=False,
        emoji=False,
    )
    for alert in r["alerts"][:10]:
        console.print(f"  alert {alert['label']}: {alert['message']}", highlight=False, emoji=False, markup=False)
    for change in r["top_changes"][:5]:
        console.print(f"  changed: {change['signal']}: {change['summary']}", highlight=False, emoji=False, markup=False)
    for warning in r["warnings"]:
        console.print(f"  warning: {warning}", highlight=False, emoji=False, markup=False)
    console.print(f"report: {paths['html']}", highlight=False, emoji=False, markup=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)
