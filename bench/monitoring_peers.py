"""Drift-monitoring peers: Evidently's DataDriftPreset and NannyML's CBPE, run as their users would.

This script runs inside its own virtual environment (built by ``_monitoring_peers_env.py``),
because Evidently 0.7 does not import with pandas 3. It never imports tunesmith; it only reads
parquet files and a ``spec.json`` from a folder and writes one JSON result file.

Usage::

    python bench/monitoring_peers.py evidently --in DIR --out FILE.json
    python bench/monitoring_peers.py cbpe --in DIR --out FILE.json

``evidently``: DIR holds ``reference.parquet``, ``spec.json`` (``{"numerical": [...],
"categorical": [...], "text": [...]}``) and ``windows/NNNN.parquet``. Each window is compared to
the reference with the default ``DataDriftPreset``; a window that fails is listed under
``errors`` with its message.

``cbpe``: DIR holds ``reference.parquet``, ``analysis.parquet`` and ``spec.json``
(``{"y_pred_proba", "y_pred", "y_true", "chunk_size", "metric": "accuracy", "timestamp"?}``).
CBPE is fitted on the reference and estimates accuracy on the analysis rows without their
labels; the realized accuracy of each chunk is computed here from the labels.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# Both libraries can phone home; the benchmark runs offline and must not wait on the network.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")

import numpy as np
import pandas as pd

# Type tags of the metrics the preset emits, as they appear in a snapshot's ``dict()``.
_DRIFT_COUNT_TYPE = "evidently:metric_v2:DriftedColumnsCount"
_VALUE_DRIFT_TYPE = "evidently:metric_v2:ValueDrift"
# Evidently marks a test that finds drift as failed.
_STATUS_TO_DRIFT = {"FAIL": True, "SUCCESS": False}


def _clean(value: Any) -> Any:
    """Turn numpy scalars into Python ones and NaN/inf into None, so the output is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _read_spec(in_dir: Path) -> dict[str, Any]:
    spec_path = in_dir / "spec.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} is missing: write the column spec there first")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path} must hold a JSON object")
    return spec


# --- Evidently -----------------------------------------------------------------------------


def _drift_columns(spec: dict[str, Any]) -> dict[str, list[str]]:
    columns: dict[str, list[str]] = {}
    for kind in ("numerical", "categorical", "text"):
        names = spec.get(kind, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"spec.json key {kind!r} must be a list of column names")
        columns[kind] = names
    if not any(columns.values()):
        raise ValueError("spec.json names no column: give at least one numerical, categorical or text column")
    return columns


def _read_snapshot(snapshot_dict: dict[str, Any], expected: list[str]) -> dict[str, Any]:
    """Pull the preset's own dataset decision and per-column results out of ``Snapshot.dict()``.

    The dataset decision is the status of the test the preset attaches to ``DriftedColumnsCount``
    (share of drifted columns must stay below ``drift_share``, 0.5 by default); each column's is
    the status of its ``ValueDrift`` test.
    """
    status_by_metric: dict[str, str] = {}
    for test in snapshot_dict.get("tests", []):
        # ``status`` is Evidently's TestStatus enum; its value is the plain name.
        status = test["status"]
        status_by_metric[test["metric_config"]["metric_id"]] = str(getattr(status, "value", status))

    def drift_of(metric_id: str, what: str) -> bool:
        status = status_by_metric.get(metric_id)
        if status not in _STATUS_TO_DRIFT:
            raise RuntimeError(f"Evidently gave no pass/fail for {what} (test status {status!r})")
        return _STATUS_TO_DRIFT[status]

    count: dict[str, Any] | None = None
    columns: dict[str, dict[str, Any]] = {}
    for metric in snapshot_dict.get("metrics", []):
        config = metric["config"]
        if config["type"] == _DRIFT_COUNT_TYPE:
            count = {
                "drift": drift_of(metric["id"], "the dataset"),
                "share": float(metric["value"]["share"]),
                "count": int(metric["value"]["count"]),
                "drift_share": float(config.get("drift_share", 0.5)),
            }
        elif config["type"] == _VALUE_DRIFT_TYPE:
            columns[config["column"]] = {
                "method": config.get("method"),
                "threshold": config.get("threshold"),
                "score": float(metric["value"]),
                "drift": drift_of(metric["id"], f"column {config['column']!r}"),
            }
    if count is None:
        raise RuntimeError("the snapshot has no DriftedColumnsCount result")
    missing = sorted(set(expected) - set(columns))
    if missing:
        raise RuntimeError(f"the snapshot has no ValueDrift result for {missing}")
    # The preset computes the count and the per-column tests separately; a disagreement means
    # this reader misread the snapshot, so refuse the window rather than report either figure.
    per_column = sum(1 for c in columns.values() if c["drift"])
    if per_column != count["count"]:
        raise RuntimeError(
            f"DriftedColumnsCount says {count['count']} drifted columns but the ValueDrift tests say {per_column}"
        )
    return {**count, "columns": columns}


