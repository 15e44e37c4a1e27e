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
from collections.abc import Sequence
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
    as_image_array,
    build_vocab,
    check_columns,
    derive_features,
    infer_spec,
    text_features,
)
from tunesmith.monitor.performance import PerformanceEstimator, make_band, reference_band
from tunesmith.monitor.ranking import (
    ITEM_KNOWN,
    ITEM_POPULARITY,
    USER_HISTORY,
    USER_KNOWN,
    RankingView,
    is_recommender,
)
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
    ranking: dict[str, Any] | None = None  # a recommender's view and reference outputs


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


def binary_classes(frame: pd.DataFrame, target: str | None, prediction: str | None, positive: str | None) -> list[str]:
    """``[negative, positive]`` for a model scored by one probability column."""
    seen: set[str] = set()
    for col in (target, prediction):
        if col and col in frame.columns:
            seen |= {_label_text(v) for v in frame[col].dropna().unique()}
    if positive is not None:
        others = sorted(seen - {str(positive)})
        if len(others) > 1:
            raise ConfigError(
                f"a single probability column needs two classes; the data has {sorted(seen)}", key="positive"
            )
        return [others[0] if others else "(other)", str(positive)]
    for pair in (["0", "1"], ["False", "True"]):
        if seen <= set(pair):
            return pair
    raise ConfigError(
        f"one probability column, but which class is it for? The labels are {sorted(seen)[:5]}",
        key="positive",
    )


def model_task(
    est: Any,
    spec: Spec,
    frame: pd.DataFrame,
    proba: list[str] | None,
    prediction: str | None,
    positive: str | None = None,
) -> None:
    """Fill ``spec.task`` and ``spec.classes`` from the model, or from given output columns."""
    if est is not None:
        # A personalised model answers with its shared base model's classes.
        base = getattr(est, "base", None) if hasattr(est, "user_column") else None
        classes = getattr(est, "classes_", None)
        if classes is None and base is not None:
            classes = getattr(base, "classes_", None)
        task = getattr(getattr(est, "schema_", None), "task", None) or getattr(est, "task_", None)
        task = task or getattr(getattr(base, "schema_", None), "task", None)
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
            spec.classes = binary_classes(frame, spec.target, prediction, positive)
        else:
            spec.classes = [c.removeprefix(PROBA_PREFIX) for c in proba]
    elif prediction:
        spec.task = "regression"


def model_input(frame: pd.DataFrame, spec: Spec) -> Any:
    """What the estimator's predict and embed take for these rows."""
    if spec.image:
        col = frame[spec.image[0]]
        values = col.tolist()
        if values and all(isinstance(v, str) and os.path.exists(v) for v in values):
            return frame[spec.image]  # paths: the estimator reads them itself
        arrays = [as_image_array(v) for v in values]
        bad = next((i for i, a in enumerate(arrays) if a is None), None)
        if bad is not None:
            raise DataError("an image cannot be read", row=bad + 1, column=spec.image[0])
        return np.stack(_same_size([a for a in arrays if a is not None]))
    return frame


def _same_size(images: list[np.ndarray]) -> list[np.ndarray]:
    """Images of one shape (the first one's), so they stack; the model resizes them anyway."""
    shape = images[0].shape
    if all(a.shape == shape for a in images):
        return images
    from PIL import Image

    out = []
    for a in images:
        if a.shape != shape:
            a = np.asarray(Image.fromarray(a).resize((shape[1], shape[0])))
            if a.ndim != len(shape):
                a = a.mean(axis=2).astype(images[0].dtype) if a.ndim == 3 else np.repeat(a[..., None], shape[2], axis=2)
        out.append(a)
    return out


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


MISSING_LABEL = -1
UNKNOWN_LABEL = -2


