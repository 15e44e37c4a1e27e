"""``tunesmith personalize``: an adapter per user (and per segment) over a shared text model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

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
            "--adapter-kind",
            "--kind",
            help="joint (user vectors learned across all users), head (cheap, over cached features), lora (on the "
            "encoder's last block), or several joined by commas (joint,head: each user gets the best on its "
            "validation rows); default: the store's kind, else head.",
        ),
    ] = None,
    item_column: Annotated[
        str | None,
        typer.Option(
            help="Column naming each row's item: joint adapters learn a vector per item (default: the store's)."
        ),
    ] = None,
    joint_rank: Annotated[
        int | None,
        typer.Option(help="Rank of the joint adapters' user and item vectors (default: the store's, else 16)."),
    ] = None,
    joint_l2: Annotated[
        list[str] | None,
        typer.Option(
            help="Penalty on joint vectors; repeat it or give a comma list to pick the best on validation rows "
            "(default: the store's, else 0.1)."
        ),
    ] = None,
    local_min_rows: Annotated[
        int | None,
        typer.Option(
            help="Rows a user needs for a head or LoRA adapter beside joint ones (default: the store's, else 50)."
        ),
    ] = None,
    feature_dtype: Annotated[
        str | None,
        typer.Option(
            help="Precision of the feature pass over training rows: float32 or bfloat16 (default: the store's)."
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
    without one fall back to their segment's adapter, then to the shared model. Joint adapters
    (--kind joint) learn every user's vector together; with --users, those users are folded in
    against the store's shared part and nobody else changes.
    """
    import pandas as pd

    from tunesmith.data.io import read_table
    from tunesmith.data.schema import require_column
    from tunesmith.personalize.personalizer import SETTINGS_FILE, Personalizer, load_settings
    from tunesmith.personalize.settings import adapter_kinds

    chosen = [u.strip() for u in users.split(",") if u.strip()] if users else None
    if adapter_kind is not None:
        adapter_kinds(adapter_kind)  # a misspelt kind is named before the store is compared with it
    settings = load_settings(output) if os.path.lexists(output / SETTINGS_FILE) else None
    # An update keeps the store's kind: retraining some users of a LoRA store as head adapters
    # would leave a store of two kinds nobody asked for. "joint,head" and "head,joint" are one kind.
    stored = settings.get("adapter_kind", "head") if settings is not None else None
    if (
        adapter_kind is not None
        and stored is not None
        and set(adapter_kinds(adapter_kind)) != set(adapter_kinds(stored))
    ):
        raise ConfigError(
            f"the store at {output} holds {stored} adapters, not {adapter_kind}",
            key="adapter_kind",
            hint="Write the other kind to a new store (-o)",
        )
    kind = adapter_kind or stored or "head"
    # The joint settings not given default to the store's: folded-in users must be placed as
    # the store's shared part was trained (the same items, penalty and rank).
    carried = _stored_joint_settings(settings)
    if (
        chosen is not None
        and settings is not None
        and "joint" in adapter_kinds(kind)
        and item_column is not None
        and item_column != settings.get("item_column")
    ):
        raise ConfigError(
            f"the store's joint adapters learned the items of column {settings.get('item_column')!r}, not "
            f"{item_column!r}; users are folded in against them",
            key="item_column",
            hint="Leave --item-column out to use the store's, or fit every user again without --users",
        )
    given: dict[str, Any] = {
        "item_column": item_column,
        "joint_rank": joint_rank,
        "joint_l2": _l2_values(joint_l2),
        "local_min_rows": local_min_rows,
        "feature_dtype": feature_dtype,
    }
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
        adapter_kind=kind,
        **{**carried, **{k: v for k, v in given.items() if v is not None}},
    )
    assert p.base.schema_ is not None
    wanted = p.base.schema_.target
    rows: Path | pd.DataFrame = data  # read by the personalizer, so its errors name the file
    if target is not None and target != wanted:
        frame = read_table(data)
        require_column(frame, target, "target", data)
        rows = frame.assign(**{wanted: frame[target]})
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


def _l2_values(values: list[str] | None) -> float | list[float] | None:
    """``--joint-l2`` given once or more, each a number or a comma list: one number, or the list to choose from."""
    if not values:
        return None
    out: list[float] = []
    for part in (v.strip() for text in values for v in text.split(",")):
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise ConfigError(f"must be a number or a comma list of numbers, got {part!r}", key="joint_l2") from None
    if not out:
        raise ConfigError("needs at least one number", key="joint_l2")
    return out[0] if len(out) == 1 else out


def _stored_joint_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The item column and joint adapter settings a store was built with (none for a new store)."""
    if settings is None:
        return {}
    from tunesmith.personalize.settings import store_params

    params = store_params(settings)
    names = ("item_column", "local_min_rows", "feature_dtype", "joint_rank", "joint_l2", "joint_steps", "joint_lr")
    return {k: params[k] for k in names if k in params and params[k] is not None}