def run_evidently(in_dir: Path) -> dict[str, Any]:
    """Run the default ``DataDriftPreset`` on every window of ``in_dir`` against its reference."""
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    kinds = _drift_columns(_read_spec(in_dir))
    names = [*kinds["numerical"], *kinds["categorical"], *kinds["text"]]
    definition = DataDefinition(
        numerical_columns=kinds["numerical"],
        categorical_columns=kinds["categorical"],
        text_columns=kinds["text"],
    )
    # Only the spec's columns go in: Evidently would otherwise infer types for any other column
    # (ids, timestamps) and test those too.
    reference_frame = pd.read_parquet(in_dir / "reference.parquet")
    missing = [n for n in names if n not in reference_frame.columns]
    if missing:
        raise ValueError(f"reference.parquet lacks spec columns {missing}")
    reference = Dataset.from_pandas(reference_frame[names], data_definition=definition)

    window_paths = sorted((in_dir / "windows").glob("*.parquet"))
    if not window_paths:
        raise FileNotFoundError(f"no windows/*.parquet under {in_dir}")

    windows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for path in window_paths:
        try:
            frame = pd.read_parquet(path)
            absent = [n for n in names if n not in frame.columns]
            if absent:
                raise ValueError(f"window lacks spec columns {absent}")
            frame = frame[names]
            started = time.perf_counter()
            current = Dataset.from_pandas(frame, data_definition=definition)
            # include_tests only attaches the preset's pass/fail verdicts; the drift computation
            # is the same default preset.
            snapshot = Report([DataDriftPreset()], include_tests=True).run(current, reference)
            result = _read_snapshot(snapshot.dict(), names)
            seconds = time.perf_counter() - started
            windows.append({"name": path.stem, "rows": len(frame), **result, "seconds": seconds})
        except Exception as exc:
            errors.append({"window": path.stem, "error": f"{type(exc).__name__}: {exc}"})
    return {
        "tool": "evidently",
        "version": evidently.__version__,
        "preset": "DataDriftPreset()",
        "reference_rows": len(reference_frame),
        "windows": windows,
        "errors": errors,
    }


# --- NannyML CBPE --------------------------------------------------------------------------


def _cbpe_spec(spec: dict[str, Any]) -> dict[str, Any]:
    for key in ("y_pred_proba", "y_pred", "y_true"):
        if not isinstance(spec.get(key), str):
            raise ValueError(f"spec.json key {key!r} must name a column")
    chunk_size = spec.get("chunk_size")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError("spec.json key 'chunk_size' must be a positive integer")
    metric = spec.get("metric", "accuracy")
    if metric != "accuracy":
        raise ValueError(f"spec.json metric {metric!r} is not supported: only 'accuracy' is")
    timestamp = spec.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        raise ValueError("spec.json key 'timestamp' must name a column or be absent")
    return {**spec, "metric": metric, "timestamp": timestamp}


def _realized_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    """Share of labelled rows whose prediction equals the label; None when no row has a label."""
    labelled = ~pd.isna(y_true)
    if not labelled.any():
        return None
    return float(np.mean(y_true[labelled] == y_pred[labelled]))


