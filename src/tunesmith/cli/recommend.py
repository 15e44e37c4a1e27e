"""``tunesmith recommend fit|evaluate|predict``: recommenders trained on an interaction log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunesmith.cli.common import app, column_list, console
from tunesmith.errors import ArtifactError, ConfigError, DataError

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
        item_text=column_list(item_text),
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
