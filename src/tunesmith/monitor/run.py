"""``monitor()`` and its result: the Python side of ``tunesmith monitor``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import ConfigError, DataError
from tunesmith.monitor.core import Evaluator, decide, features_of, now_iso, status_of, summarise_window
from tunesmith.monitor.current import Current, make_windows, read_current
from tunesmith.monitor.frame import whole_text
from tunesmith.monitor.reference import Reference, build_reference, read_data
from tunesmith.monitor.settings import MonitorSettings, make_settings
from tunesmith.progress import progress


class MonitorResult:
    """What :func:`monitor` found: ``status`` (ok, drift, alert), ``exit_code`` and every figure.

    ``result`` is the JSON-ready dict the report is made from; :meth:`windows` gives one row
    per window and signal as a DataFrame; :meth:`save` writes ``report.html``, ``report.json``
    and the plots.
    """

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result

    @property
    def status(self) -> str:
        return str(self.result["status"])

    @property
    def exit_code(self) -> int:
        return int(self.result["exit_code"])

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.result["alerts"])

    def windows(self) -> pd.DataFrame:
        """One row per window and signal: value, p-values, interval, drift and alert flags."""
        rows = []
        for w in self.result["windows"]:
            for name, f in w["values"].items():
                rows.append({"window": w["index"], "label": w["label"], "rows": w["rows"], "signal": name, **f})
        return pd.DataFrame(rows)

    def save(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``report.html``, ``report.json`` and ``plots/`` into ``folder``."""
        from tunesmith.monitor.report import write_report

        return write_report(self.result, folder)

    def __repr__(self) -> str:
        return f"MonitorResult(status={self.status!r}, windows={len(self.result['windows'])})"


def monitor(
    model: Any = None,
    reference: Any = None,
    current: Any = None,
    *,
    labels: Any = None,
    target: str | None = None,
    key: str | None = None,
    proba: str | Sequence[str] | None = None,
    prediction: str | None = None,
    positive: str | None = None,
    model_version: str | None = None,
    settings: MonitorSettings | Mapping[str, Any] | None = None,
    progress_bar: bool = True,
    **overrides: Any,
) -> MonitorResult:
    """Compare ``current`` data with ``reference`` data for ``model``, window by window.

    Args:
        model: a fitted estimator, a model folder, or ``None`` to monitor scores already in
            the data (``proba``/``prediction`` name their columns).
        reference: labeled data the model is known to work on (a file or DataFrame; best the
            model's test split: training rows make the performance estimate optimistic), or a
            :class:`~tunesmith.monitor.reference.Reference` built before.
        current: a prediction log of ``tunesmith serve`` (SQLite or Parquet, rotated files
            included) or a data file or DataFrame; a file without the model's outputs is
            predicted with the model.
        labels: labels that arrived later (file or DataFrame) with the target column and
            ``key`` (default ``request_id`` for a log, plus ``row`` when present).
        target: the target column (default: the model's).
        proba: output probability column(s); one column means a binary model's positive class.
        prediction: predicted-label (or predicted-value) column.
        positive: the class a single ``proba`` column gives the probability of (needed unless
            the labels are 0/1 or False/True).
        model_version: which model version of a log to monitor (default: the model's own).
        settings: :class:`MonitorSettings` or a mapping; ``overrides`` are applied on top.

    Returns:
        A :class:`MonitorResult`; its ``exit_code`` is 0 (fine), 3 (inputs or outputs drifted,
        performance holds) or 4 (performance fell below its threshold).
    """
    s = make_settings(settings, **overrides)
    proba_cols = [proba] if isinstance(proba, str) else (list(proba) if proba else None)
    if reference is None or current is None:
        raise ConfigError(
            "monitor needs reference and current data", key="reference" if reference is None else "current"
        )
    ref = (
        reference
        if isinstance(reference, Reference)
        else build_reference(
            model,
            reference,
            target=target,
            proba=proba_cols,
            prediction=prediction,
            positive=positive,
            settings=s,
            exclude=[key] if key else [],
        )
    )
    ref.model_info.update(proba_columns=proba_cols, prediction_column=prediction)
    cur = read_current(current, ref, s, model_version)
    if labels is not None:
        cur.frame = join_labels(cur, labels, ref.spec.target, key)
    windows, notes = make_windows(cur, s)
    evaluator = Evaluator(ref, s)
    rng = np.random.default_rng(s.seed)
    raw = []
    with progress("monitoring", len(windows), unit="windows", enabled=progress_bar and len(windows) > 1) as bar:
        for w in windows:
            raw.append(evaluator.window(cur, w, rng))
            bar.advance(1)
    decide(raw, evaluator.signals, s.alpha)
    entries = [summarise_window(w, f) for w, f in zip(windows, raw, strict=True)]
    status, code = status_of(entries)
    alerts = [
        {"window": e["index"], "label": e["label"], "signal": name, "message": _alert_message(name, f, ref)}
        for e in entries
        for name, f in e["values"].items()
        if f["alert"]
    ]
    result = {
        "format": "tunesmith-monitor",
        "version": 1,
        "created": now_iso(),
        "status": status,
        "exit_code": code,
        "model": {
            **{k: v for k, v in ref.model_info.items() if k in ("path", "kind", "model_version")},
            "task": ref.spec.task,
            "classes": ref.spec.classes,
        },
        "reference": {
            "rows": ref.rows,
            "source": ref.source,
            "performance": _reference_performance(ref),
            "columns": ref.spec.to_dict(),
        },
        "current": {
            "rows": len(cur.frame),
            "source": cur.source,
            "prediction_log": cur.is_log,
            "windowing": "time" if s.window_time else "rows",
            "window": s.window_time or f"{s.window_rows} rows",
            "dropped": cur.dropped,
        },
        "settings": s.model_dump(),
        "signals": [sig.to_dict() for sig in evaluator.signals.values()],
        "windows": entries,
        "top_changes": top_changes(ref, cur, windows, entries, s),
        "alerts": alerts,
        "warnings": [*ref.warnings, *cur.warnings, *notes],
    }
    return MonitorResult(result)


