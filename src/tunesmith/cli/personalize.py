"""``tunesmith personalize``: an adapter per user (and per segment) over a shared text model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunesmith.cli.common import app, console
from tunesmith.errors import ConfigError


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
