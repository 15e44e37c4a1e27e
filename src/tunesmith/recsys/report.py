"""What a recommender fit leaves for people to read: the card, its plots, and the run record.

The card (``card.md`` in a model folder) doubles as the run record's ``report.md``. The run
record (:class:`~tunesmith.runs.record.RunRecord`) holds what every kind's record holds:
resolved config, data SHA-256 and rows per split, dropped rows by reason, environment,
per-epoch metrics, plots and the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.io import file_sha256, frame_sha256
from tunesmith.evaluate.intervals import add_intervals, bootstrap_mean_intervals
from tunesmith.runs.plots import plot_learning_curves, plot_metric_by_group, plot_ranking_at_k
from tunesmith.runs.record import RunRecord

RANKING_PLOT = "ranking_at_k.png"
HISTORY_PLOT = "ndcg_by_history.png"
CURVES_PLOT = "learning_curves.png"
CARD_KEYS = ("hr@10", "ndcg@10", "recall@10", "mrr", "coverage@10")
PRIMARY = "ndcg@10"
"""The metric the gain over a baseline is judged on."""


def dict_or(value: Any, default: Any) -> Any:
    """``value`` if it is a dict, else ``default`` (metadata read from a folder is shown, never trusted)."""
    return value if isinstance(value, dict) else default


def markdown_table(rows: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """A Markdown table of one row per model, four decimals, ``-`` where a value is missing."""
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, m in rows.items():
        cells = [_cell(m, k) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _cell(m: Mapping[str, Any], key: str) -> str:
    """``0.1234``, with its 95% interval ``[0.1100, 0.1400]`` when ``<key>_ci`` holds one."""
    value = m.get(key)
    if not isinstance(value, (int, float)):
        return "-"
    ci = m.get(f"{key}_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"
    return f"{value:.4f}"


def add_test_intervals(
    test_metrics: dict[str, Any],
    baseline_metrics: dict[str, Any],
    per_user: Mapping[str, np.ndarray],
    baseline_per_user: Mapping[str, Mapping[str, np.ndarray]],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """95% bootstrap intervals over test users, added in place, and the gains over each baseline.

    Every per-user metric of ``test_metrics["overall"]`` (and of each baseline's) gets
    ``<metric>_ci``; the users are resampled (1,000 times, fixed seed) and the baselines scored
    on the same resamples, so the gain on NDCG@10 gets a paired interval and a verdict
    ("larger than the noise" / "within the noise"). ``test_metrics["uncertainty"]`` keeps the
    gains and warnings (fewer than 30 test users is called out), which the card shows.

    Returns:
        The bootstrap summary of :func:`~tunesmith.evaluate.intervals.bootstrap_mean_intervals`.
    """
    values = {k: np.asarray(v, dtype=np.float64) for k, v in per_user.items()}
    if not values or not len(next(iter(values.values()))):
        return {}
    summary = bootstrap_mean_intervals(
        values,
        baselines={k: dict(v) for k, v in baseline_per_user.items()},
        primary=PRIMARY if PRIMARY in values else None,
        unit="users",
        seed=seed,
    )
    test_metrics["overall"] = add_intervals(dict_or(test_metrics.get("overall"), {}), summary["metrics"])
    for key, cis in summary["baselines"].items():
        if isinstance(baseline_metrics.get(key), dict):
            baseline_metrics[key]["overall"] = add_intervals(dict_or(baseline_metrics[key].get("overall"), {}), cis)
    test_metrics["uncertainty"] = {
        "method": summary["method"],
        "confidence": summary["confidence"],
        "n_resamples": summary["n_resamples"],
        "seed": summary["seed"],
        "n_users": summary["n"],
        "gains": summary["gains"],
        "warnings": summary["warnings"],
    }
    return summary


def _uncertainty_lines(test_metrics: Mapping[str, Any], model: str) -> tuple[list[str], list[str]]:
    """The warnings that lead the card, and its gain-over-baselines section."""
    found = dict_or(test_metrics.get("uncertainty"), {})
    warnings = [f"> **Warning:** {w}" for w in found.get("warnings") or [] if isinstance(w, str)]
    if warnings:
        warnings.append("")
    gains = dict_or(found.get("gains"), {})
    lines: list[str] = []
    for name, g in gains.items():
        g = dict_or(g, {})
        ci = g.get("ci")
        if not (isinstance(g.get("gain"), (int, float)) and isinstance(ci, (list, tuple)) and len(ci) == 2):
            continue
        lines.append(
            f"- vs {name}: **{g['gain']:+.4f}** {g.get('metric', PRIMARY)}; 95% interval "
            f"[{ci[0]:+.4f}, {ci[1]:+.4f}]: {g.get('verdict')} (paired bootstrap over test users)"
        )
    if lines:
        lines = ["## Gain over baselines", "", f"{model} minus baseline (higher is better):", "", *lines, ""]
    return warnings, lines


def card(
    model: str,
    test_metrics: Mapping[str, Any],
    baseline_metrics: Mapping[str, Any],
    *,
    n_users: int,
    n_items: int,
    data_report: Mapping[str, Any],
    split: Mapping[str, Any],
    figures: bool = False,
) -> str:
    """A short Markdown report: data, split, and test metrics against the baselines."""
    # .get: a loaded model's metrics are whatever its folder recorded (possibly nothing).
    rows = {model: dict_or(test_metrics.get("overall"), {})}
    rows.update({name: dict_or(dict_or(m, {}).get("overall"), {}) for name, m in baseline_metrics.items()})
    warnings, gains = _uncertainty_lines(test_metrics, model)
    has_ci = any(f"{k}_ci" in m for m in rows.values() for k in CARD_KEYS)
    lines = [
        f"# Recommender: {model}",
        "",
        *warnings,
        f"{n_users} users, {n_items} items, {data_report.get('rows_out', '?')} interactions.",
        f"Test: each user's last positive interaction ({split.get('test_users', '?')} users), ranked "
        "against every item the user has not interacted with.",
        "",
        *markdown_table(rows, CARD_KEYS),
        "",
        *(["Brackets: 95% bootstrap confidence interval over the test users.", ""] if has_ci else []),
        *gains,
        "The saved model is the one trained on the split (not refitted on the held-out interactions).",
        "",
    ]
    if figures:
        lines += [
            "## Figures",
            "",
            "Hit rate and NDCG on the test interactions at list lengths k = 5, 10 and 20, "
            "for this model and the baselines:",
            "",
            f"![Ranking quality by cut-off k]({RANKING_PLOT})",
            "",
            "NDCG@10 by how many distinct items are in a user's history (user count under each group; "
            "empty groups left out), for this model and the baselines:",
            "",
            f"![NDCG@10 by history length]({HISTORY_PLOT})",
            "",
        ]
    return "\n".join(lines)


def save_plots(model: str, test_metrics: Mapping[str, Any], baselines: Mapping[str, Any], folder: Path) -> None:
    """Write ``ranking_at_k.png`` and ``ndcg_by_history.png``: the model against its baselines."""
    models = {model: dict(test_metrics), **baselines}
    plot_ranking_at_k(models, folder / RANKING_PLOT)
    plot_metric_by_group(models, folder / HISTORY_PLOT, metric="ndcg@10")


def data_sha256(data: Any) -> str:
    """SHA-256 of a data file's bytes, or of a DataFrame's values (index left out)."""
    if isinstance(data, pd.DataFrame):
        return frame_sha256(data.drop(columns=["__row__"], errors="ignore"))
    return file_sha256(data)


def data_info(data: Any, report: Mapping[str, Any], split: Mapping[str, Any]) -> dict[str, Any]:
    """``data.json`` of a recommender run: the file and its SHA-256, rows per split, drops by reason."""
    return {
        "file": None if isinstance(data, pd.DataFrame) else Path(data).name,
        "sha256": data_sha256(data),
        "rows": {
            "read": report.get("rows_in"),
            "after_cleaning": report.get("rows_out"),
            "train": split.get("train_rows"),
            "valid_users": split.get("valid_users"),
            "test_users": split.get("test_users"),
        },
        "dropped": dict(report.get("dropped", {})),
        "split": {"strategy": split.get("strategy"), "notes": list(split.get("notes", []))},
    }


def write_run_files(
    record: RunRecord,
    *,
    info: Mapping[str, Any],
    seed: int,
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    model: str,
    test_metrics: Mapping[str, Any],
    baselines: Mapping[str, Any],
    report_md: str,
) -> None:
    """Everything a finished fit adds to its run folder (the config and epochs are written as it goes)."""
    record.write_data(dict(info))
    record.write_environment(seed=seed)
    record.write_json("metrics.json", dict(metrics))
    save_plots(model, test_metrics, baselines, record.path)
    if history:
        plot_learning_curves([dict(h) for h in history], record.path / CURVES_PLOT)
        report_md += f"\n## Training\n\n![Loss and validation NDCG@10 per epoch]({CURVES_PLOT})\n"
    record.write_text("report.md", report_md)


__all__ = [
    "CARD_KEYS",
    "HISTORY_PLOT",
    "PRIMARY",
    "RANKING_PLOT",
    "add_test_intervals",
    "card",
    "data_info",
    "data_sha256",
    "dict_or",
    "markdown_table",
    "save_plots",
    "write_run_files",
]