def run_cbpe(in_dir: Path) -> dict[str, Any]:
    """Fit CBPE on the reference, estimate accuracy per analysis chunk, compare with the truth."""
    import nannyml as nml

    spec = _cbpe_spec(_read_spec(in_dir))
    y_true, y_pred, ts = spec["y_true"], spec["y_pred"], spec["timestamp"]
    reference = pd.read_parquet(in_dir / "reference.parquet")
    analysis = pd.read_parquet(in_dir / "analysis.parquet")
    needed = [spec["y_pred_proba"], y_pred, y_true] + ([ts] if ts else [])
    for name, frame in (("reference", reference), ("analysis", analysis)):
        absent = [c for c in needed if c not in frame.columns]
        if absent:
            raise ValueError(f"{name}.parquet lacks columns {absent}")
    # NannyML's chunker sorts by the timestamp before cutting chunks (same call, same pandas),
    # so the row positions it reports refer to that order.
    analysis = (analysis.sort_values(by=[ts]) if ts else analysis).reset_index(drop=True)

    started = time.perf_counter()
    estimator = nml.CBPE(
        problem_type="classification_binary",
        y_pred_proba=spec["y_pred_proba"],
        y_pred=y_pred,
        y_true=y_true,
        metrics=["accuracy"],
        chunk_size=spec["chunk_size"],
        timestamp_column_name=ts,
    )
    estimator.fit(reference)
    fitted = time.perf_counter()
    # The labels stay out of what CBPE sees, so nothing of the truth can reach the estimate.
    result = estimator.estimate(analysis.drop(columns=[y_true]))
    finished = time.perf_counter()

    frame = result.filter(period="analysis").to_df()
    truth = analysis[y_true].to_numpy()
    predicted = analysis[y_pred].to_numpy()
    chunks: list[dict[str, Any]] = []
    for _, row in frame.iterrows():
        start, end = int(row[("chunk", "start_index")]), int(row[("chunk", "end_index")])
        chunks.append(
            {
                "chunk": int(row[("chunk", "chunk_index")]),
                "key": str(row[("chunk", "key")]),
                "start": start,
                "end": end,
                "rows": end - start + 1,
                "estimated": float(row[("accuracy", "value")]),
                "sampling_error": float(row[("accuracy", "sampling_error")]),
                "lower": float(row[("accuracy", "lower_confidence_boundary")]),
                "upper": float(row[("accuracy", "upper_confidence_boundary")]),
                "realized": _realized_accuracy(truth[start : end + 1], predicted[start : end + 1]),
                "alert": bool(row[("accuracy", "alert")]),
                "lower_threshold": row[("accuracy", "lower_threshold")],
                "upper_threshold": row[("accuracy", "upper_threshold")],
            }
        )
    scored = [abs(c["estimated"] - c["realized"]) for c in chunks if c["realized"] is not None]
    full = [
        abs(c["estimated"] - c["realized"])
        for c in chunks
        if c["realized"] is not None and c["rows"] == spec["chunk_size"]
    ]
    return {
        "tool": "nannyml-cbpe",
        "version": nml.__version__,
        "metric": "accuracy",
        "chunk_size": spec["chunk_size"],
        "reference_rows": len(reference),
        "analysis_rows": len(analysis),
        "chunks": chunks,
        "incomplete_last_chunk": bool(chunks and chunks[-1]["rows"] != spec["chunk_size"]),
        "mae": float(np.mean(scored)) if scored else None,
        "mae_full_chunks": float(np.mean(full)) if full else None,
        "fit_seconds": fitted - started,
        "estimate_seconds": finished - fitted,
        "seconds": finished - started,
        "errors": [],
    }


# --- entry point ---------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    found = {}
    for name in ("evidently", "nannyml", "pandas", "numpy", "scikit-learn", "scipy", "pyarrow"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run one peer, write its JSON; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=("evidently", "cbpe"))
    parser.add_argument("--in", dest="in_dir", type=Path, required=True, help="input folder")
    parser.add_argument("--out", type=Path, required=True, help="result JSON file")
    args = parser.parse_args(argv)
    if not args.in_dir.is_dir():
        parser.error(f"--in {args.in_dir} is not a folder")
    started = time.perf_counter()
    payload = run_evidently(args.in_dir) if args.task == "evidently" else run_cbpe(args.in_dir)
    payload["packages"] = _versions()
    payload["python"] = sys.version.split()[0]
    payload["total_seconds"] = time.perf_counter() - started
    _write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
