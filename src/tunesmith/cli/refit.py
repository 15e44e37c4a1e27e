"""``tunesmith refit`` (continue a model on new data) and ``tunesmith loop`` (the whole cycle, once).

Exit status of ``loop``: 0 when the challenger was promoted (or accepted with
``promote: false``) or there was nothing to do, 3 when the gate rejected it, 2 for a user
error, as every command. The admin token for a server's hot reload is read from
``TUNESMITH_ADMIN_TOKEN``, never from the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunesmith.cli.common import app, console, plain_settings


@app.command()
def refit(
    model: Annotated[Path, typer.Argument(help="The fitted model folder to continue (it is not changed).")],
    new_data: Annotated[Path, typer.Argument(help="Labeled rows of the new period (CSV, Parquet, JSONL).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the refitted model.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Refit settings as key=value (epochs=2, replay_ratio=0.5, penalty_weight=0.1, ...)."),
    ] = None,
    replay: Annotated[
        Path | None, typer.Option(help="Old labeled rows replayed beside the new ones (best: the old train split).")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Label column (default: the model's).")] = None,
    method: Annotated[str | None, typer.Option(help="auto (default), naive, replay, l2sp, lora or wise.")] = None,
    base: Annotated[
        Path | None,
        typer.Option(help="The shared model folder, when MODEL is an adapter store of tunesmith personalize."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model folder at --output.")] = False,
) -> None:
    """Continue MODEL on NEW_DATA without forgetting what it knew; save the copy to --output.

    The default method replays old rows (with --replay), pulls the weights toward the current
    ones (L2-SP) and interpolates with them (WiSE-FT). Judge the copy with `tunesmith gate`.
    An adapter store (tunesmith personalize) needs its shared model: --base MODEL.
    """
    from tunesmith.config import validate_settings
    from tunesmith.errors import ArtifactError, ConfigError
    from tunesmith.kinds import load
    from tunesmith.personalize.settings import SETTINGS_FILE
    from tunesmith.train.continual import RefitSettings

    settings = plain_settings(list(RefitSettings.model_fields), None, overrides, method=method)
    validate_settings(RefitSettings, settings)  # a bad setting fails before the model loads
    if (output.exists() or output.is_symlink()) and not overwrite:
        # Refused before training, not after it.
        raise ArtifactError("already exists", path=output, hint="Pass --overwrite or choose another folder")
    if base is None and (model / SETTINGS_FILE).is_file():
        raise ConfigError(
            f"{model} is an adapter store of tunesmith personalize; it refits over its shared model",
            key="base",
            hint="Give the shared model folder: --base MODEL",
        )
    champion = load(model) if base is None else load(model, base=base)
    challenger = champion.refit(new_data, replay=replay, target=target, **settings)
    saved = challenger.save(output, overwrite=overwrite)
    print_refit_summary(getattr(challenger, "refit_info_", None) or {}, saved)


def print_refit_summary(info: dict[str, Any], saved: Path) -> None:
    """Method, rows, alpha and seconds of a refit, and where the model went."""
    plan = info.get("plan") or {}
    rows = info.get("rows") or {}
    parts = [f"method {plan.get('method', '?')}"]
    if rows:
        parts.append(
            f"{rows.get('new_train', 0)} new + {rows.get('replay_train', 0)} replayed rows trained, "
            f"{rows.get('new_valid', 0)} new + {rows.get('old_valid', 0)} old held out"
        )
    alpha = info.get("alpha")
    if isinstance(alpha, (int, float)):
        parts.append(f"alpha {alpha:g}")
    seconds = info.get("seconds")
    if isinstance(seconds, (int, float)):
        parts.append(f"{seconds:.1f} s")
    console.print("refit: " + ", ".join(parts), highlight=False, markup=False, soft_wrap=True)
    console.print(f"saved to {saved}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def loop(
    config: Annotated[Path, typer.Argument(help="Loop config (YAML): registry, new data, gate, ... (examples/loop/).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON too.")] = False,
) -> None:
    """Run the refit loop once: monitor, refit the champion, register, gate, promote.

    Safe to repeat and to kill: a run with the same data, settings and champion only reports
    the earlier outcome, and a killed run goes on from its last finished step. Exit status:
    0 promoted or nothing to do, 3 rejected by the gate, 2 a user error.
    """
    import json

    from tunesmith.refit import run_loop
    from tunesmith.serve.swap import promote

    result = run_loop(
        config, promoter=promote, log=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True)
    )
    decision = result.decision or {}
    for name in ("new_test", "old_test"):
        split = decision.get(name)
        if isinstance(split, dict) and isinstance(split.get("gain"), (int, float)):
            lo, hi = split.get("interval") or [float("nan"), float("nan")]
            console.print(
                f"  {name} ({split.get('rows')} rows), {decision.get('metric')}: champion {split['champion']:.4f}, "
                f"challenger {split['challenger']:.4f}, gain {split['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}]",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    colour = {"promoted": "green", "accepted": "green", "rejected": "red"}.get(result.outcome, "yellow")
    again = " (done before; nothing to do)" if result.repeated else ""
    version = f" version {result.version}" if result.version is not None else ""
    console.print(
        f"[{colour}]{result.outcome}[/{colour}]{version}{again}; state: {result.state_path}",
        highlight=False,
        soft_wrap=True,
    )
    if as_json:
        console.print_json(json.dumps(result.to_dict(), default=str))
    if result.exit_code:
        raise typer.Exit(result.exit_code)
