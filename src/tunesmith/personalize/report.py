"""Saving a personalisation evaluation (JSON, the per-user table, two plots), and what a fit's run record holds."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tunesmith.data.io import data_sha256
from tunesmith.runs.artifacts import atomic_write_json, json_safe
from tunesmith.runs.plots import plot_metric_by_group, plot_per_user_comparison


def write_report(result: dict[str, Any], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Save an :meth:`Personalizer.evaluate` result: JSON, the per-user table as CSV, and two plots.

    ``per_user.png``: each user's shared vs personalised ROC AUC (accuracy for more than two
    classes). ``by_train_rows.png``: the mean per group of users by training rows, shared vs
    personalised (and collaborative filtering, when the evaluation fitted it).
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    table: pd.DataFrame = result["users"]
    metric = "auc" if "auc_shared" in table.columns and table["auc_shared"].notna().any() else "accuracy"
    shown = "ROC AUC" if metric == "auc" else "accuracy"
    paths = {"json": out / "evaluation.json", "csv": out / "per_user.csv"}
    atomic_write_json(
        paths["json"],
        json_safe({k: v for k, v in result.items() if k != "users"} | {"metric": metric}),
    )
    table.to_csv(paths["csv"], index=False)
    paths["per_user"] = plot_per_user_comparison(
        table[f"{metric}_shared"].to_numpy(dtype=float),
        table[f"{metric}_personal"].to_numpy(dtype=float),
        out / "per_user.png",
        metric=shown,
        sizes=table["train_rows"].to_numpy(dtype=float),
    )
    groups = result["summary"]["by_train_rows"]
    models = {
        name: {g: {shown: v.get(f"{metric}_{key}"), "n_users": v.get("users", 0)} for g, v in groups.items()}
        for name, key in (("shared", "shared"), ("personalised", "personal"), ("collaborative filtering", "cf"))
        if any(v.get(f"{metric}_{key}") is not None for v in groups.values())
    }
    paths["by_train_rows"] = plot_metric_by_group(
        models,
        out / "by_train_rows.png",
        metric=shown,
        xlabel="training rows of the user's adapter",
        title=f"mean per-user {shown} by training rows",
    )
    return paths


def fit_info(
    *,
    base: str,
    target: str,
    task: str,
    labels: list[str],
    config: Mapping[str, Any],
    data: Any,
    frame: pd.DataFrame,
    rows_used: int,
    dropped: Mapping[str, int],
    adapters: Mapping[str, Mapping[str, Any]],
    report: Mapping[str, Mapping[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """What :func:`tunesmith.estimators.record.write_fit_record` takes for a personalisation fit.

    ``frame`` is the data as read (before rows were dropped), ``adapters`` the training summary
    of each adapter trained (``level``, ``rows_train``, ``rows_valid``, ``used``,
    ``validation``), ``report`` the fit's ``report_`` (every user and segment seen).
    """
    trained = [a for a in adapters.values() if a.get("level") == "user"]
    levels = {
        level: {
            "seen": len(seen),
            "adapters": sum(1 for a in adapters.values() if a.get("level") == level),
            "used": sum(1 for a in adapters.values() if a.get("level") == level and a.get("used")),
            "too_few_rows": sum(1 for r in seen.values() if not r.get("adapter")),
        }
        for level, seen in report.items()
    }
    total = int(sum(dropped.values()))
    return {
        "title": f"Per-{'user and per-segment' if report.get('segment') else 'user'} adapters over {base}",
        "kind": "personalized",
        "task": task,
        "strategy": f"{config.get('adapter_kind', 'head')} adapters",
        "labels": list(labels),
        "metrics": {},
        "baselines": {},
        "config": dict(config),
        "data": {
            "file": None if isinstance(data, pd.DataFrame) else Path(data).name,
            "sha256": data_sha256(data, frame),
            "target": target,
            "rows": {
                "read": len(frame),
                "labeled": rows_used,
                "train (user adapters)": int(sum(a.get("rows_train", 0) for a in trained)),
                "valid (user adapters)": int(sum(a.get("rows_valid", 0) for a in trained)),
            },
            "dropped": {"train": {"dropped_total": total, "reasons": dict(dropped)}},
            "split": {
                "strategy": "time-ordered hold-out per user",
                "notes": [f"each user's latest {config.get('valid_fraction')} of rows validates its adapter"],
            },
        },
        "training": {"train_seconds": seconds, "levels": levels, "adapters": {k: dict(v) for k, v in adapters.items()}},
    }


def adapters_section(info: Mapping[str, Any]) -> str:
    """The report's section on the adapters: per level, how many were trained and used."""
    levels = info["training"]["levels"]
    lines = [
        "## Adapters",
        "",
        "An adapter is used only when it beats the shared model on its own validation rows.",
        "",
        "| level | seen | adapters trained | used | too few rows |",
        "|---|---:|---:|---:|---:|",
    ]
    for level, n in levels.items():
        lines.append(f"| {level} | {n['seen']} | {n['adapters']} | {n['used']} | {n['too_few_rows']} |")
    return "\n".join(lines) + "\n\nPer-adapter validation: `metrics.json` (`training.adapters`).\n"


__all__ = ["adapters_section", "data_sha256", "fit_info", "write_report"]
