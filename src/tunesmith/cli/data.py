"""``tunesmith inspect`` and ``clean``: what is wrong with a data set, and a cleaned copy of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunesmith.cli.common import SEVERITY_STYLE, app, console
from tunesmith.errors import ArtifactError, ConfigError


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
    # Imported here: --help and the other commands must not load the estimators (and torch).
    from tunesmith.quality import inspect_data

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
    from tunesmith.data.clean import check_policies
    from tunesmith.data.io import write_table
    from tunesmith.quality import clean_data
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
