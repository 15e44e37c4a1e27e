"""``tunesmith register | versions | promote | rollback | gate``: a model registry and safe swaps.

REGISTRY is a folder or an MLflow registered model, ``mlflow:<tracking URI>#<model name>``
(``mlflow:sqlite:///mlflow.db#reviews``; needs the ``mlflow`` extra). The admin token for a
running server's hot reload is read from ``TUNESMITH_ADMIN_TOKEN``, never from a flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunesmith.cli.common import app, console

# A str, not a Path: Path would fold the slashes of an MLflow tracking URI.
RegistryArg = Annotated[
    str, typer.Argument(help="Registry folder, or mlflow:TRACKING_URI#MODEL_NAME.", show_default=False)
]


@app.command()
def register(
    registry: Annotated[
        str, typer.Argument(help="Registry folder (created on first use), or mlflow:TRACKING_URI#MODEL_NAME.")
    ],
    model: Annotated[Path, typer.Argument(help="Model folder to copy in as the next version.")],
    note: Annotated[list[str] | None, typer.Option(help="Notes as key=value, kept with the version.")] = None,
) -> None:
    """Copy MODEL into REGISTRY as its next version (a candidate)."""
    from tunesmith.errors import ConfigError
    from tunesmith.runs.mlflow_registry import open_registry

    bad = next((n for n in note or [] if "=" not in n), None)
    if bad is not None:
        raise ConfigError(f"a note is key=value, got {bad!r}", key="note")
    notes = {n.partition("=")[0]: n.partition("=")[2] for n in note or []}
    v = open_registry(registry).register(model, notes=notes)
    console.print(f"registered version {v.number} ({v.model_version}) in {registry}", highlight=False)


@app.command()
def versions(registry: RegistryArg) -> None:
    """List the versions of REGISTRY, the champion marked."""
    from tunesmith.runs.mlflow_registry import open_registry

    reg = open_registry(registry)
    table = Table(title=str(registry))
    for col in ("version", "status", "weights", "created", "source"):
        table.add_column(col)
    for v in reg.versions():
        table.add_row(str(v.number), v.status, v.model_version, v.created, v.source or "")
    console.print(table)


@app.command()
def promote(
    registry: RegistryArg,
    version: Annotated[int | None, typer.Argument(help="Version to promote (default: the newest candidate).")] = None,
    server: Annotated[
        str | None, typer.Option(help="A running tunesmith server to switch (http://127.0.0.1:8000).")
    ] = None,
    server_root: Annotated[
        str | None, typer.Option(help="Where the server sees REGISTRY, if not at the same path.")
    ] = None,
) -> None:
    """Make VERSION the champion of REGISTRY and, with --server, serve it through hot reload."""
    from tunesmith.serve.swap import promote as run_promote

    v, answer = run_promote(registry, version, server=server, server_root=server_root)
    console.print(f"version {v.number} ({v.model_version}) is the champion", highlight=False)
    if answer is not None:
        console.print(
            f"{server} switched {answer.get('previous_version')} -> {answer.get('model_version')} "
            f"in {answer.get('seconds')} s",
            highlight=False,
        )


@app.command()
def rollback(
    registry: RegistryArg,
    server: Annotated[str | None, typer.Option(help="A running tunesmith server to switch back.")] = None,
    server_root: Annotated[
        str | None, typer.Option(help="Where the server sees REGISTRY, if not at the same path.")
    ] = None,
) -> None:
    """Make the previous champion of REGISTRY the champion again and, with --server, serve it."""
    from tunesmith.serve.swap import rollback as run_rollback

    v, answer = run_rollback(registry, server=server, server_root=server_root)
    console.print(f"version {v.number} ({v.model_version}) is the champion again", highlight=False)
    if answer is not None:
        console.print(f"{server} serves {answer.get('model_version')} again", highlight=False)


@app.command()
def gate(
    registry: RegistryArg,
    version: Annotated[int, typer.Argument(help="The challenger: a version of REGISTRY.")],
    new_test: Annotated[Path, typer.Option(help="Labeled rows of the new period, not trained on.")],
    old_test: Annotated[Path, typer.Option(help="The old test split.")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="Label column (default: the model's).")] = None,
    margin: Annotated[float, typer.Option(help="Largest loss on the old split (0.01: one accuracy point).")] = 0.01,
) -> None:
    """Judge VERSION against the champion: better on --new-test, no worse than --margin on --old-test.

    The decision goes into the version's record; a rejected version is kept but never promoted.
    Exit status 0 when it passes, 3 when it is rejected.
    """
    from tunesmith.refit import gate_version
    from tunesmith.runs.mlflow_registry import open_registry

    decision, v = gate_version(open_registry(registry), version, new_test, old_test, target=target, margin=margin)
    for name, split in (("new", decision.new), ("old", decision.old)):
        lo, hi = split["interval"]
        console.print(
            f"{name} test ({split['rows']} rows), {decision.metric}: champion {split['champion']:.4f}, "
            f"challenger {split['challenger']:.4f}, gain {split['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}]",
            highlight=False,
        )
    verdict = "passes" if decision.accepted else "rejected"
    console.print(f"version {v.number} {verdict}: {'; '.join(decision.reasons)}", highlight=False)
    if not decision.accepted:
        raise typer.Exit(3)
