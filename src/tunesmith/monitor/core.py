"""``monitor()``: every signal of every window, corrected for many tests, as one result.

Signals come in four families. *input*: each input column (tabular columns as they are;
text as length, words, word length, out-of-vocabulary and non-letter shares; images as size,
brightness, contrast and edges). *representation*: the model's own embedding of a sample of
each window against a reference sample (MMD, permutation test). *output*: the model's class
probabilities (BBSD, a KS test per class) and its predicted classes (chi-square), or its
predicted values. *performance*: the accuracy (or mean absolute error) estimated without
labels, and measured where labels arrived.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.monitor.current import Current, Window
from tunesmith.monitor.frame import PREDICTION, Derived, derive_features
from tunesmith.monitor.performance import realized, threshold_at
from tunesmith.monitor.ranking import present
from tunesmith.monitor.reference import (
    MISSING_LABEL,
    UNKNOWN_LABEL,
    Outputs,
    Reference,
    compute_outputs,
    embed_rows,
    encode_target,
    inputs_frame,
)
from tunesmith.monitor.settings import EXIT_ALERT, EXIT_DRIFT, EXIT_OK, MonitorSettings
from tunesmith.monitor.stats import (
    SortedReference,
    TestResult,
    bbsd_test,
    benjamini_hochberg,
    categorical_test,
    category_codes,
    counts_of,
    lump,
    mean_shift_test,
    missing_test,
    mmd_test,
    numeric_test,
    sorted_columns,
)


@dataclass
class Signal:
    """One monitored quantity: its family, test, effect measure and threshold."""

    name: str
    family: str
    column: str | None
    test: str
    effect_name: str
    threshold: float | None
    direction: str = "above"
    band: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "column": self.column,
            "test": self.test,
            "effect_name": self.effect_name,
            "threshold": self.threshold,
            "direction": self.direction,
            "band": self.band,
        }


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class Evaluator:
    """Runs every test of every window against one reference."""

    def __init__(self, ref: Reference, settings: MonitorSettings) -> None:
        self.ref = ref
        self.s = settings
        self.signals: dict[str, Signal] = {}
        self.kept: dict[str, list[str]] = {}
        self.seen: dict[str, set[str]] = {}
        self.ref_counts: dict[str, dict[str, int]] = {}
        for name, kind in ref.features.kinds.items():
            if kind == "categorical":
                values = ref.features.values[name]
                self.kept[name] = category_codes(values, settings.max_categories)
                self.seen[name] = set(np.unique(values.astype(str)).tolist())
                self.ref_counts[name] = counts_of(lump(values, self.kept[name]))
        self.ref_classes: dict[str, int] | None = None
        # The reference side of every test is prepared once, not once per window.
        self.numeric = {
            name: SortedReference.of(ref.features.values[name])
            for name, kind in ref.features.kinds.items()
            if kind == "numeric"
        }
        scores = ref.outputs.scores
        self.ref_proba = sorted_columns(scores) if scores is not None and scores.ndim == 2 else None

    def _signal(self, name: str, **kw: Any) -> Signal:
        sig = self.signals.get(name)
        if sig is None:
            sig = self.signals[name] = Signal(name=name, **kw)
        return sig

    def _record(
        self,
        out: dict[str, dict[str, Any]],
        name: str,
        res: TestResult,
        *,
        family: str,
        column: str | None,
        threshold: float,
    ) -> None:
        """Declare the signal ``name`` (once) and keep its figures for this window."""
        self._signal(
            name, family=family, column=column, test=res.test, effect_name=res.effect_name, threshold=threshold
        )
        out[name] = _figures(res)

    def window(self, cur: Current, w: Window, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
        """Test one window; returns signal name -> raw figures (p-values not yet corrected)."""
        ref, s = self.ref, self.s
        frame = cur.frame.iloc[w.rows].reset_index(drop=True)
        if ref.ranking is not None:
            return self._ranking_window(frame, rng)
        feats = derive_features(frame, ref.spec)
        out: dict[str, dict[str, Any]] = {}
        self._inputs(feats, out, rng)
        outputs = compute_outputs(ref.model, frame, ref.spec, _proba_cols(ref), _pred_col(ref))
        scored = None
        if outputs.scores is not None:
            # Requests answered without probabilities count for the inputs only.
            finite = np.isfinite(outputs.scores.reshape(len(outputs.scores), -1)).all(axis=1)
            if not finite.all():
                scored = finite
                outputs = Outputs(
                    outputs.scores[finite], None if outputs.prediction is None else outputs.prediction[finite]
                )
                if int(finite.sum()) < 2:
                    outputs = Outputs(None, None)
        if ref.outputs.scores is not None and outputs.scores is not None:
            if ref.spec.task == "classification":
                res = bbsd_test(self.ref_proba or ref.outputs.scores, outputs.scores)
                self._record(out, "output:probabilities", res, family="output", column=None, threshold=s.output_effect)
                res = mean_shift_test(ref.outputs.scores, outputs.scores)
                self._record(out, "output:mean probability", res, family="output", column=None, threshold=s.mean_effect)
                classes = np.asarray(ref.spec.classes or [], dtype=object)
                assert ref.outputs.prediction is not None and outputs.prediction is not None
                if self.ref_classes is None:
                    self.ref_classes = counts_of(_class_names(classes, ref.outputs.prediction))
                res = categorical_test(
                    self.ref_classes, _class_names(classes, outputs.prediction), cap=s.test_rows, rng=rng
                )
                self._record(
                    out, "output:predicted class", res, family="output", column=None, threshold=s.categorical_effect
                )
            else:
                res = numeric_test(ref.outputs.scores, outputs.scores, cap=s.test_rows, rng=rng)
                self._record(out, "output:prediction", res, family="output", column=None, threshold=s.numeric_effect)
        if ref.embeddings is not None and s.embedding_rows > 0:
            pick = np.sort(rng.choice(len(frame), min(len(frame), s.embedding_rows), replace=False))
            precision = str(ref.model_info.get("embedding_precision", s.embedding_precision))  # as the reference was
            emb = embed_rows(ref.model, frame.iloc[pick].reset_index(drop=True), ref.spec, precision)
            if emb is not None and len(emb) >= 2:
                res = mmd_test(ref.embeddings, emb, permutations=s.permutations, rng=rng)
                self._record(
                    out,
                    "representation:embedding",
                    res,
                    family="representation",
                    column=None,
                    threshold=s.embedding_effect,
                )
        if scored is not None:
            frame = frame[scored].reset_index(drop=True)
            feats = Derived({k: v[scored] for k, v in feats.values.items()}, feats.kinds, feats.source)
            note = f"{int((~scored).sum())} rows answered without probabilities are left out"
            for name in out:
                if name.startswith("output:"):
                    out[name]["note"] = note
        self._performance(frame, feats, outputs, out)
        return out

    def _inputs(self, feats: Derived, out: dict[str, dict[str, Any]], rng: np.random.Generator) -> None:
        """One test per input feature (and per missing share), against the reference."""
        ref, s = self.ref, self.s
        for name, kind in feats.kinds.items():
            a, b = ref.features.values[name], feats.values[name]
            column = ref.features.source[name]
            if kind == "numeric":
                res = numeric_test(self.numeric[name], b, cap=s.test_rows, rng=rng)
                self._record(out, f"input:{name}", res, family="input", column=column, threshold=s.numeric_effect)
                miss_a, miss_b = ~np.isfinite(a), ~np.isfinite(b)
                if miss_a.any() or miss_b.any():
                    res = missing_test(miss_a, miss_b)
                    self._record(
                        out, f"input:{name}:missing", res, family="input", column=column, threshold=s.missing_effect
                    )
            else:
                kept = self.kept[name]
                res = categorical_test(
                    self.ref_counts[name], lump(b, kept, seen=self.seen[name]), cap=s.test_rows, rng=rng
                )
                self._record(out, f"input:{name}", res, family="input", column=column, threshold=s.categorical_effect)

    def _ranking_window(self, frame: pd.DataFrame, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
        """A recommender's window: who asks and what they consume, what it recommends, NDCG@10."""
        ref, s = self.ref, self.s
        assert ref.ranking is not None
        view = ref.ranking["view"]
        feats = features_of(ref, frame)
        out: dict[str, dict[str, Any]] = {}
        self._inputs(feats, out, rng)
        logged = frame[PREDICTION] if PREDICTION in frame.columns else None
        popularity, first = view.outputs(view.recommendations(frame, logged))
        res = numeric_test(ref.ranking["popularity"], popularity, cap=s.test_rows, rng=rng)
        self._record(
            out, "output:recommended popularity", res, family="output", column=None, threshold=s.numeric_effect
        )
        if self.ref_classes is None:
            self.kept["output:first"] = category_codes(ref.ranking["first"], s.max_categories)
            self.ref_classes = counts_of(lump(ref.ranking["first"], self.kept["output:first"]))
        res = categorical_test(self.ref_classes, lump(first, self.kept["output:first"]), cap=s.test_rows, rng=rng)
        self._record(
            out, "output:first recommended item", res, family="output", column=None, threshold=s.categorical_effect
        )
        band = ref.band
        measured = view.realized(frame) if band is not None else None
        if band is not None and measured is not None:
            value = measured["ndcg@10"]
            enough = measured["users"] >= 20
            threshold, past = _past(band, value, int(measured["users"]))
            bad = bool(enough and past)
            sig = self._signal(
                "performance:realized ndcg@10",
                family="performance",
                column=None,
                test="realized",
                effect_name="ndcg@10",
                threshold=band["threshold"],
                direction="below",
            )
            sig.band = [band["value"] - band["spread"], band["value"] + band["spread"]]
            note = f"{measured['users']} users with interactions" + ("" if enough else " (too few to alert)")
            if _threshold_note(band, threshold):
                note += f"; {_threshold_note(band, threshold)}"
            out[sig.name] = {"value": value, "alert": bad, "drift": bad, "p_value": None, "note": note}
        return out

    def _performance(self, frame: pd.DataFrame, feats: Any, outputs: Any, out: dict[str, dict[str, Any]]) -> None:
        ref = self.ref
        band = ref.band
        if ref.performance is None or band is None or outputs.scores is None:
            return
        metric = ref.performance.metric
        direction = ref.performance.direction
        est = ref.performance.estimate(outputs.scores, outputs.prediction, inputs_frame(feats))
        sig = self._signal(
            f"performance:estimated {metric}",
            family="performance",
            column=None,
            test="estimate",
            effect_name=metric,
            threshold=band["threshold"],
            direction=direction,
        )
        sig.band = [band["value"] - band["spread"], band["value"] + band["spread"]]
        threshold, bad = _past(band, est.value, len(outputs.scores))
        out[sig.name] = {
            "value": est.value,
            "lower": est.lower,
            "upper": est.upper,
            "alert": bad,
            "drift": bad,
            "p_value": None,
            "note": _threshold_note(band, threshold),
        }
        target = ref.spec.target
        if not target or target not in frame.columns:
            return
        y = encode_target(ref.spec, frame[target])
        labeled = (y != MISSING_LABEL) if ref.spec.task == "classification" else np.isfinite(y)
        n = int(labeled.sum())
        if not n:
            return
        # A label the model never learned is a wrong prediction, not a missing label.
        value = realized(ref.spec.task or "classification", outputs.prediction[labeled], y[labeled])
        threshold, bad = _past(band, value, n)
        enough = n >= MIN_LABELED
        notes = [f"{n} labeled rows" + ("" if enough else f" (fewer than {MIN_LABELED}: no alert)")]
        unseen = int(np.sum(y == UNKNOWN_LABEL)) if ref.spec.task == "classification" else 0
        if unseen:
            notes.append(f"{unseen} with a label the model does not know, counted as wrong")
        if _threshold_note(band, threshold):
            notes.append(str(_threshold_note(band, threshold)))
        sig = self._signal(
            f"performance:realized {metric}",
            family="performance",
            column=None,
            test="realized",
            effect_name=metric,
            threshold=band["threshold"],
            direction=direction,
        )
        out[sig.name] = {
            "value": value,
            "alert": bool(enough and bad),
            "drift": bool(enough and bad),
            "p_value": None,
            "note": "; ".join(notes),
            "labeled": n,
        }


