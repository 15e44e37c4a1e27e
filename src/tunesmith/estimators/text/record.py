"""What a text fit tells about itself: the report (which doubles as the model card) and the run record.

The run record is written by :func:`tunesmith.estimators.record.write_fit_record`, the writer
every kind shares: resolved config, data SHA-256 and rows per split, dropped rows by reason,
environment, per-epoch metrics, plots and ``report.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunesmith.estimators.record import record_intervals, write_fit_record
from tunesmith.evaluate.intervals import TestPredictions
from tunesmith.runs.record import RunRecord, environment_info
from tunesmith.runs.report import render_report

# The FineTuner being fitted, saved or loaded; typed loosely because its module imports this one.
TextEstimator = Any


def report_info(est: TextEstimator) -> dict[str, Any]:
    """The facts :func:`~tunesmith.runs.report.render_report` turns into the report and the model card."""
    cfg = est.config_
    assert est.schema_ is not None
    return {
        "title": f"{cfg.backbone} fine-tuned on {est.data_info_.get('file') or 'a DataFrame'}",
        "task": est.schema_.task,
        "backbone": cfg.backbone,
        "strategy": cfg.strategy,
        "labels": list(est.schema_.labels or []),
        "metrics": est.test_metrics_ or {},
        "baselines": est.baseline_metrics_,
        "config": cfg.model_dump(mode="json"),
        "data": est.data_info_,
        "training": est.training_info_,
        "environment": environment_info(seed=cfg.seed),
        "gains": (getattr(est, "uncertainty_", None) or {}).get("gains") or {},
        "warnings": (getattr(est, "uncertainty_", None) or {}).get("warnings") or [],
    }


def model_card(est: TextEstimator) -> str:
    """``card.md`` of a saved model: the run's report."""
    return render_report(report_info(est))


def write_record(est: TextEstimator, record: RunRecord | None) -> None:
    """Step 9 of a fit: intervals on the test metrics, and the run record through the one shared writer.

    The test outputs (and each baseline's, for a paired comparison) give the test metrics their
    95% bootstrap intervals (``<metric>_ci``) and each gain its verdict, with or without a run
    record; the estimator keeps them (``test_metrics_``, ``uncertainty_``) and saves them.
    """
    schema = est.schema_
    assert schema is not None
    predictions = None
    if est.test_metrics_ and getattr(est, "_y_test", None) is not None:
        outputs = np.asarray(est._test_outputs, dtype=np.float64)
        if schema.task == "regression":
            s = est.target_scaling_ or {"mean": 0.0, "std": 1.0}
            outputs = outputs[:, 0] * s["std"] + s["mean"]
        else:
            outputs = np.exp(outputs - outputs.max(axis=1, keepdims=True))
            outputs /= outputs.sum(axis=1, keepdims=True)
        paired = {
            k: np.asarray(b.outputs)
            for k, b in (est.baseline_metrics_ or {}).items()
            if getattr(b, "outputs", None) is not None
        }
        predictions = TestPredictions(
            task=schema.task, y_true=est._y_test, outputs=outputs, labels=list(schema.labels or []), baselines=paired
        )
    info = {**report_info(est), "kind": "text"}
    if record is not None:
        written = write_fit_record(record, info, history=est.history_, predictions=predictions)
        metrics, baselines = written["test"], written["baselines"]
        est.uncertainty_ = {"gains": written["gains"], "warnings": written["warnings"]}
    else:
        metrics, baselines, summary = record_intervals(info, predictions, seed=0)
        est.uncertainty_ = {"gains": summary["gains"], "warnings": list(summary["warnings"])} if summary else {}
    if est.test_metrics_:
        est.test_metrics_ = metrics
        est.baseline_metrics_ = baselines