def _reference_performance(ref: Reference) -> dict[str, Any] | None:
    if ref.band is None:
        return None
    perf = ref.performance
    metric = perf.metric if perf is not None else str(ref.model_info.get("ranking_metric", "ndcg@10"))
    below = perf is None or perf.direction == "below"
    return {
        "metric": metric,
        "value": ref.band["value"],
        "spread": ref.band["spread"],
        "lower_threshold" if below else "upper_threshold": ref.band["threshold"],
        "method": perf.method if perf is not None else "measured on the reference's interactions",
    }


def _alert_message(name: str, f: Mapping[str, Any], ref: Reference) -> str:
    band = ref.band or {}
    what = name.split(":", 1)[1]
    return f"{what} {f['value']:.4f} is past the threshold {band.get('threshold', float('nan')):.4f} " + (
        f"(reference {band.get('value', float('nan')):.4f})"
    )


def join_labels(cur: Current, labels: Any, target: str | None, key: str | None) -> pd.DataFrame:
    """The current rows with the labels that arrived joined on ``key`` (and ``row`` for a log)."""
    if target is None:
        raise ConfigError("labels need a target column; pass target=", key="target")
    lab, source = read_data(labels, "labels")
    key = key or ("request_id" if cur.is_log else None)
    if key is None:
        raise ConfigError("name the column that joins labels to the current rows", key="key")
    for col in (key, target):
        if col not in lab.columns:
            raise DataError(f"the labels lack the column {col!r}", file=source, column=col)
        if col == key and col not in cur.frame.columns:
            raise DataError(f"the current data lacks the key column {col!r}", file=cur.source, column=col)
    on = [key, "row"] if cur.is_log and "row" in lab.columns else [key]
    if cur.is_log and "row" not in lab.columns and cur.frame["row"].gt(0).any():
        raise DataError(
            "the log holds requests of several rows, and the labels have no 'row' column to tell them apart",
            file=source,
            column="row",
            hint="Add each label's row number within its request (0 for the first)",
        )
    lab = lab[[*on, target]]
    no_key = lab[on].isna().any(axis=1).to_numpy()
    if no_key.any():
        cur.dropped["labels_without_a_key"] = int(no_key.sum())
        cur.warnings.append(f"{int(no_key.sum())} label rows have no {'/'.join(on)} and are left out")
        lab = lab[~no_key]
    right = pd.DataFrame({c: key_text(lab[c]) for c in on}).assign(**{target: lab[target].to_numpy()})
    dup = right.duplicated(on, keep=False)
    if dup.any():
        first = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(
            f"the labels name the same {'/'.join(on)} more than once",
            file=source,
            row=first + 1,
            column=key,
            hint="Keep one label per row",
        )
    frame = cur.frame.drop(columns=[target], errors="ignore")
    # Keys compare as text with whole numbers written alike (1.0 read from a file is the id 1).
    left = pd.DataFrame({c: key_text(frame[c]) for c in on})
    merged = left.merge(right, on=on, how="left")
    frame[target] = merged[target].to_numpy()
    unmatched = int(len(right) - right[on].merge(left.dropna().drop_duplicates(), on=on).shape[0])
    if unmatched:
        cur.warnings.append(f"{unmatched} label rows match no current row (by {'/'.join(on)})")
    return frame


