"""The champion/challenger gate: is the new model better on new data, and no worse on old?

Both models predict both test splits. On each split the gain of the challenger over the
champion is a paired bootstrap over the same rows (each resample scores both models on the same
rows, so the interval is the gain's, not two overlapping intervals). The challenger passes when
the lower end of its gain on the new test split is above zero (it is better, not by luck) and
the lower end of its gain on the old split is above ``-margin`` (it forgot at most ``margin``).
The decision, every figure and the fingerprints of both test sets go into the result, ready for
a run record or a registry version's notes.

Recommenders are judged per user instead of per row: each test split is a later interaction
log, and a user's score is NDCG@10 of each model's top-10 list (their stored history
excluded) against their positive items in the log. Only users both models know, and only
target items both models know, take part; the same paired bootstrap runs over those users.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.io import file_sha256, frame_sha256, read_table
from tunesmith.data.schema import row_scores
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.evaluate.intervals import bootstrap_mean_intervals
from tunesmith.kinds import load
from tunesmith.recsys.data import read_interactions
from tunesmith.recsys.metrics import ndcg_of_lists
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
"""Fewest rows (users, for recommenders) of a test split the gate judges on (fewer cannot tell
two models apart)."""

RANKING_K = 10
"""The cut-off of the recommenders' per-user metric (``ndcg@10``)."""

_USERS_PER_CALL = 512
"""Users ranked per model call: a dense users x items score matrix each, so a bounded one."""


def _load(model: Any) -> Any:
    if hasattr(model, "predict"):
        return model
    return load(model)


def _frame(data: Any, what: str) -> tuple[pd.DataFrame, str]:
    """The test rows and a fingerprint of them (the file's SHA-256, or a hash of the frame)."""
    if isinstance(data, pd.DataFrame):
        return data.reset_index(drop=True), f"frame:{frame_sha256(data)}"
    if isinstance(data, (str, os.PathLike)):
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
    return row_scores(est.predict(frame.drop(columns=[target])), y, regression=task == "regression")


def _task(est: Any) -> str:
    if hasattr(est, "recommend"):
        return "ranking"
    schema = getattr(est, "schema_", None) or getattr(getattr(est, "base", None), "schema_", None)
    task = getattr(schema, "task", None) or getattr(est, "task_", None)
    return "regression" if task == "regression" else "classification"


def _positive_rule(est: Any) -> str:
    rating = getattr(est, "min_rating", None)
    return "0/1 labels (or every interaction)" if rating is None else f"ratings from {rating:g}"


def _same_task(champ: Any, chall: Any) -> str:
    task, other = _task(champ), _task(chall)
    if task != other:
        if "ranking" in (task, other):
            raise ConfigError(
                f"the champion is a {'recommender' if task == 'ranking' else task + ' model'} and the challenger "
                f"a {'recommender' if other == 'ranking' else other + ' model'}; the gate compares two models "
                "of the same kind",
                key="challenger",
                hint="Gate a recommender against a recommender (a registry holds one kind)",
            )
        raise ConfigError("the champion and the challenger do different tasks", key="challenger")
    if task == "ranking" and getattr(champ, "min_rating", None) != getattr(chall, "min_rating", None):
        raise ConfigError(
            f"the champion's positives are {_positive_rule(champ)} and the challenger's {_positive_rule(chall)}; "
            "they cannot be judged on the same target items",
            key="challenger",
            hint="Refit the champion (Recommender.refit keeps its settings)",
        )
    return task


def _positives(est: Any, frame: pd.DataFrame, target: str | None, file: Any) -> pd.DataFrame:
    """The log's rows as string ids with a ``positive`` flag, read with the champion's columns."""
    # The fit's column names travel with the model (saved in tunesmith.json), as evaluate() reads them.
    cols = {"user": "user_id", "item": "item_id", **(getattr(est, "_columns", None) or {})}
    min_rating = getattr(est, "min_rating", None)
    if target is not None:
        cols["rating" if min_rating is not None else "label"] = target
    # Time plays no part in a set of targets: a log without the fit's time column is still judged.
    inter = read_interactions(
        frame,
        user=cols["user"],
        item=cols["item"],
        time=None,
        rating=cols.get("rating"),
        label=cols.get("label"),
        duplicates="keep",
        file=file,
    )
    codes = inter.frame
    return pd.DataFrame(
        {
            "user": inter.users[codes["user"].to_numpy()].astype(str),
            "item": inter.items[codes["item"].to_numpy()].astype(str),
            "positive": inter.positive_mask(min_rating=min_rating),
        }
    )


