"""``tunesmith label``: label the rows a model learns most from, in a spreadsheet or on a local page.

Without ``--serve`` each call is one round: merge a filled-in batch (``--merge``), fit on every
label, and write the next batch (``--output``) with the model's guess for each row; the person
fills in the label column and merges it back. With ``--serve`` a page on 127.0.0.1 shows one row
at a time and retrains in the background between batches. Either way every answer goes to the
answers file (``DATA.labels.jsonl`` by default) and survives a crash; ``--export`` writes the
data with every label gathered. Row ids are 1-based data rows (the header is not counted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunesmith.cli.common import FIT_ELSEWHERE, app, column_list, console, detect_kind
from tunesmith.errors import ArtifactError, ConfigError, DataError

# The batch file's own columns; the target column (empty, to fill in) comes last.
ROW, KIND, GUESS, CONFIDENCE, GIVEN = "row", "kind", "guess", "confidence", "given_label"

# Cheap to refit: the backbone stays frozen and its features are computed once per process.
TEXT_SETTINGS: dict[str, Any] = {
    "strategy": "head_only", "epochs": 20, "lr": 1e-3, "valid_size": 0.0, "test_size": 0.0,
    "early_stopping": False, "baselines": False, "runs_dir": None, "progress": False,
}  # fmt: skip
IMAGE_SETTINGS: dict[str, Any] = {
    "strategy": "head_only", "epochs": 5, "valid_size": 0.0, "test_size": 0.0, "early_stopping": False,
    "baselines": False, "runs_dir": None, "progress": False,
}  # fmt: skip
# Small leaves: with a few dozen labels LightGBM's defaults learn nothing.
TABULAR_SETTINGS: dict[str, Any] = {
    "model": "lightgbm", "bagging_folds": 0, "n_estimators": 200, "num_leaves": 15, "min_child_samples": 3,
    "runs_dir": None, "progress": False,
}  # fmt: skip
# A saved model (--model) keeps its own choices (strategy, epochs, lr, ...) but not these, for whichever it
# has: every label gathered trains it (no held-out split, no early stop on one, no data check that drops
# rows: reviewing labels is the session's job), and a round fits nothing else and writes no run.
REFIT: dict[str, Any] = {
    "valid_size": 0.0, "test_size": 0.0, "split_column": None, "early_stopping": False, "baselines": False,
    "duplicates": "keep", "conflicts": "keep", "label_errors": "keep", "refit_full": True, "runs_dir": None,
    "progress": False,
}  # fmt: skip
PLAIN: dict[str, Any] = {"highlight": False, "soft_wrap": True}  # paths and commands stay whole, to copy


@app.command()
def label(
    data: Annotated[Path, typer.Argument(help="The rows to label: CSV, TSV, Parquet or JSONL.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Label column (empty where not labeled yet).")],
    model: Annotated[
        Path | None, typer.Option(help="A saved model folder whose settings are refitted each round.")
    ] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone of the default (head-only) model.")] = None,
    kind: Annotated[str, typer.Option(help="auto, text, image or tabular (auto: from the data).")] = "auto",
    classes: Annotated[str | None, typer.Option(help="The label choices, comma-separated (default: seen).")] = None,
    text_column: Annotated[str | None, typer.Option(help="Column shown as the row's text.")] = None,
    image_column: Annotated[str | None, typer.Option(help="Column of image paths (relative to --root).")] = None,
    root: Annotated[Path | None, typer.Option(help="Folder image paths are relative to (default: DATA's).")] = None,
    strategy: Annotated[
        str, typer.Option(help="random, least_confidence, margin, entropy, coreset or badge.")
    ] = "margin",
    batch_size: Annotated[int, typer.Option(help="Rows per batch (the model refits between batches).")] = 25,
    review_share: Annotated[float, typer.Option(help="Share of each batch for given labels the model doubts.")] = 0.2,
    eval_set: Annotated[Path | None, typer.Option(help="Labeled rows that score the learning curve.")] = None,
    answers: Annotated[Path | None, typer.Option(help="Answers file (default: DATA.labels.jsonl).")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Batch file to fill in (default: DATA.batch.csv).")
    ] = None,
    merge: Annotated[Path | None, typer.Option(help="A filled-in batch file to take in as answers.")] = None,
    export: Annotated[Path | None, typer.Option(help="Write DATA with every label gathered, and stop.")] = None,
    keep_going: Annotated[bool, typer.Option(help="Go on after the model stopped improving.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a batch file that was not merged.")] = False,
    serve: Annotated[bool, typer.Option(help="Label on a local web page instead of a batch file.")] = False,
    host: Annotated[str, typer.Option(help="Address of the page (--serve).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the page (--serve).")] = 8765,
    seed: Annotated[int, typer.Option(help="Seed of the order, folds and tie-breaks.")] = 0,
) -> None:
    """Pick the rows of DATA worth labeling next, and take the labels: batch files or a local page.

    Each round fits the model on every label so far and asks for the rows it is least sure
    of (--strategy), plus --review-share of rows whose given label it doubts. Without --serve
    the batch goes to --output: fill in the label column, then run again with --merge FILE.
    """
    # Imported here: --help and the other commands must not load the estimators (and torch).
    import pandas as pd

    from tunesmith.data.io import read_table
    from tunesmith.quality.labeling import LabelingSession

    if model is not None and backbone is not None:
        raise typer.BadParameter("cannot be combined with --model (the model folder has one)", param_hint="--backbone")
    pool = read_table(data)
    pool.index = pd.RangeIndex(1, len(pool) + 1)  # row ids are 1-based data rows, as every error names them
    answers_path = answers or data.with_name(data.stem + ".labels.jsonl")
    batch_path = output or data.with_name(data.stem + ".batch.csv")
    if not serve and export is None and batch_path.exists() and not overwrite and not _same(batch_path, merge):
        raise ArtifactError(
            "the batch file exists and was not merged", path=batch_path, hint="Merge it first (--merge), or --overwrite"
        )
    estimator = _estimator(data, model, backbone, kind, target, text_column, image_column, root)
    session = LabelingSession(
        estimator,
        pool,
        target=target,
        answers=answers_path,
        strategy=strategy,
        batch_size=batch_size,
        review_share=review_share,
        eval_set=read_table(eval_set) if eval_set is not None else None,
        classes=column_list(classes),
        seed=seed,
        text_column=text_column,
        image_column=image_column,
        root=root or data.parent,
        auto_retrain=serve,
        initial_fit=False,
    )
    with session:
        if merge is not None:
            taken, blank, same = merge_batch(session, merge)
            console.print(f"merged {taken} answer(s) from {merge} ({blank} left blank, {same} already given)", **PLAIN)
        if keep_going:
            session.keep_going()
        if export is not None:
            session.export(export)
            console.print(f"wrote {len(pool)} rows ({len(session.labels())} labeled) to {export}", **PLAIN)
            return
        session.retrain(background=False)
        _print_progress(session.progress())
        if serve:
            from tunesmith.serve.labeling_page import serve_labeling

            console.print(f"labeling page: http://{host}:{port}/ (Ctrl-C to stop); answers: {answers_path}", **PLAIN)
            serve_labeling(session, host=host, port=port)
            return
        rows = session.batch()
        if not rows:
            console.print(
                "no batch written: nothing left to ask" + (" (see above)" if session.progress()["stop_reason"] else "")
            )
            return
        _write_batch(rows, target, session.text_column, batch_path)
        console.print(
            f"wrote {len(rows)} rows to {batch_path}: fill in column {target!r} (blank: not answered), then run "
            f"tunesmith label {data} --target {target} --merge {batch_path}",
            **PLAIN,
        )


def merge_batch(session: Any, path: Path) -> tuple[int, int, int]:
    """Take a filled-in batch file in as answers: (answers taken, rows left blank, answers given before).

    A blank label cell is not an answer (the row stays unlabeled, not skipped); a row answered
    with the same label before (the file merged twice) is not written again.
    """
    from tunesmith.data.io import read_table
    from tunesmith.data.schema import missing_mask

    filled = read_table(path)
    target = session.target
    for column in (ROW, target):
        if column not in filled.columns:
            raise DataError(f"has no column {column!r}", file=path, hint="Merge the batch file this command wrote")
    empty = missing_mask(filled[target]).to_numpy(dtype=bool)
    taken = same = 0
    for number, (row, value) in enumerate(zip(filled[ROW], filled[target], strict=True), 1):
        if empty[number - 1]:
            continue
        try:
            recorded = session.answer(row, value, only_current=False)
        except DataError as exc:
            raise DataError(exc.message, file=path, row=number, column=target, hint=exc.hint) from None
        taken, same = taken + recorded, same + (not recorded)
    return taken, int(empty.sum()), same


def _same(a: Path, b: Path | None) -> bool:
    return b is not None and a.resolve() == b.resolve()


def _estimator(
    data: Path,
    model: Path | None,
    backbone: str | None,
    kind: str,
    target: str,
    text_column: str | None,
    image_column: str | None,
    root: Path | None,
) -> Any:
    """What each round refits: the saved model's settings, or a cheap default for the data's kind."""
    from sklearn.base import clone

    from tunesmith.estimators import registry
    from tunesmith.kinds import load
    from tunesmith.kinds import names as kind_names

    if model is not None:
        estimator = clone(load(model))
        params = estimator.get_params()
        # a kind that retrains on its validation rows when done (refit_full) needs them to pick its rounds
        keep = {"valid_size"} if "refit_full" in params else set()
        estimator.set_params(**{k: v for k, v in REFIT.items() if k in params and k not in keep})
        return estimator
    chosen = detect_kind(data, kind, image_column, backbone, target, kind_names())
    if chosen in FIT_ELSEWHERE:
        raise ConfigError(f"{chosen} models cannot label rows", key="kind", hint="Use text, image or tabular")
    named = {"backbone": backbone} if backbone is not None else {}
    if chosen == "text":
        return registry.estimator("text")(**TEXT_SETTINGS, **named, text_column=text_column)
    if chosen == "image":
        if image_column is None:
            raise typer.BadParameter(
                "is required to label images (the column of image paths)", param_hint="--image-column"
            )
        return registry.estimator("image")(
            **IMAGE_SETTINGS, **named, path_column=image_column, root=str(root or data.parent)
        )
    return registry.estimator("tabular")(**TABULAR_SETTINGS)


def _write_batch(rows: list[Any], target: str, text_column: str | None, path: Path) -> None:
    import pandas as pd

    from tunesmith.data.io import write_table

    records = []
    for item in rows:
        record = {ROW: item.row, KIND: item.kind, GUESS: item.guess, CONFIDENCE: item.confidence, GIVEN: item.given}
        shown = {**({text_column: item.text} if text_column is not None else {}), **item.fields}
        for name, value in shown.items():
            record[name if name not in record and name != target else f"data:{name}"] = value
        record[target] = None
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    frame[CONFIDENCE] = pd.to_numeric(frame[CONFIDENCE]).round(4)  # all None before the first fit
    write_table(frame, path)


def _print_progress(progress: dict[str, Any]) -> None:
    curve = ", ".join(f"{n}: {s:.3f}" for n, s in progress["curve"][-6:] if s is not None)
    console.print(
        f"{progress['labeled']} labeled ({progress['original']} given, {progress['answered']} answered, "
        f"{progress['relabeled']} relabeled), {progress['skipped']} skipped, {progress['unlabeled']} left; "
        f"{progress['fits']} fit(s)" + (f"; learning curve ({progress['score_on']}): {curve}" if curve else ""),
        **PLAIN,
    )
    if progress["cannot_fit"]:
        console.print(f"[yellow]no model fitted: {progress['cannot_fit']}[/yellow]", **PLAIN)
    if progress["stop_reason"]:
        console.print(
            f"[yellow]stopped: {progress['stop_reason']}; more labels are unlikely to help "
            "(--keep-going to go on)[/yellow]",
            **PLAIN,
        )
