"""``tunesmith backbones`` and ``demo``: the registered backbones, and a first fine-tuning run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunesmith.cli.common import app, console
from tunesmith.cli.fit import print_fit_summary


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
    from tunesmith.estimators.text import FineTuner

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