MIN_LABELED = 30
"""Fewest labeled rows of a window whose measured performance may raise an alert."""


def _past(band: dict[str, float], value: float, n: int) -> tuple[float, bool]:
    """The threshold for ``n`` rows, and whether ``value`` is past it."""
    threshold = threshold_at(band, n)
    return threshold, bool(value < threshold if band["direction"] > 0 else value > threshold)


def _threshold_note(band: dict[str, float], threshold: float) -> str | None:
    if abs(threshold - band["threshold"]) < 1e-4:
        return None
    return f"threshold {threshold:.4f} for this window's rows"


def features_of(ref: Reference, frame: pd.DataFrame) -> Derived:
    """The comparable features of ``frame``: a recommender's rows through its view of ids."""
    if ref.ranking is None:
        return derive_features(frame, ref.spec)
    derived = ref.ranking["view"].features(frame)
    return derive_features(derived, present(ref.spec, derived))


def _proba_cols(ref: Reference) -> list[str] | None:
    return ref.model_info.get("proba_columns")


def _pred_col(ref: Reference) -> str | None:
    return ref.model_info.get("prediction_column")


def _class_names(classes: np.ndarray, idx: np.ndarray) -> np.ndarray:
    idx = np.asarray(idx)
    names = np.full(len(idx), "(unknown)", dtype=object)
    ok = (idx >= 0) & (idx < len(classes))
    names[ok] = classes[idx[ok]]
    return names


