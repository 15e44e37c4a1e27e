"""The reference: what the model saw when it was known to work, kept as the monitor compares it.

:func:`build_reference` reads labeled reference data (best: rows the model did not train on,
such as its test split), runs the model once over a sample of it through the estimator
contract (``predict_proba``/``predict`` for outputs, ``embed`` for its representation) and
learns how performance depends on confidence and inputs. Any kind of model works; a model
given as ``None`` is monitored from output columns already in the data (scores of a model
tunesmith did not train).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import ConfigError, DataError
from tunesmith.monitor.frame import (
    PREDICTION,
    PROBA_PREFIX,
    Derived,
    Spec,
    build_vocab,
    check_columns,
    derive_features,
    infer_spec,
    text_features,
)
from tunesmith.monitor.performance import PerformanceEstimator, reference_band
from tunesmith.monitor.settings import MonitorSettings


@dataclass
class Outputs:
    """A model's outputs on some rows: probabilities (classification) or values, and predictions."""

    scores: np.ndarray | None  # (n, k) probabilities, or (n,) predicted values
    prediction: np.ndarray | None  # class indices (classification) or values (regression)


@dataclass
class Reference:
    """Everything the monitor compares current windows with."""

    spec: Spec
    features: Derived
    outputs: Outputs
    target: np.ndarray | None  # class indices (-1: unknown class) or values
    embeddings: np.ndarray | None
    performance: PerformanceEstimator | None
    band: dict[str, float] | None
    rows: int
    source: str
    model: Any = None
    model_info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_data(data: Any, what: str) -> tuple[pd.DataFrame, str]:
    """A DataFrame and a name to show for it, from a DataFrame or a data file."""
    if isinstance(data, pd.DataFrame):
        return data.reset_index(drop=True), f"DataFrame ({len(data)} rows)"
    if isinstance(data, (str, os.PathLike)):
        from tunesmith.data.io import read_table

        path = Path(data)
        if not path.exists():
            raise DataError(f"the {what} file does not exist", file=path, hint="Check the path")
        return read_table(path), str(path)
    raise ConfigError(f"must be a DataFrame or a data file, got {type(data).__name__}", key=what)


def load_model(model: Any) -> Any:
    """An estimator from a fitted estimator or a model folder (``tunesmith.load``); None stays None."""
    if model is None or hasattr(model, "predict"):
        return model
    from tunesmith.kinds import load

    return load(model)


def model_spec(est: Any, frame: pd.DataFrame, target: str | None, settings: MonitorSettings) -> Spec:
    """The input columns the model reads, from its schema where it has one, else from the data."""
    schema = getattr(est, "schema_", None)
    base = getattr(est, "base", None) if schema is None and hasattr(est, "user_column") else None
    if base is not None:
        schema = getattr(base, "schema_", None)
    if schema is not None:
        spec = Spec(
            numeric=list(schema.numeric_columns),
            categorical=list(schema.categorical_columns),
            text=list(schema.text_columns),
            target=target or schema.target,
        )
        user = getattr(est, "user_column", None)
        if user:
            spec.categorical.append(str(user))
        return spec
    config = getattr(est, "config_", None)
    path_column = getattr(config, "path_column", None)
    if path_column is not None and hasattr(est, "task_"):
        images = [c for c in frame.columns if c == path_column]
        if not images:
            images = [c for c in frame.columns if len(frame) and isinstance(frame[c].iloc[0], np.ndarray)]
        return Spec(image=images or [str(path_column)], target=target)
    return infer_spec(frame, target=target, max_categories=settings.max_categories)


