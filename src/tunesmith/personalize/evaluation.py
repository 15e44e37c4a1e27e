"""Scoring a Personalizer on held-out rows per user: shared model, personalised, collaborative filtering."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from tunesmith.data.schema import require_column
from tunesmith.errors import ConfigError, DataError
from tunesmith.personalize.baselines import CollaborativeBaseline
from tunesmith.personalize.settings import softmax
from tunesmith.personalize.store import adapter_key

__all__ = ["evaluate_personalizer"]

_METRICS = ("accuracy_shared", "accuracy_personal", "auc_shared", "auc_personal", "auc_cf")


def evaluate_personalizer(
    host: Any,
    data: pd.DataFrame | str | os.PathLike[str],
    *,
    train: pd.DataFrame | str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """What :meth:`Personalizer.evaluate` returns (see there)."""
    host._open()
    df, file = host._read(data)
    assert host.base.schema_ is not None
    target = host.base.schema_.target
    require_column(df, host.user_column, "user", file)
    require_column(df, target, "target", file)
    y, known = host._targets(df, target)
    df, y = df.loc[known].reset_index(drop=True), y[known]
    if not len(df):
        raise DataError("no labeled rows to evaluate", file=file, hint="Give rows with the target column filled")
    personal, levels = host.predict_routed(df)
    _, logits = host.shared_outputs(df)
    shared = softmax(logits)
    binary = len(host.labels) == 2
    cf, cf_info = _baseline(host, train, df, target) if train is not None else (None, None)
    records = []
    for user, idx in df.groupby(df[host.user_column].astype(str)).indices.items():
        yt = y[idx]
        rec: dict[str, Any] = {"user": user, "rows": len(idx), "level": levels[idx[0]]}
        key = adapter_key("user", user)
        info = host.store.info(key) if key in host.store else {}
        rec["train_rows"] = int(info.get("rows_train", 0))
        rec["kind"] = info.get("kind") if levels[idx[0]] == "user" else None
        for name, proba in (("shared", shared), ("personal", personal)):
            rec[f"accuracy_{name}"] = float(np.mean(proba[idx].argmax(axis=1) == yt))
            if binary and len(np.unique(yt)) == 2:
                rec[f"auc_{name}"] = float(roc_auc_score(yt, proba[idx, 1]))
        if cf is not None and binary and len(np.unique(yt)) == 2:
            rec["auc_cf"] = float(roc_auc_score(yt, cf[idx]))
        records.append(rec)
    table = pd.DataFrame(records)

    def means(frame: pd.DataFrame) -> dict[str, Any]:
        out: dict[str, Any] = {"users": len(frame)}
        for col in _METRICS:
            if col in frame.columns and frame[col].notna().any():
                out[col] = float(frame[col].mean())
        return out

    bins = pd.cut(table["train_rows"], [-1, 0, 19, 49, np.inf], labels=["none", "<20", "20-49", "50+"])
    summary = {
        "all": means(table),
        "by_train_rows": {str(b): means(g) for b, g in table.groupby(bins, observed=True)},
        "by_kind": {str(k): means(g) for k, g in table.groupby(table["kind"].fillna("shared"))},
    }
    result = {
        "users": table,
        "summary": summary,
        "levels": pd.Series(levels).value_counts().to_dict(),
        "dropped": {"unknown_or_missing_label": int((~known).sum())},
    }
    if cf_info is not None:
        result["cf"] = cf_info
    return result


def _baseline(host: Any, train: Any, rows: pd.DataFrame, target: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Collaborative-filtering scores of ``rows`` (probability of the positive class), fitted on ``train``."""
    if not host.item_column:
        raise ConfigError(
            "a collaborative-filtering baseline needs the items: this Personalizer has no item_column",
            key="item_column",
            hint="Set item_column, or evaluate without train=",
        )
    if len(host.labels) != 2:
        raise ConfigError("the collaborative-filtering baseline scores two-class labels only", key="train")
    frame, file = host._read(train)
    require_column(frame, host.user_column, "user", file)
    require_column(frame, host.item_column, "item", file)
    require_column(frame, target, "target", file)
    # The labels as the adapters saw them: read as the shared model names them, unknown ones left out.
    y, known = host._targets(frame, target)
    liked = "__tunesmith_positive__"
    frame = frame.loc[known].assign(**{liked: y[known] == 1})
    base = CollaborativeBaseline(
        host.user_column, host.item_column, liked, True, time_column=host.time_column,
        valid_fraction=host.valid_fraction, seed=host.seed,
    )  # fmt: skip
    base.fit(frame)
    info = {"chosen": base.chosen_, "validation": base.validation_, "seconds": base.fit_seconds_}
    return base.score_rows(rows), info