def key_text(s: pd.Series) -> pd.Series:
    """Join keys as text, whole numbers without a decimal part; a missing key stays missing."""
    return pd.Series([None if pd.isna(v) else whole_text(v) for v in s.tolist()], dtype=object)


def top_changes(
    ref: Reference, cur: Current, windows: list[Any], entries: list[dict[str, Any]], s: MonitorSettings
) -> list[dict[str, Any]]:
    """The inputs that changed most: windows drifted, largest effect, a summary and example rows."""
    found: dict[str, dict[str, Any]] = {}
    for w, e in zip(windows, entries, strict=True):
        for name, f in e["values"].items():
            if not name.startswith("input:") or f["value"] is None:
                continue
            item = found.setdefault(name, {"signal": name, "effect": 0.0, "windows_drifted": 0, "window": w})
            item["windows_drifted"] += int(f["drift"])
            if f["value"] > item["effect"]:
                item["effect"], item["window"] = float(f["value"]), w
    ranked = sorted(found.values(), key=lambda d: (-d["windows_drifted"], -d["effect"]))
    out = []
    features: dict[int, Any] = {}  # per window: several inputs often changed most in the same one
    for item in ranked[:10]:
        if not item["windows_drifted"]:
            continue
        feature = item["signal"].removeprefix("input:").removesuffix(":missing")
        column = ref.features.source.get(feature, feature)
        w = item.pop("window")
        frame = cur.frame.iloc[w.rows].reset_index(drop=True)
        if w.index not in features:
            features[w.index] = features_of(ref, frame)
        values = features[w.index].values[feature]
        summary, order = _describe(ref.features.values[feature], values, ref.features.kinds[feature])
        shown = [c for c in (*ref.spec.inputs, "request_id") if c in frame.columns and c not in ref.spec.image]
        examples = frame.iloc[order[: s.examples]][shown].to_dict(orient="records") if s.examples else []
        out.append({**item, "column": column, "summary": f"{summary} (window {w.label})", "examples": examples})
    return out


def _describe(a: np.ndarray, b: np.ndarray, kind: str) -> tuple[str, np.ndarray]:
    if kind == "numeric":
        fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
        ma, mb = (
            (float(np.median(fa)) if len(fa) else float("nan")),
            (float(np.median(fb)) if len(fb) else float("nan")),
        )
        ra, rb = float(np.mean(~np.isfinite(a))), float(np.mean(~np.isfinite(b)))
        miss = f"; missing {ra:.1%} -> {rb:.1%}" if ra or rb else ""
        far = np.where(np.isfinite(b), np.abs(b - ma), np.inf)
        if np.isfinite(mb) and np.isfinite(ma) and mb < ma:
            far = np.where(np.isfinite(b), ma - b, np.inf)
        mean_a = float(np.mean(fa)) if len(fa) else float("nan")
        mean_b = float(np.mean(fb)) if len(fb) else float("nan")
        return f"mean {mean_a:.4g} -> {mean_b:.4g}, median {ma:.4g} -> {mb:.4g}{miss}", np.argsort(-far, kind="stable")
    sa, sb = (
        pd.Series(a.astype(str)).value_counts(normalize=True),
        pd.Series(b.astype(str)).value_counts(normalize=True),
    )
    gain = sb.sub(sa, fill_value=0.0).sort_values(ascending=False)
    top = str(gain.index[0])
    summary = f"{top!r} {sa.get(top, 0.0):.1%} -> {sb.get(top, 0.0):.1%}"
    return summary, np.argsort(~(b.astype(str) == top), kind="stable")
