"""The run record of an image fit, and the 95% intervals of its test metrics.

The record itself is written by the writer every kind shares
(:func:`tunesmith.estimators.record.write_fit_record`): resolved config, data SHA-256, rows
per split and dropped rows by reason, environment, per-epoch metrics, plots and report.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.estimators import resume as resume_run
from tunesmith.estimators.image.folder import report_info
from tunesmith.estimators.record import record_intervals, write_fit_record
from tunesmith.evaluate.intervals import TestPredictions
from tunesmith.runs.record import RunRecord
from tunesmith.train.checkpoint import Checkpointer


def start_record(
    cfg: Any, source: str | None, resume: Path | None, main_process: bool, train: tuple[np.ndarray, np.ndarray]
) -> tuple[RunRecord | None, Checkpointer | None]:
    """The run folder (new under ``runs_dir``, or ``resume`` reopened) and the fit's checkpointer."""
    record = resume_run.open_run(cfg, Path(source).stem if source else "fit", resume=resume, main_process=main_process)
    print_ = lambda: resume_run.fingerprint(cfg.model_dump(mode="json"), list(train))  # noqa: E731
    return record, resume_run.checkpointer(record, cfg, print_, resume=resume)


def test_predictions(
    task: str, labels: list[str], y_train: np.ndarray, y_test: np.ndarray | None, proba: np.ndarray | None
) -> TestPredictions | None:
    """The model's and the majority baseline's probabilities on the test rows (None without a test split)."""
    if y_test is None or proba is None or not len(y_test):
        return None
    freqs = np.bincount(y_train, minlength=len(labels)) / max(1, len(y_train))
    majority = np.tile(freqs, (len(y_test), 1))
    return TestPredictions(task=task, y_true=y_test, outputs=proba, labels=labels, baselines={"majority": majority})


def finish_record(est: Any, record: RunRecord | None, predictions: TestPredictions | None) -> None:
    """Give the estimator's test and baseline metrics their bootstrap intervals; write ``record``.

    ``est.run_dir_`` is set to the record's folder when one is written.
    """
    info = {**report_info(est), "data": est.data_info_}
    if record is not None:
        written = write_fit_record(record, info, history=est.history_, predictions=predictions)
        metrics, baselines = written["test"], written["baselines"]
        est.uncertainty_ = {"gains": written["gains"], "warnings": written["warnings"]}
        est.run_dir_ = record.path
    else:
        metrics, baselines, summary = record_intervals(info, predictions, seed=0)
        est.uncertainty_ = {"gains": summary["gains"], "warnings": list(summary["warnings"])} if summary else {}
    if est.test_metrics_:
        est.test_metrics_ = metrics
    # The report's human names of the baselines stay in the report.
    est.baseline_metrics_ = {k: {m: v for m, v in b.items() if m != "model"} for k, b in baselines.items()}
