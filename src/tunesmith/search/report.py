"""Files a search leaves behind: trials as CSV and JSONL, plots, ``report.md``, ``result.json``."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.runs.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text, json_safe
from tunesmith.search.study import tune_summary

if TYPE_CHECKING:
    import optuna

    from tunesmith.search.study import TuneResult


def _save_axes(ax: Any, path: Path) -> Path | None:
    import io

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 7.0), max(fig.get_size_inches()[1], 4.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """Optimisation history, parameter importances and parallel coordinates as PNG files.

    A plot that cannot be drawn (too few finished trials, a single parameter) is left out.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    images: dict[str, str] = {}
    plots: dict[str, tuple[Callable[..., Any], int]] = {
        "history": (ovm.plot_optimization_history, 1),
        "importances": (ovm.plot_param_importances, 2),
        "parallel": (ovm.plot_parallel_coordinate, 2),
    }
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, (fn, needed) in plots.items():
        if len(done) < needed:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            _save_axes(ax, out / "plots" / f"{name}.png")
            images[name] = f"plots/{name}.png"
        except (ValueError, RuntimeError, ZeroDivisionError, optuna.exceptions.OptunaError):
            continue
    return images


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def render_report(result: TuneResult, images: dict[str, str]) -> str:
    """The search report as Markdown."""
    d = result.details
    saved = result.compute_saved_by_pruning
    lines = [
        f"# Hyperparameter search: {result.study_name}",
        "",
        f"- metric: `{result.metric}` ({result.direction})",
        f"- sampler: {d.get('sampler')}, pruner: {d.get('pruner')}"
        + (f", {d['cv']}-fold {d.get('cv_strategy')} cross-validation" if d.get("cv") else ""),
        f"- trials: {len(result.trials)} ({result.count('COMPLETE')} complete, {result.count('PRUNED')} pruned, "
        f"{result.count('FAIL')} failed)",
        f"- epochs trained: {result.epochs_run}"
        + (f"; pruning spared {100 * saved:.0f}% of the epochs budgeted" if saved is not None else ""),
        f"- time: {result.seconds:.0f} s; storage: `{result.storage}`",
        "",
        "## Best",
        "",
        f"{result.metric} = {_cell(result.best_value)}",
        "",
        "| setting | value |",
        "| --- | --- |",
        *[f"| `{k}` | {_cell(v)} |" for k, v in result.best_params.items()],
        "",
        "`best_config.yaml` holds every setting: `tunesmith fit DATA --target COL --config best_config.yaml`.",
        "",
    ]
    top = tune_summary(result)
    if top:
        names = sorted({k for t in top for k in t["params"]})
        lines += ["## Top trials", "", "| trial | value | " + " | ".join(names) + " |"]
        lines += ["|" + " --- |" * (len(names) + 2)]
        for t in top:
            lines.append(
                f"| {t['number']} | {_cell(t['value'])} | "
                + " | ".join(_cell(t["params"].get(n)) for n in names)
                + " |"
            )
        lines.append("")
    for key, title in (
        ("history", "Optimisation history"),
        ("importances", "Parameter importances"),
        ("parallel", "Parallel coordinates"),
    ):
        if key in images:
            lines += [f"## {title}", "", f"![{title}]({images[key]})", ""]
    lines += ["Every trial, with its settings, epochs and time: `trials.csv`, `trials.jsonl`.", ""]
    return "\n".join(lines)


def write_search_report(result: TuneResult, study: optuna.Study) -> Path:
    """Write trials, plots, ``result.json`` and ``report.md`` into ``result.out_dir``."""
    import pandas as pd

    out = result.out_dir
    assert out is not None
    rows = [
        {
            "number": t["number"],
            "state": t["state"],
            "value": t["value"],
            "epochs_run": t["epochs_run"],
            "seconds": t["seconds"],
            **{f"param_{k}": v for k, v in t["params"].items()},
        }
        for t in result.trials
    ]
    atomic_write_text(out / "trials.csv", pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(out / "trials.jsonl", "".join(json.dumps(json_safe(t)) + "\n" for t in result.trials))
    images = write_plots(study, out)
    data = result.to_dict()
    data["plots"] = images
    atomic_write_json(out / "result.json", json_safe(data))
    return atomic_write_text(out / "report.md", render_report(result, images))
