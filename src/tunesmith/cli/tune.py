"""``tunesmith tune``: search the settings of any kind of model (Optuna), with pruning, storage and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunesmith.cli.common import app, console, detect_kind, plain_settings, setting_names, text_settings


@app.command()
def tune(
    data: Annotated[
        Path, typer.Argument(help="Labeled data: CSV, TSV, Parquet or JSONL (or a folder of images, one per class).")
    ],
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Column holding the labels (image folders: not needed).")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Fixed settings as key=value.")] = None,
    kind: Annotated[
        str,
        typer.Option(help="auto, or a registered kind: text, image, tabular or recommender (auto: from the data)."),
    ] = "auto",
    trials: Annotated[int | None, typer.Option(help="Finished trials to reach (the study's total).")] = None,
    time_budget: Annotated[str | None, typer.Option(help="Stop after this long: 90s, 30m, 2h.")] = None,
    epoch_budget: Annotated[
        int | None, typer.Option(help="Stop once the trials trained this many epochs in all (pruned ones count).")
    ] = None,
    space: Annotated[Path | None, typer.Option(help="Search space YAML (default: one for the task).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of fixed settings.")] = None,
    sampler: Annotated[str, typer.Option(help="tpe, random or grid.")] = "tpe",
    pruner: Annotated[str, typer.Option(help="median, halving or none.")] = "median",
    startup_trials: Annotated[
        int | None, typer.Option(help="Random trials before TPE models the results (default 10).")
    ] = None,
    cv: Annotated[int | None, typer.Option(help="Score each trial by K-fold cross-validation.")] = None,
    cv_strategy: Annotated[str, typer.Option(help="stratified, group or time.")] = "stratified",
    group_column: Annotated[str | None, typer.Option(help="Groups for --cv-strategy group.")] = None,
    time_column: Annotated[str | None, typer.Option(help="Order for --cv-strategy time.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column (inferred if omitted).")] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Journal file or database URL, e.g. postgresql://user:pass@host/db: run the same command on "
            "several machines with one URL to share the study (default: OUT/study.journal)."
        ),
    ] = None,
    study_name: Annotated[str, typer.Option(help="Study name in the storage.")] = "tunesmith",
    workers: Annotated[
        int, typer.Option(help="Processes sharing the study on this machine (each gets cores / workers threads).")
    ] = 1,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for results and plots.")] = Path("tuning"),
    refit: Annotated[bool, typer.Option(help="Refit the best settings on train + validation and save it.")] = False,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Search the settings of a model of any kind on DATA; write best_config.yaml, every trial and a report.

    Text, image and tabular models are scored on validation (tabular: boosting rounds are the
    pruning steps), recommenders by validation NDCG; --cv K scores each trial by K folds.
    """
    # Imported here: --help and the other commands must not load every estimator (and torch).
    from tunesmith.estimators import registry
    from tunesmith.kinds import names as kind_names
    from tunesmith.search.tuner import tune as run_search
    from tunesmith.search.tuner import tune_summary

    chosen = detect_kind(data, kind, None, None, target, kind_names())
    if chosen == "text":
        base = text_settings(config, overrides)
    else:
        base = plain_settings(setting_names(registry.estimator(chosen)), config, overrides)
    if target is None and chosen in ("text", "tabular"):
        raise typer.BadParameter("is required for a table (the column holding the labels)", param_hint="--target")
    if trials is None and time_budget is None and epoch_budget is None and sampler != "grid":
        trials = 20
    result = run_search(
        str(data),
        target,
        kind=chosen,
        base_params=base,
        space=str(space) if space else None,
        n_trials=trials,
        time_budget=time_budget,
        epoch_budget=epoch_budget,
        sampler=sampler,
        pruner=pruner,
        startup_trials=startup_trials,
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