def model_task(est: Any, spec: Spec, frame: pd.DataFrame, proba: list[str] | None, prediction: str | None) -> None:
    """Fill ``spec.task`` and ``spec.classes`` from the model, or from given output columns."""
    if est is not None:
        classes = getattr(est, "classes_", None)
        task = getattr(getattr(est, "schema_", None), "task", None) or getattr(est, "task_", None)
        if classes is not None and task != "regression":
            spec.task, spec.classes = "classification", [str(c) for c in classes]
        elif hasattr(est, "recommend"):
            spec.task = "ranking"
        else:
            spec.task = "regression"
        return
    if proba:
        spec.task = "classification"
        if len(proba) == 1:
            values = frame[prediction].dropna().unique() if prediction else [0, 1]
            spec.classes = [str(v) for v in sorted(values)] if len(values) == 2 else ["0", "1"]
        else:
            spec.classes = [c.removeprefix(PROBA_PREFIX) for c in proba]
    elif prediction:
        spec.task = "regression"


def model_input(frame: pd.DataFrame, spec: Spec) -> Any:
    """What the estimator's predict and embed take for these rows."""
    if spec.image:
        col = frame[spec.image[0]]
        if len(col) and isinstance(col.iloc[0], np.ndarray):
            return np.stack(col.tolist())
        return frame[spec.image]
    return frame


def compute_outputs(
    est: Any, frame: pd.DataFrame, spec: Spec, proba: list[str] | None, prediction: str | None
) -> Outputs:
    """The model's outputs: read from the data's own columns when given, else computed."""
    classes = spec.classes or []
    index = {c: i for i, c in enumerate(classes)}
    logged = [PROBA_PREFIX + c for c in classes]
    if spec.task == "classification":
        if proba and len(proba) == 1:
            p1 = frame[proba[0]].to_numpy(dtype=float)
            scores = np.column_stack([1 - p1, p1])
        elif proba:
            scores = frame[proba].to_numpy(dtype=float)
        elif classes and all(c in frame.columns for c in logged):
            scores = frame[logged].to_numpy(dtype=float)
        elif est is not None:
            scores = np.asarray(est.predict_proba(model_input(frame, spec)), dtype=float)
        else:
            return Outputs(None, None)
        if prediction and prediction in frame.columns:
            pred = np.array([index.get(str(v), -1) for v in frame[prediction]])
        else:
            pred = scores.argmax(axis=1)
        return Outputs(scores, pred)
    if spec.task == "regression":
        column = prediction if prediction and prediction in frame.columns else PREDICTION
        if column in frame.columns:
            values = frame[column].to_numpy(dtype=float)
        elif est is not None:
            values = np.asarray(est.predict(model_input(frame, spec)), dtype=float)
        else:
            return Outputs(None, None)
        return Outputs(values, values)
    return Outputs(None, None)


def encode_target(spec: Spec, values: pd.Series) -> np.ndarray:
    """Targets as class indices (-1 for a missing or unknown label) or floats (NaN when missing)."""
    if spec.task == "classification":
        index = {c: i for i, c in enumerate(spec.classes or [])}
        return np.array([-1 if pd.isna(v) else index.get(_label_text(v), -1) for v in values])
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def _label_text(v: Any) -> str:
    # 1.0 read from a file is the label "1" a model trained on integers knows.
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def embed_rows(est: Any, frame: pd.DataFrame, spec: Spec) -> np.ndarray | None:
    """The model's representation of ``frame`` (``embed`` of the contract), or None if it has none."""
    if est is None or not (spec.text or spec.image) or not hasattr(est, "embed"):
        return None
    from tunesmith.estimators.base import NotSupportedError

    try:
        return np.asarray(est.embed(model_input(frame, spec)), dtype=np.float32)
    except NotSupportedError:
        return None


def inputs_frame(features: Derived, rows: np.ndarray | slice | None = None) -> pd.DataFrame:
    """The derived features as a DataFrame (the inputs the performance estimate conditions on)."""
    sel = slice(None) if rows is None else rows
    return pd.DataFrame({k: v[sel] for k, v in features.values.items()})


