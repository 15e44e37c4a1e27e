"""The champion/challenger gate: is the new model better on new data, and no worse on old?

Both models predict both test splits. On each split the gain of the challenger over the
champion is a paired bootstrap over the same rows (each resample scores both models on the same
rows, so the interval is the gain's, not two overlapping intervals). The challenger passes when
the lower end of its gain on the new test split is above zero (it is better, not by luck) and
the lower end of its gain on the old split is above ``-margin`` (it forgot at most ``margin``).
The decision, every figure and the fingerprints of both test sets go into the result, ready for
a run record or a registry version's notes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.schema import label_string
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.evaluate.intervals import bootstrap_mean_intervals
from tunesmith.runs.mlflow_registry import open_registry


@dataclass
class GateDecision:
    """Whether the challenger may serve, why, and the figures on both test splits."""

    accepted: bool
    reasons: list[str]
    metric: str
    margin: float
    new: dict[str, Any]
    old: dict[str, Any]
    fingerprints: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reasons": self.reasons,
            "metric": self.metric,
            "margin": self.margin,
            "new_test": self.new,
            "old_test": self.old,
            "fingerprints": self.fingerprints,
        }


MIN_TEST_ROWS = 30
"""Fewest rows of a test split the gate judges on (fewer cannot tell two models apart)."""


def _load(model: Any) -> Any:
    if hasattr(model, "predict"):
        return model
    from tunesmith.kinds import load

    return load(model)


def _frame(data: Any, what: str) -> tuple[pd.DataFrame, str]:
    """The test rows and a fingerprint of them (the file's SHA-256, or a hash of the frame)."""
    if isinstance(data, pd.DataFrame):
        digest = hashlib.sha256(pd.util.hash_pandas_object(data, index=False).to_numpy().tobytes()).hexdigest()
        return data.reset_index(drop=True), f"frame:{digest}"
    if isinstance(data, (str, os.PathLike)):
        from tunesmith.data.io import file_sha256, read_table

        return read_table(data), f"sha256:{file_sha256(data)}"
    raise ConfigError(f"must be a DataFrame or a data file, got {type(data).__name__}", key=what)


def _target_of(est: Any, target: str | None) -> str:
    schema = getattr(est, "schema_", None) or getattr(getattr(est, "base", None), "schema_", None)
    name = target or getattr(schema, "target", None)
    if not name:
        raise ConfigError("name the target column of the test data", key="target")
    return str(name)


def _row_scores(est: Any, frame: pd.DataFrame, target: str, task: str) -> np.ndarray:
    """Per row: 1/0 for a right/wrong class, or minus the absolute error (larger is better)."""
    if target not in frame.columns:
        raise DataError(f"the test data has no target column {target!r}", column=target)
    y = frame[target]
    if y.isna().any():
        row = int(np.flatnonzero(y.isna().to_numpy())[0]) + 1
        raise DataError("a test row has no label", row=row, column=target, hint="Drop unlabeled rows first")
    pred = np.asarray(est.predict(frame.drop(columns=[target])))
    if task == "regression":
        return -np.abs(pred.astype(float) - y.to_numpy(dtype=float))
    # The labels as training named them: stripped strings, whole-number floats without their .0.
    return np.array([label_string(a) == label_string(b) for a, b in zip(pred, y, strict=True)], dtype=float)


def _task(est: Any) -> str:
    if hasattr(est, "recommend"):
        raise NotSupportedError(
            "the gate compares classifiers and regressors row by row",
            hint="Compare recommenders with evaluate() on a later interaction log",
        )
    schema = getattr(est, "schema_", None) or getattr(getattr(est, "base", None), "schema_", None)
    task = getattr(schema, "task", None) or getattr(est, "task_", None)
    return "regression" if task == "regression" else "classification"


def gate(
    champion: Any,
    challenger: Any,
    new_test: Any,
    old_test: Any,
    *,
    target: str | None = None,
    margin: float = 0.01,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> GateDecision:
    """Judge ``challenger`` against ``champion`` on the new and the old test split.

    Args:
        champion, challenger: fitted estimators or model folders (any kind with ``predict``
            row by row: text, image tables with a path column, tabular, personalised).
        new_test: labeled rows of the new period, held out from the challenger's training.
        old_test: the old test split (what the champion was judged on).
        target: the label column (default: the champion's).
        margin: the largest loss on the old split the challenger may have (accuracy points
            as a fraction, or mean absolute error in target units for regression), judged
            by the lower end of its interval.

    Raises:
        NotSupportedError: a recommender (compare them on later interactions instead).
        DataError: a test split without the target or with unlabeled rows.
    """
    if margin < 0:
        raise ConfigError(f"margin must be 0 or more, got {margin}", key="margin")
    champ, chall = _load(champion), _load(challenger)
    task = _task(champ)
    if _task(chall) != task:
        raise ConfigError("the champion and the challenger do different tasks", key="challenger")
    target = _target_of(champ, target)
    metric = "accuracy" if task == "classification" else "mean absolute error"
    splits: dict[str, dict[str, Any]] = {}
    prints: dict[str, str] = {}
    for name, data in (("new", new_test), ("old", old_test)):
        frame, prints[f"{name}_test"] = _frame(data, f"{name}_test")
        if len(frame) < MIN_TEST_ROWS:
            raise DataError(
                f"the {name} test split has {len(frame)} rows; the gate needs at least {MIN_TEST_ROWS} "
                "to tell two models apart",
                hint="Wait for more labeled rows",
            )
        a = _row_scores(champ, frame, target, task)
        b = _row_scores(chall, frame, target, task)
        boot = bootstrap_mean_intervals(
            {"score": b},
            baselines={"champion": {"score": a}},
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        gain = boot["gains"].get("champion")
        if gain is None:
            raise DataError(f"the {name} test split is too small to compare the models ({len(frame)} rows)")
        sign = 1.0 if task == "classification" else -1.0  # report MAE as itself, gains as "better"
        splits[name] = {
            "rows": len(frame),
            "champion": float(sign * a.mean()),
            "challenger": float(sign * b.mean()),
            "gain": float(gain["gain"]),
            "interval": [float(x) for x in gain["ci"]],
            "warnings": list(boot.get("warnings", [])),
        }
    reasons = []
    better = splits["new"]["interval"][0] > 0
    kept = splits["old"]["interval"][0] >= -margin
    if not better:
        reasons.append(
            f"not better on the new test split: gain {splits['new']['gain']:+.4f}, "
            f"interval {splits['new']['interval'][0]:+.4f} to {splits['new']['interval'][1]:+.4f} includes 0"
        )
    if not kept:
        reasons.append(
            f"forgets the old test split: gain {splits['old']['gain']:+.4f}, interval down to "
            f"{splits['old']['interval'][0]:+.4f}, past the margin -{margin:g}"
        )
    if better and kept:
        reasons.append(
            f"better on the new test split ({splits['new']['gain']:+.4f}) and within {margin:g} on the old one"
        )
    return GateDecision(
        better and kept,
        reasons,
        metric,
        margin,
        splits["new"],
        splits["old"],
        prints,
    )


def gate_version(registry: Any, number: int, new_test: Any, old_test: Any, **options: Any) -> tuple[GateDecision, Any]:
    """Gate registry version ``number`` against the registry's champion and record the decision.

    The decision goes into the version's notes (``gate``); a rejected challenger is marked
    ``rejected`` (kept for inspection, never promoted). Returns the decision and the version.

    Raises:
        ArtifactError: the registry has no champion to compare with, or no such version.
    """
    reg = open_registry(registry)
    champion = reg.champion()
    if champion is None:
        raise ArtifactError("has no champion to compare with", path=reg.location, hint="Promote a first version")
    challenger = reg.get(number)
    if challenger.number == champion.number:
        raise ArtifactError(f"version {number} is the champion; gate another version against it", path=reg.location)
    decision = gate(champion.path, challenger.path, new_test, old_test, **options)
    record = {**decision.to_dict(), "champion": champion.number}
    if not decision.accepted:
        # Marked first: a kill between the two writes must not leave a candidate that a plain
        # `tunesmith promote` (the newest candidate) would serve.
        reg.reject(number, "; ".join(decision.reasons))
    reg.annotate(number, gate=record)
    return decision, reg.get(number)