def _figures(res: TestResult) -> dict[str, Any]:
    return {"value": res.effect, "statistic": res.statistic, "p_value": res.p_value}


def decide(
    raw: list[dict[str, dict[str, Any]]], signals: Mapping[str, Signal], alpha: float
) -> list[dict[str, dict[str, Any]]]:
    """Correct every drift test of the report together; a signal drifts when its corrected
    p-value is below ``alpha`` and its effect reaches the signal's threshold."""
    keys = [(i, name) for i, w in enumerate(raw) for name, f in w.items() if f.get("p_value") is not None]
    adjusted = benjamini_hochberg(np.array([raw[i][n]["p_value"] for i, n in keys], dtype=float))
    for (i, name), q in zip(keys, adjusted, strict=True):
        f = raw[i][name]
        f["p_adjusted"] = _num(float(q))
        threshold = signals[name].threshold or 0.0
        f["drift"] = bool(np.isfinite(q) and q < alpha and f["value"] >= threshold)
        f["alert"] = False  # drift alone is not damage: alerts come from performance
    return raw


def summarise_window(w: Window, figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A window's entry of the result: its figures, whether it drifted or alerts, and why."""
    reasons = []
    for name, f in figures.items():
        if f.get("alert"):
            reasons.append(f"{name} {f['value']:.4g} crossed its threshold")
        elif f.get("drift"):
            reasons.append(f"{name} changed (effect {f['value']:.3g}, corrected p {f.get('p_adjusted', 0):.2g})")
    values = {
        name: {
            "value": _num(f.get("value")),
            "p_value": _num(f.get("p_value")),
            "p_adjusted": _num(f.get("p_adjusted")),
            "lower": _num(f.get("lower")),
            "upper": _num(f.get("upper")),
            "drift": bool(f.get("drift")),
            "alert": bool(f.get("alert")),
            "note": f.get("note"),
        }
        for name, f in figures.items()
    }
    return {
        "index": w.index,
        "label": w.label,
        "start": w.start,
        "end": w.end,
        "rows": len(w.rows),
        "values": values,
        "drift": any(v["drift"] for v in values.values()),
        "alert": any(v["alert"] for v in values.values()),
        "reasons": reasons,
    }


def status_of(windows: list[dict[str, Any]]) -> tuple[str, int]:
    """``alert`` (exit 4) when performance fell, ``drift`` (exit 3) when only inputs moved, else ``ok``."""
    if any(w["alert"] for w in windows):
        return "alert", EXIT_ALERT
    if any(w["drift"] for w in windows):
        return "drift", EXIT_DRIFT
    return "ok", EXIT_OK


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