def build_reference(
    model: Any,
    data: Any,
    *,
    target: str | None = None,
    proba: list[str] | None = None,
    prediction: str | None = None,
    settings: MonitorSettings,
    spec: Spec | None = None,
) -> Reference:
    """Profile ``data`` (labeled where possible) as the monitor's reference for ``model``.

    ``spec`` names the input columns and, for a model given as ``None``, its task and classes
    (a server that computed the outputs itself knows them); by default they come from the
    model or the data.
    """
    est = load_model(model)
    frame, source = read_data(data, "reference")
    if not len(frame):
        raise DataError("the reference data has no rows", file=source)
    rng = np.random.default_rng(settings.seed)
    if len(frame) > settings.reference_rows:
        keep = np.sort(rng.choice(len(frame), settings.reference_rows, replace=False))
        frame = frame.iloc[keep].reset_index(drop=True)
    exclude = [c for c in (*(proba or ()), prediction) if c]
    given_task = spec is not None and spec.task is not None
    if spec is not None:
        spec = Spec(**{**spec.__dict__, "vocab": dict(spec.vocab), "target": target or spec.target})
    elif est is None:
        spec = infer_spec(frame, target=target, exclude=exclude, max_categories=settings.max_categories)
    else:
        spec = model_spec(est, frame, target, settings)
    check_columns(frame, spec, what="reference", file=None if isinstance(data, pd.DataFrame) else source)
    halves = rng.permutation(len(frame)) % 2 == 0
    other_vocab: dict[str, list[str]] = {}
    for col in spec.text:
        # Two halves, each word list scoring the other half's rows: a vocabulary built from all
        # reference rows would find every reference word in itself, and any new text "unusual".
        spec.vocab[col] = build_vocab(frame.loc[halves, col])
        other_vocab[col] = build_vocab(frame.loc[~halves, col])
    if not given_task:
        model_task(est, spec, frame, proba, prediction)
    outputs = compute_outputs(est, frame, spec, proba, prediction)
    features = derive_features(frame, spec)
    for col in spec.text:
        in_a = text_features(frame.loc[halves, col], set(other_vocab[col]))["oov"]
        features.values[f"{col}.oov"][halves] = in_a
    warnings: list[str] = []
    y = None
    performance = None
    band = None
    if spec.target and spec.target in frame.columns and outputs.scores is not None:
        y = encode_target(spec, frame[spec.target])
        known = (y >= 0) if spec.task == "classification" else np.isfinite(y)
        if known.sum() >= 50:
            perf = PerformanceEstimator(
                spec.task or "classification", use_inputs=settings.calibrate_on_inputs, seed=settings.seed
            )
            assert outputs.prediction is not None
            perf.fit(outputs.scores[known], outputs.prediction[known], y[known], inputs_frame(features, known))
            performance = perf
            band = reference_band(
                spec.task or "classification",
                outputs.prediction[known],
                y[known],
                settings.window_rows or 1000,
                settings.performance_sigmas,
                settings.performance_drop,
            )
        else:
            warnings.append(f"only {int(known.sum())} reference rows have a known label: performance is not estimated")
    elif spec.task in ("classification", "regression"):
        warnings.append("the reference has no target column: performance is neither estimated nor measured")
    embeddings = None
    if settings.embedding_rows > 0:
        n = min(len(frame), settings.embedding_reference_rows)
        pick = np.sort(rng.choice(len(frame), n, replace=False))
        embeddings = embed_rows(est, frame.iloc[pick].reset_index(drop=True), spec)
    info = _model_info(est, model)
    return Reference(spec, features, outputs, y, embeddings, performance, band, len(frame), source, est, info, warnings)


def _model_info(est: Any, model: Any) -> dict[str, Any]:
    if est is None:
        return {"path": None, "kind": None, "model_version": None}
    path = getattr(est, "model_path_", None) or (model if isinstance(model, (str, os.PathLike)) else None)
    version = None
    if path is not None and (Path(path) / "model.safetensors").is_file():
        from tunesmith.runs.fingerprint import model_version

        version = model_version(Path(path))
    return {"path": None if path is None else str(path), "kind": getattr(est, "kind", None), "model_version": version}
