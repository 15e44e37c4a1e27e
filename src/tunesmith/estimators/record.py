"""The one run-record writer every kind calls at the end of ``fit``.

Example (at the end of a kind's ``fit``, when ``runs_dir`` is set)::

    from tunesmith.estimators.record import write_fit_record
    from tunesmith.evaluate.intervals import TestPredictions
    from tunesmith.runs.record import RunRecord

    record = RunRecord.create(cfg.runs_dir, cfg.run_name or "image")   # at the start of fit
    record.write_config(cfg.model_dump(mode="json"))                    # optional: done here if missing
    ...
    written = write_fit_record(
        record,
        {
            "title": "Image classifier fine-tuned from resnet18",
            "kind": "image",                       # text | image | tabular | recommender | personalized
            "task": "multiclass",                  # binary | multiclass | regression
            "backbone": "resnet18", "strategy": "full",
            "labels": ["cat", "dog", "fox"],
            "metrics": test_metrics,               # compute_metrics(...) on the test split
            "baselines": {"majority": majority_metrics},
            "config": cfg.model_dump(mode="json"),
            "data": {"file": "pets.csv", "sha256": "...", "rows": {"train": 800, "valid": 100, "test": 100},
                     "dropped": {"train": {"dropped_total": 3, "reasons": {"missing label": 3}}}},
            "training": {"epochs_run": 5, "best_epoch": 4, "train_seconds": 81.2},
            # "environment": optional; environment_info(seed=cfg.seed) when missing
        },
        history=history,                           # per-epoch dicts; learning curves (+ metrics.jsonl if absent)
        predictions=TestPredictions(
            task="multiclass", y_true=y_test, outputs=test_proba, labels=labels,
            baselines={"majority": majority_proba},  # same test rows, when available
        ),
    )
    self.test_metrics_ = written["test"]           # now with accuracy_ci, f1_macro_ci, ...
    self.run_dir_ = record.path

The folder then holds ``config.yaml``, ``data.json``, ``environment.json``, ``metrics.jsonl``,
``metrics.json`` (test metrics with ``<metric>_ci`` intervals, baselines, gains, warnings),
the plots that apply (``learning_curves.png``, ``confusion_matrix.png``, ``residuals.png``) and
``report.md``, the report that doubles as the model card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tunesmith.evaluate.intervals import TestPredictions, add_intervals, bootstrap_intervals
from tunesmith.runs.plots import plot_confusion_matrix, plot_learning_curves, plot_residuals
from tunesmith.runs.record import RunRecord, environment_info
from tunesmith.runs.report import render_report

__all__ = ["record_intervals", "write_fit_record"]


def record_intervals(
    info: Mapping[str, Any], predictions: TestPredictions | None, *, seed: int = 0
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The test metrics and baseline metrics with ``<metric>_ci`` added, and the intervals summary.

    Without ``predictions`` the metrics come back unchanged and the summary is ``None``.
    A kind may call this on its own to put the intervals into its model card before saving.
    """
    metrics = dict(info.get("metrics") or {})
    baselines = {str(k): dict(v) for k, v in (info.get("baselines") or {}).items()}
    if predictions is None or not metrics:
        return metrics, baselines, None
    summary = bootstrap_intervals(predictions, baseline_metrics=baselines, seed=seed)
    metrics = add_intervals(metrics, summary["metrics"])
    for key, cis in summary["baselines"].items():
        if key in baselines:
            baselines[key] = add_intervals(baselines[key], cis)
    return metrics, baselines, summary


def write_fit_record(
    record: RunRecord,
    info: Mapping[str, Any],
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    predictions: TestPredictions | None = None,
) -> dict[str, Any]:
    """Write the end-of-fit part of a run record and return what went into ``metrics.json``.

    Args:
        record: the run's folder (from :meth:`RunRecord.create` at the start of ``fit``).
        info: what :func:`tunesmith.runs.report.render_report` takes (``title``, ``kind``,
            ``task``, ``backbone``, ``strategy``, ``labels``, ``metrics``, ``baselines``,
            ``config``, ``data``, ``training``, optional ``environment``).
        history: one mapping per epoch (or boosting round); drawn as learning curves, and
            written to ``metrics.jsonl`` when the fit did not log it as it went.
        predictions: the model's and the baselines' outputs on the test rows; with them
            every test metric gets a 95% bootstrap interval and each gain a verdict.

    Returns:
        The ``metrics.json`` content: ``{"test": metrics with <metric>_ci, "baselines": ...,
        "training": ..., "intervals": bootstrap summary or None, "warnings": [...]}``.
    """
    config: Mapping[str, Any] = info.get("config") or {}
    seed = config.get("seed") if isinstance(config.get("seed"), int) else None
    metrics, baselines, summary = record_intervals(info, predictions, seed=0)

    if config and not (record.path / RunRecord.CONFIG).exists():
        record.write_config(dict(config))
    record.write_data(dict(info.get("data") or {}))
    environment = info.get("environment") or environment_info(seed=seed)
    record.write_json(RunRecord.ENVIRONMENT, environment)
    if history and not (record.path / RunRecord.METRICS).exists():
        for row in history:
            record.log_epoch(dict(row))

    warnings = list(summary["warnings"]) if summary else []
    written = {
        "test": metrics,
        "baselines": baselines,
        "training": info.get("training") or {},
        "intervals": _summary_for_json(summary),
        "gains": summary["gains"] if summary else {},
        "warnings": warnings,
    }
    record.write_json("metrics.json", written)

    images = _plots(record, info, metrics, history, predictions)
    report = {
        **info,
        "metrics": metrics,
        "baselines": baselines,
        "environment": environment,
        "images": images,
        "gains": written["gains"],
        "warnings": warnings,
    }
    record.write_text("report.md", render_report(report))
    return written


def _summary_for_json(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    keep = ("method", "confidence", "n_resamples", "seed", "stratified", "n", "metrics", "baselines")
    return {k: summary[k] for k in keep}


def _plots(
    record: RunRecord,
    info: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]] | None,
    predictions: TestPredictions | None,
) -> dict[str, str]:
    images: dict[str, str] = {}
    if history:
        plot_learning_curves([dict(h) for h in history], record.path / "learning_curves.png")
        images["learning_curves"] = "learning_curves.png"
    cm = metrics.get("confusion_matrix")
    labels = [str(x) for x in info.get("labels") or []]
    if isinstance(cm, list) and cm:
        plot_confusion_matrix(cm, labels or [str(i) for i in range(len(cm))], record.path / "confusion_matrix.png")
        images["confusion_matrix"] = "confusion_matrix.png"
    elif predictions is not None and predictions.task == "regression":
        plot_residuals(
            np.asarray(predictions.y_true, dtype=np.float64),
            np.asarray(predictions.outputs, dtype=np.float64),
            record.path / "residuals.png",
        )
        images["residuals"] = "residuals.png"
    return images
