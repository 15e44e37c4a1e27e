"""What every command group of the CLI shares: the typer app, the consoles, settings from a
config file plus ``key=value`` overrides, the metrics table and the choice of model kind.
"""

from __future__ import annotations

import os

# Sleeping (not spinning) OpenMP threads: on a shared machine spin-waiting threads slow a
# training step several-fold. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.config import load_config_file, make_config, parse_override

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune pre-trained models on your labeled data, measured against baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

PRIMARY = {"binary": "accuracy", "multiclass": "accuracy", "regression": "rmse"}
COLUMNS = {
    "classification": ["accuracy", "f1_macro", "roc_auc", "log_loss"],
    "regression": ["mae", "rmse", "r2"],
}
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}

# Kinds `tunesmith fit` does not train itself, and the command that does.
FIT_ELSEWHERE = {
    "recommender": "tunesmith recommend fit LOG -o MODEL",
    "personalized": "tunesmith personalize BASE DATA --user-column COL -o STORE",
}


def text_settings(
    config: Path | None, overrides: list[str] | None, base: dict[str, Any] | None = None, **flags: Any
) -> dict[str, Any]:
    """Text estimator settings: the config file (or ``base``, a resumed run's), then ``key=value`` overrides,
    then flags; validated."""
    params: dict[str, Any] = dict(base) if base else (load_config_file(config) if config else {})
    for text in overrides or []:
        key, value = parse_override(text)
        params[key] = value
    params.update({k: v for k, v in flags.items() if v is not None})
    make_config(params)
    return params


def plain_settings(
    fields: Sequence[str],
    config: Path | None,
    overrides: list[str] | None,
    base: dict[str, Any] | None = None,
    **flags: Any,
) -> dict[str, Any]:
    """Settings of another kind (``fields``: the names its settings model accepts); the
    estimator's constructor validates them. ``base`` (a resumed run's settings) replaces the file."""
    if base:
        params: dict[str, Any] = {k: v for k, v in base.items() if k in fields}
    else:
        params = load_config_file(config, fields) if config else {}
    for text in overrides or []:
        key, value = parse_override(text, fields)
        params[key] = value
    params.update({k: v for k, v in flags.items() if v is not None})
    return params


def setting_names(estimator: type) -> list[str]:
    """The settings an estimator class accepts (its pydantic ``settings_model``'s fields)."""
    model = getattr(estimator, "settings_model", None)
    if model is not None:
        return list(model.model_fields)
    return list(estimator._param_names())  # type: ignore[attr-defined]


def metrics_table(title: str, rows: dict[str, dict[str, Any]], task: str) -> Table:
    """A rich table with models as rows and the task's metrics as columns."""
    cols = COLUMNS["regression" if task == "regression" else "classification"]
    table = Table(title=title)
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in rows.items():
        table.add_row(name, *[_cell(m, c) for c in cols])
    return table


def _cell(m: dict[str, Any], column: str) -> str:
    """``0.8420 [0.822, 0.861]``: the value and its 95% bootstrap interval when there is one."""
    value = m.get(column)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    ci = m.get(f"{column}_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"{value:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.4f}"


def print_uncertainty(ft: Any, names: dict[str, str] | None = None) -> None:
    """Each gain over a baseline with its paired 95% interval and verdict, then the warnings.

    A test split too small to tell models apart is said here, where the metrics are read,
    not only in the report.
    """
    found = getattr(ft, "uncertainty_", None) or {}
    for key, gain in (found.get("gains") or {}).items():
        if not isinstance(gain, dict) or not isinstance(gain.get("gain"), (int, float)):
            continue
        ci = gain.get("ci") or [None, None]
        interval = f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if None not in ci else ""
        console.print(
            f"  gain over {(names or {}).get(key, key)}: {gain['gain']:+.4f} {gain.get('metric', '')}{interval}, "
            f"{gain.get('verdict', '')}",
            highlight=False,
        )
    for warning in found.get("warnings") or []:
        console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)


def check_kind(kind: str, known: Sequence[str]) -> str:
    """``kind`` if it is ``auto`` or a registered kind, else a usage error listing them."""
    choices = ("auto", *known)
    if kind not in choices:
        raise typer.BadParameter(f"must be one of {', '.join(choices)}, got {kind!r}", param_hint="--kind")
    return kind


def detect_kind(
    data: Path, kind: str, image_column: str | None, backbone: str | None, target: str | None, known: Sequence[str]
) -> str:
    """Which kind a fit needs: image for a folder or an image-path column, tabular for a table without text."""
    if check_kind(kind, known) != "auto":
        return kind
    # Imported here: --help and the other commands must not load torch.
    from tunesmith.backbones import backbone_modality
    from tunesmith.data.io import read_table
    from tunesmith.data.schema import column_role

    if data.is_dir() or image_column or (backbone and backbone_modality(backbone) == "image"):
        return "image"
    df = read_table(data)
    roles = [column_role(df[c], str(c)) for c in df.columns if c != target]
    return "text" if "text" in roles else "tabular"


def print_cv(result: Any, k: int, strategy: str) -> None:
    """One line: the cross-validated mean and spread, and each fold's score."""
    scores = ", ".join(f"{v:.4f}" for v in result.scores)
    console.print(
        f"{k}-fold {strategy} cross-validation, {result.metric}: {result.mean:.4f} ± {result.std:.4f} "
        f"(folds: {scores})",
        highlight=False,
    )


def column_list(text: str | None) -> list[str] | None:
    """``a,b`` as ``["a", "b"]`` (None when not given)."""
    return [c.strip() for c in text.split(",") if c.strip()] if text else None
