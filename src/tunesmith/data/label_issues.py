"""Likely label errors, found by cleanlab from out-of-fold predicted probabilities.

cleanlab's confident learning needs, for every row, class probabilities from a model that
never saw that row. This module takes them as cleanlab's own API does (``pred_probs``), or
computes them from what it is given, without importing any estimator:

- ``pred_probs``: out-of-fold probabilities computed by the caller;
- ``fast``: k-fold logistic regression on an embedding matrix (given, or the frozen
  backbone's) averaged with k-fold logistic regression on TF-IDF words of the texts
  (seconds);
- ``thorough``: k-fold fine-tuning by ``fold_model``, a classifier class (or factory) the
  caller passes, each fold's model predicting the rows it was not trained on (minutes to
  hours), averaged with the fast mode's models. :func:`tunesmith.quality.find_label_issues`
  passes the text :class:`~tunesmith.FineTuner`.

Two models that see a text differently (a sentence embedding, its words) are wrong on
different clean rows but agree on a flipped one, so their average ranks flips higher than
either alone (measured by ``bench/few_labels.py``). A model that learned nothing (texts
without shared words, embeddings of noise) is left out of the average.

The result ranks every row by label quality, worst first: by default cleanlab's
self-confidence (the out-of-fold probability of the given label) after subtracting each
class's average self-confidence, so that when the noise pushes the model towards one class
the ranking is not filled with the other class's correct rows. It flags the rows cleanlab
counts as issues, each with the label the model suggests instead.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunesmith.data.schema import label_string, sorted_labels
from tunesmith.errors import ConfigError, DataError

Mode = Literal["fast", "thorough"]
MODES: tuple[str, ...] = ("fast", "thorough")
FilterBy = Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"]
RankBy = Literal["adjusted", "self_confidence"]
RANK_BY: tuple[str, ...] = ("adjusted", "self_confidence")

# Fine-tuning per fold: short, because a model trained to convergence on noisy labels starts
# to memorise the very errors it is meant to expose.
THOROUGH_DEFAULTS: dict[str, Any] = {"epochs": 2, "early_stopping": False}
# Inverse regularisation of the TF-IDF model, chosen on Rotten Tomatoes with 10% flipped labels.
TFIDF_C = 4.0
# Share of the fine-tuned model in the thorough mode's average; the fast models share the rest.
# Shares from 0.4 to 0.6 ranked Rotten Tomatoes' flips alike, so the plain half it is.
THOROUGH_FINE_TUNED_WEIGHT = 0.5


@dataclass
class LabelIssues:
    """Every row ranked by label quality, worst first.

    ``table`` has the columns ``row`` (1-based data row), ``given_label``,
    ``suggested_label`` (the out-of-fold model's most likely class), ``label_quality``
    (the rank score, 0 to 1, lowest first: see :func:`label_quality`) and ``is_issue``
    (flagged by cleanlab). ``pred_probs`` holds the out-of-fold probabilities in input
    order, columns in ``labels`` order; ``member_probs`` those of each model averaged into
    them (``details["members"]`` holds their weights).
    """

    table: pd.DataFrame
    pred_probs: np.ndarray
    labels: tuple[str, ...]
    mode: str
    folds: int
    seconds: float
    oof_accuracy: float
    details: dict[str, Any] = field(default_factory=dict)
    member_probs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def issues(self) -> pd.DataFrame:
        """Only the flagged rows, worst first."""
        return self.table[self.table["is_issue"]].reset_index(drop=True)

    @property
    def n_issues(self) -> int:
        """How many rows are flagged."""
        return int(self.table["is_issue"].sum())

    def flagged_rows(self) -> list[int]:
        """1-based data rows of the flagged issues, worst first."""
        return [int(r) for r in self.issues["row"]]

    def to_dict(self, max_rows: int = 200) -> dict[str, Any]:
        """JSON-safe summary with the worst ``max_rows`` flagged rows."""
        shown = self.issues.head(max_rows)
        return {
            "mode": self.mode,
            "folds": self.folds,
            "n_rows": len(self.table),
            "n_issues": self.n_issues,
            "issue_fraction": self.n_issues / max(1, len(self.table)),
            "out_of_fold_accuracy": self.oof_accuracy,
            "seconds": self.seconds,
            "details": self.details,
            "issues": [
                {
                    "row": int(row),
                    "given_label": str(given),
                    "suggested_label": str(suggested),
                    "label_quality": float(quality),
                }
                for row, given, suggested, quality in zip(
                    shown["row"].tolist(),
                    shown["given_label"].tolist(),
                    shown["suggested_label"].tolist(),
                    shown["label_quality"].tolist(),
                    strict=True,
                )
            ],
        }


def _check_inputs(texts: Sequence[str], labels: Sequence[Any], folds: int, mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown label-error mode {mode!r}; use one of {', '.join(MODES)}", key="mode")
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels")
    if folds < 2:
        raise ConfigError(f"folds must be at least 2, got {folds}", key="folds")


def _encode(labels: Sequence[Any], classes: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    as_str = [label_string(v) for v in labels]
    names = tuple(classes) if classes is not None else sorted_labels(as_str)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({s for s in as_str if s not in index})
    if unknown:
        raise DataError(f"labels {unknown[:5]} are not among the classes {list(names)}")
    return np.asarray([index[s] for s in as_str], dtype=np.int64), names


def _folds(y: np.ndarray, folds: int, seed: int, groups: Sequence[Any] | None) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(y)
    present = counts[counts > 0]
    if present.min() < folds:
        small = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        raise DataError(
            f"class index {small} has {int(present.min())} rows, fewer than folds={folds}",
            hint="Lower folds, or merge or drop the rare class first",
        )
    if groups is not None:
        n_groups = len(set(map(str, groups)))
        if n_groups < folds:
            raise DataError(
                f"{n_groups} group(s) cannot fill folds={folds} (each group stays in one fold)",
                hint="Lower folds or give more groups",
            )
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y, groups=np.asarray(groups))]
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y)]


@contextmanager
def _many_classes_allowed() -> Iterator[None]:
    """Silence scikit-learn's guess that many classes on few rows mean regression: ``y`` holds class indices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        yield


def fast_out_of_fold(
    embeddings: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    seed: int = 0,
    C: float = 1.0,
) -> np.ndarray:
    """Out-of-fold class probabilities of standardized embeddings + logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(y), n_classes), dtype=np.float64)
    for train_idx, test_idx in splits:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
        with _many_classes_allowed():
            model.fit(embeddings[train_idx], y[train_idx])
        probs[np.ix_(test_idx, model[-1].classes_)] = model.predict_proba(embeddings[test_idx])
    return probs


def text_out_of_fold(
    texts: Sequence[str],
    y: np.ndarray,
    n_classes: int,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    seed: int = 0,
    C: float = TFIDF_C,
) -> np.ndarray | None:
    """Out-of-fold class probabilities of logistic regression on TF-IDF word uni- and bigrams.

    None when a fold's texts share no word (ids, empty strings): there is nothing to learn.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = [str(t) for t in texts]
    probs = np.zeros((len(y), n_classes), dtype=np.float64)
    for train_idx, test_idx in splits:
        # Words seen in two texts at least: a word of one text only fits that row's label.
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        try:
            x_train = vectorizer.fit_transform([texts[i] for i in train_idx])
        except ValueError:
            return None
        model = LogisticRegression(C=C, max_iter=2000, random_state=seed)
        with _many_classes_allowed():
            model.fit(x_train, y[train_idx])
        probs[np.ix_(test_idx, model.classes_)] = model.predict_proba(
            vectorizer.transform([texts[i] for i in test_idx])
        )
    return probs


def _informative(probs: np.ndarray, y: np.ndarray) -> bool:
    """Whether out-of-fold ``probs`` beat the class shares on the given labels, by two standard errors.

    The score is the mean probability of the given label: robust to the over-confidence of a
    fine-tuned model, which would lose to the class shares on log loss with 20% of labels wrong.
    """
    given = probs[np.arange(len(y)), y]
    shares = np.bincount(y, minlength=probs.shape[1]) / len(y)
    chance = float(np.sum(shares**2))
    spread = float(np.std(given)) / np.sqrt(len(y))
    return float(given.mean()) > chance + 2.0 * spread


def blend_out_of_fold(
    members: Mapping[str, np.ndarray | None],
    y: np.ndarray,
    weights: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Weighted average of the members' out-of-fold probabilities, and the weights used.

    A member that is missing (None) or learned nothing (its mean probability of the given
    label does not beat the class shares) gets weight 0; the others share ``weights``
    (default: equal), renormalised. If no member learned anything, all present ones count.
    """
    present = {name: p for name, p in members.items() if p is not None}
    if not present:
        raise ValueError("blend_out_of_fold needs at least one member's probabilities")
    kept = {name: p for name, p in present.items() if _informative(p, y)} or present
    raw = {name: float((weights or {}).get(name, 1.0)) for name in kept}
    total = sum(raw.values())
    if total <= 0:
        raise ConfigError(f"member weights {raw} must add up to more than 0", key="weights")
    used = {name: (raw[name] / total if name in kept else 0.0) for name in members}
    probs = sum(used[name] * p for name, p in kept.items())
    assert isinstance(probs, np.ndarray)
    return probs, used


def thorough_settings(
    n_classes: int, *, seed: int = 0, progress: bool = True, fit_params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Settings of each fold's fine-tuning: short, on every row of the other folds, no extras."""
    return {
        **THOROUGH_DEFAULTS,
        "seed": seed,
        "progress": progress,
        **dict(fit_params or {}),
        # Class indices are the labels here: without this, 21+ integer classes read as regression.
        "task": "binary" if n_classes == 2 else "multiclass",
        # Every row of the other folds trains; the held-out fold is what gets scored.
        "valid_size": 0.0,
        "test_size": 0.0,
        "baselines": False,
        "runs_dir": None,
    }


def thorough_out_of_fold(
    texts: Sequence[str],
    y: np.ndarray,
    n_classes: int,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    fold_model: Callable[..., Any],
    seed: int = 0,
    fit_params: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Out-of-fold class probabilities of ``fold_model`` fine-tuned on the other folds.

    ``fold_model(**settings)`` must give an unfitted classifier with ``fit(texts, y)``,
    ``predict_proba(texts)`` and ``classes_`` (the text :class:`~tunesmith.FineTuner` does);
    the settings are :func:`thorough_settings`.
    """
    params = thorough_settings(n_classes, seed=seed, progress=progress, fit_params=fit_params)
    texts = list(texts)
    probs = np.zeros((len(y), n_classes), dtype=np.float64)
    for k, (train_idx, test_idx) in enumerate(splits, 1):
        if progress:
            print(f"label errors (thorough): fold {k}/{len(splits)}, training on {len(train_idx)} rows", flush=True)
        model = fold_model(**params).fit([texts[i] for i in train_idx], y[train_idx].tolist())
        assert model.classes_ is not None
        columns = np.asarray([int(c) for c in model.classes_], dtype=np.int64)
        probs[np.ix_(test_idx, columns)] = model.predict_proba([texts[i] for i in test_idx])
    return probs


def label_quality(y: np.ndarray, pred_probs: np.ndarray, *, rank_by: RankBy = "adjusted") -> np.ndarray:
    """Per row, 0 to 1, lowest first: how likely its given label ``y`` is right.

    ``self_confidence``: the out-of-fold probability of the given label. ``adjusted``
    (default): cleanlab's adjusted self-confidence (``get_label_quality_scores(...,
    adjust_pred_probs=True)``): each class's average self-confidence among the rows labeled
    with it is subtracted before renormalising. With class-conditional noise the model leans
    to the class the noise feeds, so plain self-confidence ranks the other class's correct
    rows too high; the adjustment takes that lean out.
    """
    if rank_by not in RANK_BY:
        raise ConfigError(f"unknown ranking {rank_by!r}; use one of {', '.join(RANK_BY)}", key="rank_by")
    probs = np.asarray(pred_probs, dtype=np.float64)
    given = probs[np.arange(len(y)), y]
    if rank_by == "self_confidence":
        return given
    n_classes = probs.shape[1]
    thresholds = np.zeros(n_classes, dtype=np.float64)
    for c in np.unique(y):
        thresholds[c] = probs[y == c, c].mean()
    # Subtract, shift by the largest threshold so nothing is negative, renormalise, as cleanlab
    # does; a class no row is labeled with subtracts nothing (cleanlab would subtract 2, which
    # squeezes every score towards 1/(K-1)).
    shift = float(thresholds.max())
    denominator = 1.0 - float(thresholds.sum()) + n_classes * shift
    return np.asarray((given - thresholds[y] + shift) / denominator, dtype=np.float64)


def rank_label_issues(
    y: np.ndarray,
    pred_probs: np.ndarray,
    *,
    filter_by: FilterBy = "prune_by_noise_rate",
    rank_by: RankBy = "adjusted",
) -> tuple[np.ndarray, np.ndarray]:
    """(is_issue mask from cleanlab's confident learning, :func:`label_quality` scores)."""
    from cleanlab.filter import find_label_issues as cl_find

    probs = np.clip(pred_probs, 1e-12, None)
    probs = probs / probs.sum(axis=1, keepdims=True)
    quality = label_quality(y, probs, rank_by=rank_by)
    mask = cl_find(labels=y, pred_probs=probs, filter_by=filter_by, n_jobs=1)
    return np.asarray(mask, dtype=bool), quality


def issues_from_pred_probs(
    labels: Sequence[Any],
    pred_probs: np.ndarray,
    *,
    classes: Sequence[str] | None = None,
    rows: Sequence[int] | np.ndarray | None = None,
    filter_by: FilterBy = "prune_by_noise_rate",
    rank_by: RankBy = "adjusted",
    mode: str = "given",
    folds: int = 0,
    seconds: float = 0.0,
    details: Mapping[str, Any] | None = None,
) -> LabelIssues:
    """Rank rows by label quality from out-of-fold ``pred_probs`` (cleanlab's own input).

    ``pred_probs`` has one row per label and one column per class in ``classes`` order
    (default: the sorted distinct labels); each row must come from a model that never saw it.
    ``rank_by`` is the score of :func:`label_quality`.
    """
    y, names = _encode(labels, classes)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(y), len(names)):
        raise DataError(
            f"pred_probs has shape {probs.shape}, expected ({len(y)}, {len(names)}): one row per label, "
            "one column per class",
            hint="Pass out-of-fold probabilities with columns in the order of classes",
        )
    return _build(y, names, probs, rows, filter_by, rank_by, mode, folds, seconds, details)


def _build(
    y: np.ndarray,
    names: tuple[str, ...],
    probs: np.ndarray,
    rows: Sequence[int] | np.ndarray | None,
    filter_by: FilterBy,
    rank_by: RankBy,
    mode: str,
    folds: int,
    seconds: float,
    details: Mapping[str, Any] | None,
    member_probs: Mapping[str, np.ndarray] | None = None,
) -> LabelIssues:
    mask, quality = rank_label_issues(y, probs, filter_by=filter_by, rank_by=rank_by)
    suggested = probs.argmax(axis=1)
    row_numbers = np.asarray(rows if rows is not None else np.arange(1, len(y) + 1), dtype=np.int64)
    table = pd.DataFrame(
        {
            "row": row_numbers,
            "given_label": [names[i] for i in y],
            "suggested_label": [names[i] for i in suggested],
            "label_quality": quality,
            "is_issue": mask,
        }
    )
    table = table.sort_values(["label_quality", "row"], kind="stable").reset_index(drop=True)
    return LabelIssues(
        table=table,
        pred_probs=probs,
        labels=names,
        mode=mode,
        folds=folds,
        seconds=seconds,
        oof_accuracy=float(np.mean(suggested == y)),
        details={"filter_by": filter_by, "rank_by": rank_by, **dict(details or {})},
        member_probs=dict(member_probs or {}),
    )


def find_label_issues(
    texts: Sequence[str],
    labels: Sequence[Any],
    *,
    mode: Mode = "fast",
    folds: int = 5,
    seed: int = 0,
    backbone: str = "minilm-l6",
    rows: Sequence[int] | np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
    embeddings: np.ndarray | None = None,
    fit_params: Mapping[str, Any] | None = None,
    filter_by: FilterBy = "prune_by_noise_rate",
    max_length: int = 128,
    progress: bool = True,
    fold_model: Callable[..., Any] | None = None,
    rank_by: RankBy = "adjusted",
    ensemble: bool = True,
) -> LabelIssues:
    """Rank rows by how likely their label is wrong; flag the likely errors.

    The thorough mode fine-tunes ``fold_model`` (a classifier class such as
    :class:`~tunesmith.FineTuner`) per fold; :func:`tunesmith.quality.find_label_issues`
    passes it. With precomputed out-of-fold probabilities use :func:`issues_from_pred_probs`.

    Parameters
    ----------
    texts, labels:
        One input text and its given label per row.
    mode:
        ``"fast"`` (logistic regression on frozen embeddings and on TF-IDF words) or
        ``"thorough"`` (k-fold fine-tuning with ``fit_params`` as
        :class:`~tunesmith.FineTuner` settings, by default 2 epochs per fold, averaged
        with the fast models).
    folds, seed:
        Stratified k-fold cross-validation; ``groups`` keeps each group in one fold.
    rows:
        The 1-based data row of each input (default ``1..n``), reported in the table.
    classes:
        All class names in index order (default: the sorted distinct labels).
    embeddings:
        Precomputed frozen embeddings (else computed with ``backbone`` when needed: always
        in the fast mode, in the thorough mode with ``ensemble``).
    filter_by:
        cleanlab's rule for counting issues (``prune_by_noise_rate`` by default).
    rank_by:
        The ranking score (:func:`label_quality`): ``"adjusted"`` (default) or
        ``"self_confidence"``.
    ensemble:
        Average the out-of-fold probabilities of several models (:func:`blend_out_of_fold`):
        the fast mode adds TF-IDF logistic regression to the embedding model, the thorough
        mode adds both to the fine-tuned one (at half the weight together). ``False`` keeps
        one model per mode, as before.
    """
    _check_inputs(texts, labels, folds, mode)
    if rank_by not in RANK_BY:
        raise ConfigError(f"unknown ranking {rank_by!r}; use one of {', '.join(RANK_BY)}", key="rank_by")
    started = time.perf_counter()
    y, names = _encode(labels, classes)
    n_classes = len(names)
    if len(np.unique(y)) < 2:
        raise DataError("label errors need at least two classes; the data holds one")
    splits = _folds(y, folds, seed, groups)
    members: dict[str, np.ndarray | None] = {}
    if mode == "thorough":
        if fold_model is None:
            raise ConfigError(
                "the thorough label-error search fine-tunes a model per fold and needs one to fine-tune",
                key="mode",
                hint="Call tunesmith.quality.find_label_issues, or pass fold_model=FineTuner",
            )
        params = {"backbone": backbone, "max_length": max_length, **dict(fit_params or {})}
        members["fine_tuned"] = thorough_out_of_fold(
            texts, y, n_classes, splits, fold_model=fold_model, seed=seed, fit_params=params, progress=progress
        )
    if mode == "fast" or ensemble:
        if embeddings is None:
            # Imported here so that reading data does not load torch.
            from tunesmith.backbones.embed import embed_texts

            embeddings = embed_texts(texts, backbone, max_length=max_length, progress=progress)
        if len(embeddings) != len(y):
            raise DataError(f"{len(embeddings)} embeddings for {len(y)} rows")
        members["embeddings"] = fast_out_of_fold(
            np.asarray(embeddings, dtype=np.float64), y, n_classes, splits, seed=seed
        )
    if ensemble:
        members["tfidf"] = text_out_of_fold(texts, y, n_classes, splits, seed=seed)
    fast = {name: p for name, p in members.items() if name != "fine_tuned"}
    probs, used = blend_out_of_fold(fast, y) if fast else (np.zeros(0), {})
    if mode == "thorough":
        # The fast models together weigh as much as the fine-tuned one (when they learned anything).
        top = {"fine_tuned": members["fine_tuned"], "fast": probs if fast else None}
        share = {"fine_tuned": THOROUGH_FINE_TUNED_WEIGHT, "fast": 1.0 - THOROUGH_FINE_TUNED_WEIGHT}
        probs, top_used = blend_out_of_fold(top, y, share)
        used = {"fine_tuned": top_used["fine_tuned"], **{k: v * top_used["fast"] for k, v in used.items()}}
    seconds = time.perf_counter() - started
    kept = {name: p for name, p in members.items() if p is not None}
    details = {"backbone": backbone, "members": used}
    return _build(y, names, probs, rows, filter_by, rank_by, mode, folds, seconds, details, kept)