def _user_scores(
    champ: Any, chall: Any, frame: pd.DataFrame, target: str | None, file: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Per user both models know: NDCG@10 of the champion and of the challenger, and what was left out."""
    rows = _positives(champ, frame, target, file)
    users = set(map(str, champ.users_)) & set(map(str, chall.users_))
    items = set(map(str, champ.items_)) & set(map(str, chall.items_))
    pos = rows["positive"].to_numpy()
    known_user = rows["user"].isin(users).to_numpy()
    known_item = rows["item"].isin(items).to_numpy()
    kept = rows.loc[pos & known_user & known_item]
    targets = kept.groupby("user", sort=True)["item"].agg(set)
    with_positive = set(rows.loc[pos, "user"])
    left_out = {
        "rows_not_positive": int((~pos).sum()),
        "rows_unknown_user": int((pos & ~known_user).sum()),
        "rows_unknown_item": int((pos & known_user & ~known_item).sum()),
        "users_without_positive": int(rows["user"].nunique() - len(with_positive)),
        "users_unknown": len(with_positive - users),
        "users_without_known_item": len((with_positive & users) - set(targets.index)),
    }
    ids, wanted = [str(u) for u in targets.index], list(targets)
    scores = []
    for model in (champ, chall):
        parts = []
        for start in range(0, len(ids), _USERS_PER_CALL):
            batch = ids[start : start + _USERS_PER_CALL]
            lists = model.recommend_batch(users=batch, k=RANKING_K)
            ranked = [[str(r["item"]) for r in row] for row in lists]
            parts.append(ndcg_of_lists(ranked, wanted[start : start + _USERS_PER_CALL], k=RANKING_K))
        scores.append(np.concatenate(parts) if parts else np.zeros(0))
    return scores[0], scores[1], left_out


def _too_few_users(name: str, n: int, left_out: dict[str, int]) -> DataError:
    why = (
        f"{left_out['users_unknown']} users unknown to a model, "
        f"{left_out['users_without_known_item']} with no positive item both models know, "
        f"{left_out['users_without_positive']} with no positive interaction"
    )
    if n == 0:
        what = f"no user of the {name} test log is known to both models with a positive item both know ({why})"
    else:
        what = (
            f"the {name} test log has {n} users both models know with a positive item both know; the gate "
            f"needs at least {MIN_TEST_ROWS} to tell two recommenders apart ({why})"
        )
    return DataError(
        what,
        hint="Judge on a later log of the users and items the models were trained on, or wait for more users",
    )


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
            row by row: text, image tables with a path column, tabular, personalised), or two
            recommenders.
        new_test: labeled rows of the new period, held out from the challenger's training
            (for recommenders: an interaction log of the new period, later than what the
            challenger was refitted on).
        old_test: the old test split (what the champion was judged on; for recommenders an
            interaction log of the old period that neither model was trained on).
        target: the label column (default: the champion's); for recommenders the column that
            decides positives, the rating column with ``min_rating`` set, else a 0/1 label
            (default: the fit's; none: every interaction is positive).
        margin: the largest loss on the old split the challenger may have (accuracy points
            as a fraction, mean absolute error in target units for regression, or NDCG@10
            for recommenders), judged by the lower end of its interval.

    Recommenders are compared per user (``rows`` counts users): each user both models know
    with at least one positive item both models know in the log; both models rank the whole
    catalogue for them, their stored history excluded, and score NDCG@10 against those items
    (metric ``ndcg@10``). ``left_out`` on each split counts the users and rows that took no
    part, by reason.

    Raises:
        ConfigError: a recommender against a classifier or regressor, or two recommenders that
            count different interactions as positive.
        DataError: a test split without the target or with unlabeled rows, fewer than
            ``MIN_TEST_ROWS`` rows, or (recommenders) fewer than ``MIN_TEST_ROWS`` users
            both models know with a positive item both know.
    """
    if margin < 0:
        raise ConfigError(f"margin must be 0 or more, got {margin}", key="margin")
    champ, chall = _load(champion), _load(challenger)
    task = _same_task(champ, chall)
    if task != "ranking":
        target = _target_of(champ, target)
    metric = {"classification": "accuracy", "regression": "mean absolute error"}.get(task, f"ndcg@{RANKING_K}")
    splits: dict[str, dict[str, Any]] = {}
    prints: dict[str, str] = {}
    for name, data in (("new", new_test), ("old", old_test)):
        frame, prints[f"{name}_test"] = _frame(data, f"{name}_test")
        extra: dict[str, Any] = {}
        if task == "ranking":
            file = data if isinstance(data, (str, os.PathLike)) else None
            a, b, left_out = _user_scores(champ, chall, frame, target, file)
            if len(a) < MIN_TEST_ROWS:
                raise _too_few_users(name, len(a), left_out)
            extra = {"unit": "users", "left_out": left_out}
        else:
            if len(frame) < MIN_TEST_ROWS:
                raise DataError(
                    f"the {name} test split has {len(frame)} rows; the gate needs at least {MIN_TEST_ROWS} "
                    "to tell two models apart",
                    hint="Wait for more labeled rows",
                )
            assert target is not None
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
            raise DataError(f"the {name} test split is too small to compare the models ({len(a)} rows)")
        sign = -1.0 if task == "regression" else 1.0  # report MAE as itself, gains as "better"
        splits[name] = {
            "rows": len(a),
            "champion": float(sign * a.mean()),
            "challenger": float(sign * b.mean()),
            "gain": float(gain["gain"]),
            "interval": [float(x) for x in gain["ci"]],
            "warnings": list(boot.get("warnings", [])),
            **extra,
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