def encode_target(spec: Spec, values: pd.Series) -> np.ndarray:
    """Targets as class indices (-1 missing, -2 a label the model does not know) or floats (NaN when missing)."""
    if spec.task == "classification":
        index = {c: i for i, c in enumerate(spec.classes or [])}
        return np.array(
            [MISSING_LABEL if pd.isna(v) else index.get(_label_text(v), UNKNOWN_LABEL) for v in values], dtype=int
        )
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def _label_text(v: Any) -> str:
    # 1.0 read from a file is the label "1" a model trained on integers knows.
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def embed_rows(est: Any, frame: pd.DataFrame, spec: Spec, precision: str = "fp32") -> np.ndarray | None:
    """The model's representation of ``frame`` (``embed`` of the contract), or None if it has none.

    With ``precision`` bf16 (or auto on a CPU with native bf16), the network runs under bf16
    autocast: about twice as fast on such CPUs. Reference and current rows are embedded alike,
    so the comparison stays fair.
    """
    if est is None or not (spec.text or spec.image) or not hasattr(est, "embed"):
        return None
    from contextlib import nullcontext

    from tunesmith.estimators.base import NotSupportedError

    context: Any = nullcontext()
    if precision == "bf16" or (precision == "auto" and native_bf16()):
        import torch

        context = torch.autocast("cpu", dtype=torch.bfloat16)
    try:
        with context:
            return np.asarray(est.embed(model_input(frame, spec)), dtype=np.float32)
    except NotSupportedError:
        return None


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = fh.read(1 << 16)
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
    positive: str | None = None,
    settings: MonitorSettings,
    spec: Spec | None = None,
    exclude: Sequence[str] = (),
) -> Reference:
    """Profile ``data`` (labeled where possible) as the monitor's reference for ``model``.

    ``spec`` names the input columns and, for a model given as ``None``, its task and classes
    (a server that computed the outputs itself knows them); by default they come from the
    model or the data. ``exclude`` names columns that are no inputs (a time or key column);
    columns whose values all differ (row ids) are left out too, and said so.
    """
    est = load_model(model)
    frame, source = read_data(data, "reference")
    if not len(frame):
        raise DataError("the reference data has no rows", file=source)
    rng = np.random.default_rng(settings.seed)
    if len(frame) > settings.reference_rows:
        keep = np.sort(rng.choice(len(frame), settings.reference_rows, replace=False))
        frame = frame.iloc[keep].reset_index(drop=True)
    if is_recommender(est):
        return _ranking_reference(est, model, frame, source, settings)
    if target is not None and target not in frame.columns:
        raise DataError(
            f"the reference has no target column {target!r}",
            file=None if isinstance(data, pd.DataFrame) else source,
            column=target,
            hint=f"Its columns: {', '.join(map(str, list(frame.columns)[:12]))}",
        )
    exclude = [c for c in (*(proba or ()), prediction, *exclude, settings.time_column) if c]
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
        model_task(est, spec, frame, proba, prediction, positive)
    outputs = compute_outputs(est, frame, spec, proba, prediction)
    features = derive_features(frame, spec)
    for col in spec.text:
        in_a = text_features(frame.loc[halves, col], set(other_vocab[col]))["oov"]
        features.values[f"{col}.oov"][halves] = in_a
    warnings: list[str] = []
    if spec.ids:
        warnings.append(f"left out as row ids (every value differs): {', '.join(spec.ids)}")
    y = None
    performance = None
    band = None
    if spec.target and spec.target in frame.columns and outputs.scores is not None:
        y = encode_target(spec, frame[spec.target])
        known = (y >= 0) if spec.task == "classification" else np.isfinite(y)
        unknown = int(np.sum(y == UNKNOWN_LABEL)) if spec.task == "classification" else 0
        if unknown:
            warnings.append(
                f"{unknown} reference rows have a label the model does not know; they are left out of the reference"
            )
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
        embeddings = embed_rows(est, frame.iloc[pick].reset_index(drop=True), spec, settings.embedding_precision)
    info = {**_model_info(est, model), "embedding_precision": settings.embedding_precision}
    return Reference(spec, features, outputs, y, embeddings, performance, band, len(frame), source, est, info, warnings)


def _ranking_reference(est: Any, model: Any, frame: pd.DataFrame, source: str, settings: MonitorSettings) -> Reference:
    """A recommender's reference: its rows as ids turned into figures, its recommendations, and
    the hit rate and NDCG@10 it reaches on the reference's interactions (best: a later period)."""
    view = RankingView(est)
    derived = view.features(frame)
    spec = Spec(
        numeric=[c for c in (USER_HISTORY, ITEM_POPULARITY) if c in derived.columns],
        categorical=[c for c in (USER_KNOWN, ITEM_KNOWN) if c in derived.columns],
        task="ranking",
    )
    features = derive_features(derived, spec)
    popularity, first = view.outputs(view.recommendations(frame, None))
    warnings: list[str] = []
    band = None
    window = settings.window_rows or 1000
    whole = view.realized(frame)
    if whole is not None:
        chunks = [view.realized(frame.iloc[i : i + window]) for i in range(0, len(frame) - window + 1, window)]
        values = [c["ndcg@10"] for c in chunks if c is not None]
        # Too few chunks to tell the spread: a quarter of the value, a wide band with few false alerts.
        chunk_sd = float(np.std(values)) if len(values) >= 3 else whole["ndcg@10"] / 4
        band = make_band(
            whole["ndcg@10"],
            window,
            chunk_sd,
            float("nan"),
            settings.performance_sigmas,
            settings.performance_drop,
            higher_is_better=True,
            chunks=len(values),
        )
    else:
        warnings.append("the reference has no item column of known users: NDCG@10 is not measured")
    info = {**_model_info(est, model), "ranking_metric": "ndcg@10"}
    ranking = {"view": view, "popularity": popularity, "first": first}
    return Reference(
        spec, features, Outputs(None, None), None, None, None, band, len(frame), source, est, info, warnings, ranking
    )


def _model_info(est: Any, model: Any) -> dict[str, Any]:
    if est is None:
        return {"path": None, "kind": None, "model_version": None}
    path = getattr(est, "model_path_", None) or (model if isinstance(model, (str, os.PathLike)) else None)
    version = None
    if path is not None and (Path(path) / "model.safetensors").is_file():
        from tunesmith.runs.fingerprint import model_version

        version = model_version(Path(path))
    return {"path": None if path is None else str(path), "kind": getattr(est, "kind", None), "model_version": version}
