"""What a text fit tells about itself: the report (which doubles as the model card) and the run record.

The run record is written by :func:`tunesmith.estimators.record.write_fit_record`, the writer
every kind shares: resolved config, data SHA-256 and rows per split, dropped rows by reason,
environment, per-epoch metrics, plots and ``report.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunesmith.estimators.record import write_fit_record
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
    }


def model_card(est: TextEstimator) -> str:
    """``card.md`` of a saved model: the run's report."""
    return render_report(report_info(est))


def write_record(est: TextEstimator, record: RunRecord) -> None:
    """Step 9 of a fit: the run record through the one writer every kind shares.

    The test outputs go with it, so the test metrics gain 95% bootstrap intervals
    (``<metric>_ci``), which the estimator then keeps (and saves) too.
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
        predictions = TestPredictions(
            task=schema.task, y_true=est._y_test, outputs=outputs, labels=list(schema.labels or [])
        )
    info = {**report_info(est), "kind": "text"}
    written = write_fit_record(record, info, history=est.history_, predictions=predictions)
    if est.test_metrics_:
        est.test_metrics_ = written["test"]
