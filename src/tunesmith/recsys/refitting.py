"""Refitting a fitted recommender on a new interaction log without forgetting the old one.

:meth:`~tunesmith.recsys.recommender.Recommender.refit` hands its work to :func:`refit_model`,
which returns what the challenger is made of (:class:`RefitResult`); the fitted recommender
it starts from is only read.

* **Ids grow.** Users and items first seen in the new log (or the replay log) get codes after
  the current ones; the current rows of every table are copied, new rows start from the mean
  of the current item rows (items) or small random values (users).
* **History is old + new.** Each user's stored history gets their new interactions appended;
  it is what ranking reads and what is masked. It is also the context of the new hold-out, so
  a returning user is judged on everything they did.
* **Hold-outs as fit makes them.** In the new log, each user's last positive interaction is the
  test target and the one before it the validation target (early stopping, WiSE-FT's alpha);
  training sees only what comes before. The replay log's last positive per user is the old
  validation target; replayed rows are drawn from the rows before its last two positives
  (the fit's own hold-outs when the replay log is the log it was fitted on).
* **Trainable models** (BPR-MF, SASRec) continue from copies of their weights for fewer epochs,
  on the new training rows plus ``replay_ratio`` times as many replayed old rows, with L2-SP
  toward the current weights and a WiSE-FT interpolation of the rows both models have, as the
  :class:`~tunesmith.train.continual.RefitPlan` says.
* **Closed-form models** (EASE, item-kNN, popularity) are solved again on the old and new
  interactions together: for them that is the whole refit (replay, L2-SP and WiSE-FT do not
  apply, and ``refit_info_`` says so).
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from tunesmith.config import validate_settings
from tunesmith.data.io import read_table
from tunesmith.data.replay import check_new_data
from tunesmith.errors import ConfigError, DataError
from tunesmith.recsys.bpr import BPRMF, BPRAnchor
from tunesmith.recsys.data import Interactions, read_interactions
from tunesmith.recsys.metrics import evaluate_ranking
from tunesmith.recsys.report import data_sha256
from tunesmith.recsys.sequential import SequentialRecommender, phase_settings
from tunesmith.recsys.settings import RecommenderSettings
from tunesmith.recsys.split import HoldOut, RecSplit, leave_last_out
from tunesmith.recsys.training import EpochReporter, flags_by_user
from tunesmith.train.continual import (
    AnchorPenalty,
    RefitPlan,
    RefitSettings,
    anchor_state,
    choose_alpha,
    interpolate_state,
)

__all__ = ["LORA_HINT", "FittedRecommender", "RefitResult", "model_fingerprint", "refit_model"]

LORA_HINT = "Use method='auto', 'l2sp', 'replay', 'wise' or 'naive': a recommender's tables take no adapters"

ROLES = ("user", "item", "time", "rating", "label")
_TOO_SHORT = (
    "Each user's last two positive interactions of the new log are held out (test and validation), "
    "as fit does: give the new log three or more interactions for some users"
)


class FittedRecommender(Protocol):
    """What a refit reads of the recommender it continues (it never writes to it)."""

    model_: Any
    users_: np.ndarray
    items_: np.ndarray
    history_indptr_: np.ndarray
    history_indices_: np.ndarray

    @property
    def config(self) -> RecommenderSettings: ...

    @property
    def _columns(self) -> Mapping[str, Any]: ...


@dataclass
class RefitResult:
    """The parts of a refitted recommender: model, grown id maps and histories, and the record.

    ``split`` is the new log's hold-out (its ``test`` scores the challenger as fit's does);
    ``train_matrix`` the users x items matrix the model trained on (the popularity baseline's
    input); ``info`` the contract's ``refit_info_`` without ``seconds``, which the estimator
    adds once the challenger is scored.
    """

    model: Any
    users: np.ndarray
    items: np.ndarray
    history_indptr: np.ndarray
    history_indices: np.ndarray
    content: np.ndarray | None
    split: RecSplit
    train_matrix: sp.csr_matrix
    data_report: dict[str, Any]
    training: dict[str, Any]
    history: list[dict[str, Any]]
    info: dict[str, Any]


def refit_model(
    current: FittedRecommender,
    data: Any,
    y: Any = None,
    *,
    replay: Any = None,
    target: str | None = None,
    settings: Mapping[str, Any],
) -> RefitResult:
    """Continue ``current`` on the new interaction log ``data``; see the module's description.

    Raises:
        DataError: an empty log, a column the fit read that the log lacks (named), a bad value,
            or a new log too short to hold out each user's last two positives.
        ConfigError: ``y``, or a setting that is not a field of ``RefitSettings``.
        ConfigError: ``method='lora'`` (the estimator raises NotSupportedError before this).
    """
    if y is not None:
        raise ConfigError(
            "a recommender is refitted on an interaction table, not on y", key="y", hint="Pass the new log as data"
        )
    s = validate_settings(RefitSettings, dict(settings))
    if s.method == "lora":  # the estimator refuses it first, with the contract's NotSupportedError
        raise ConfigError("a recommender's tables take no adapters", key="method", hint=LORA_HINT)
    plan = s.plan(has_replay=replay is not None)
    cfg = current.config
    columns = _columns(current, target)
    new_log = _read_log(data, columns, "new data")
    old_log = _read_log(replay, columns, "replay data") if replay is not None else None
    logs = [new_log] + ([old_log] if old_log is not None else [])
    users = _grown_ids(current.users_, [log.users for log in logs])
    items = _grown_ids(current.items_, [log.items for log in logs])
    n_users, n_items = len(users), len(items)
    n_old_users, n_old_items = len(current.users_), len(current.items_)
    stored = (current.history_indptr_, current.history_indices_)

    new = _recode(new_log, users, items, cfg.min_rating)
    split = _new_split(new, stored, users, items)
    new_train = split.train.take(split.train.frame["part"].to_numpy() == 1)
    old: Interactions | None = None
    old_valid: HoldOut | None = None
    pool: Interactions | None = None
    if old_log is not None:
        old = _recode(old_log, users, items, cfg.min_rating)
        try:
            old_split = leave_last_out(old, positive=old.frame["positive"].to_numpy())
            old_valid, pool = old_split.test, old_split.train
        except DataError:  # too short to hold anything out: all of it may be replayed
            pool = old
    rng = np.random.default_rng(s.seed)
    replayed = np.zeros(len(pool) if pool is not None else 0, dtype=bool)
    if plan.replay and pool is not None:
        n = min(len(pool), round(plan.replay_ratio * len(new_train)))
        replayed[rng.choice(len(pool), size=n, replace=False)] = True

    parent = current.model_
    closed_form = not isinstance(parent, (BPRMF, SequentialRecommender))
    seen = _union(_stored_matrix(*stored, n_users, n_items), split.train.matrix(), _matrix(pool))
    reporter = EpochReporter([], record=None, enabled=cfg.progress)
    alpha: float | None = None
    trials: list[dict[str, Any]] = []
    run: dict[str, Any] = {"epochs": None, "lr": None, "best_epoch": None}
    started = time.perf_counter()
    with reporter, threadpool_limits(cfg.threads):
        if closed_form:
            train_matrix = _without_targets(seen, old_valid)
            model = type(parent)(**parent.params()).fit(train_matrix)
        else:
            train_matrix = _train_rows(new_train, pool, replayed)
            if not train_matrix.nnz:
                raise DataError("the new log leaves no interaction to train on", hint=_TOO_SHORT)
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            model, run, mix = _train(parent, cfg, s, plan, split, pool, replayed, train_matrix, seen, reporter)
    train_seconds = time.perf_counter() - started
    scored: dict[str, float] = {}  # the served model's hold-out scores WiSE-FT already measured
    if not closed_form:
        alpha, trials, by_alpha = _choose(mix, plan, split.valid, old_valid, n_items)
        model = mix(alpha) if alpha is not None else model
        scored = by_alpha.get(alpha, {}) if alpha is not None else {}

    indptr, indices = _histories(stored, new, old, n_users)
    # A closed-form solve takes every old row; a trainable model the replayed sample.
    old_rows = len(stored[1]) + (len(pool) if pool is not None else 0) if closed_form else int(replayed.sum())
    info: dict[str, Any] = {
        "plan": plan.to_dict(),
        "rows": {
            "new": len(new_log),
            "new_train": len(new_train),
            "new_valid": _targets(split.valid),
            "new_test": _targets(split.test),
            "replay_train": old_rows,
            "old_valid": _targets(old_valid),
            "train": len(new_train) + old_rows,
            "new_users": n_users - n_old_users,
            "new_items": n_items - n_old_items,
        },
        "replay": {
            "old_rows": len(old_log) if old_log is not None else 0,
            "replayed": int(replayed.sum()),
            "sampled_from": len(pool) if pool is not None else 0,
        },
        "alpha": alpha,
        "alpha_trials": trials,
        "train_seconds": train_seconds,
        "data": {"new_sha256": data_sha256(data), "replay_sha256": data_sha256(replay) if replay is not None else None},
        "closed_form": closed_form,
        **run,
        "scores": _scores(parent, model, split, old_valid, n_items, scored),
        "parent": {
            "fingerprint": model_fingerprint(parent, current.users_, current.items_),
            "model_version": (getattr(current, "saved_info_", None) or {}).get("model_version"),
        },
        "fingerprint": model_fingerprint(model, users, items),
    }
    if closed_form:
        info["note"] = (
            f"{type(parent).__name__} is solved in closed form: its refit is a fresh solve on the old and new "
            "interactions together (every stored history plus the new training rows and the replay log); "
            "replay sampling, L2-SP and WiSE-FT do not apply"
        )
    content = _content(model)
    return RefitResult(
        model=model,
        users=users,
        items=items,
        history_indptr=indptr,
        history_indices=indices,
        content=content,
        split=replace(split, strategy="refit_leave_last_out"),
        train_matrix=train_matrix,
        data_report={
            "rows_in": new_log.report.get("rows_in"),
            "rows_out": len(indices),
            "refit": {"new": new_log.report, "replay": old_log.report if old_log is not None else None},
        },
        training={"refit": True, "seconds": train_seconds, **{k: v for k, v in run.items() if v is not None}},
        history=reporter.history,
        info=info,
    )


def model_fingerprint(model: Any, users: np.ndarray, items: np.ndarray) -> str:
    """A short content hash of a recommender's model and id lists (a refit's ``parent``).

    It names a model held only in memory as well as a saved one, and is the same after a save
    and a load (the arrays are stored as they are; training reports are left out).
    """
    digest = hashlib.sha256()
    arrays, _ = model.state()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    for ids in (users, items):
        digest.update("\x1f".join(str(x) for x in ids).encode())
    return digest.hexdigest()[:12]


# --- reading and re-coding the logs ----------------------------------------------------------------


def _columns(current: FittedRecommender, target: str | None) -> dict[str, Any]:
    """The fit's columns; ``target`` renames the one that decides positives, as in fit."""
    cols = {**{"user": "user_id", "item": "item_id", "time": None}, **dict(current._columns)}
    if target is not None:
        cols["rating" if current.config.min_rating is not None else "label"] = target
    return {role: cols.get(role) for role in ROLES}


def _read_log(data: Any, columns: Mapping[str, Any], what: str) -> Interactions:
    if isinstance(data, (str, Path)):
        frame, file = read_table(data), data
    elif isinstance(data, pd.DataFrame):
        frame, file = data, None
    else:
        key = "replay" if what.startswith("replay") else "data"
        raise ConfigError(f"the {what} must be a path or a pandas DataFrame, got {type(data).__name__}", key=key)
    check_new_data(frame, columns=[c for c in columns.values() if c], target=None, labels=None, file=file, what=what)
    return read_interactions(frame, **columns, file=file)


def _grown_ids(current: np.ndarray, found: Sequence[np.ndarray]) -> np.ndarray:
    """The current ids, then the ids first seen in ``found`` (sorted), so current codes keep their meaning."""
    known = {str(x) for x in current}
    extra = sorted({str(x) for ids in found for x in ids} - known)
    return np.concatenate([np.asarray([str(x) for x in current], dtype=object), np.asarray(extra, dtype=object)])


def _recode(log: Interactions, users: np.ndarray, items: np.ndarray, min_rating: float | None) -> Interactions:
    """``log`` in the grown codes, with ``part`` 1 (a logged row) and ``positive`` flags."""
    f = log.frame
    user_of = pd.Index(users).get_indexer(log.users.astype(str))
    item_of = pd.Index(items).get_indexer(log.items.astype(str))
    frame = pd.DataFrame(
        {
            "user": user_of[f["user"].to_numpy()].astype(np.int32),
            "item": item_of[f["item"].to_numpy()].astype(np.int32),
            "time": f["time"].to_numpy(),
            "row": f["row"].to_numpy(),
            "part": np.ones(len(f), dtype=np.int8),
            "positive": log.positive_mask(min_rating=min_rating),
        }
    )
    # Stable by user: each user's rows keep their time order.
    frame = frame.iloc[np.argsort(frame["user"].to_numpy(), kind="stable")].reset_index(drop=True)
    return Interactions(frame, users, items, dict(log.report))


def _new_split(
    new: Interactions, stored: tuple[np.ndarray, np.ndarray], users: np.ndarray, items: np.ndarray
) -> RecSplit:
    """Leave-last-out on the new log, each returning user's stored history before their new rows.

    The stored rows (``part`` 0) are never targets; they make the hold-outs' histories (what a
    user had done) and the SASRec inputs complete.
    """
    indptr, indices = stored
    codes = np.unique(new.frame["user"].to_numpy())
    old = codes[codes < len(indptr) - 1]
    lengths = indptr[old + 1] - indptr[old]
    ctx_items = np.concatenate([indices[indptr[u] : indptr[u + 1]] for u in old]) if len(old) else np.zeros(0)
    context = pd.DataFrame(
        {
            "user": np.repeat(old, lengths).astype(np.int32),
            "item": ctx_items.astype(np.int32),
            "time": np.full(int(lengths.sum()), float(new.frame["time"].min()) - 1.0),
            "row": np.zeros(int(lengths.sum()), dtype=np.int64),
            "part": np.zeros(int(lengths.sum()), dtype=np.int8),
            "positive": np.zeros(int(lengths.sum()), dtype=bool),
        }
    )
    frame = pd.concat([context, new.frame], ignore_index=True)
    frame = frame.iloc[np.argsort(frame["user"].to_numpy(), kind="stable")].reset_index(drop=True)
    both = Interactions(frame, users, items, new.report)
    try:
        return leave_last_out(both, positive=frame["positive"].to_numpy())
    except DataError:
        raise DataError("the new log has no user with two positive interactions to hold out", hint=_TOO_SHORT) from None


# --- matrices and histories ------------------------------------------------------------------------


def _binary(m: sp.spmatrix) -> sp.csr_matrix:
    out = sp.csr_matrix(m, dtype=np.float64)
    out.sum_duplicates()
    out.data[:] = 1.0
    out.eliminate_zeros()
    return out


def _union(*parts: sp.csr_matrix | None) -> sp.csr_matrix:
    present = [p for p in parts if p is not None]
    total = present[0]
    for p in present[1:]:
        total = total + p
    return _binary(total)


def _matrix(inter: Interactions | None) -> sp.csr_matrix | None:
    return inter.matrix() if inter is not None else None


def _stored_matrix(indptr: np.ndarray, indices: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """The stored histories as a binary users x items matrix of the grown shape."""
    n_old = len(indptr) - 1
    m = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(n_old, n_items))
    return _binary(sp.vstack([m, sp.csr_matrix((n_users - n_old, n_items))]))


def _without_targets(x: sp.csr_matrix, holdout: HoldOut | None) -> sp.csr_matrix:
    """``x`` without the hold-out's (user, target) pairs, so a held-out item is never trained on."""
    if holdout is None or not len(holdout):
        return x
    rows = np.repeat(holdout.users, [len(t) for t in holdout.targets])
    cols = np.concatenate(holdout.targets)
    held = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=x.shape)
    return _binary(x - x.multiply(_binary(held)))


def _train_rows(new_train: Interactions, pool: Interactions | None, replayed: np.ndarray) -> sp.csr_matrix:
    """The rows a trainable model continues on: new training rows and the replayed old ones."""
    parts = [new_train.matrix()]
    if pool is not None and replayed.any():
        parts.append(pool.take(replayed).matrix())
    return _union(*parts)


def _histories(
    stored: tuple[np.ndarray, np.ndarray], new: Interactions, old: Interactions | None, n_users: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's stored history, then their new interactions in time order.

    Replay rows count only for users with no stored history (a log the model never had); the
    others' old interactions are already stored.
    """
    indptr, indices = stored
    n_old = len(indptr) - 1
    user_parts = [np.repeat(np.arange(n_old), np.diff(indptr)), new.frame["user"].to_numpy()]
    item_parts = [indices, new.frame["item"].to_numpy()]
    rank = [np.zeros(len(indices)), np.full(len(new), 2.0)]
    if old is not None:
        has_stored = np.zeros(n_users, dtype=bool)
        has_stored[:n_old] = np.diff(indptr) > 0
        fresh = ~has_stored[old.frame["user"].to_numpy()]
        user_parts.append(old.frame["user"].to_numpy()[fresh])
        item_parts.append(old.frame["item"].to_numpy()[fresh])
        rank.append(np.ones(int(fresh.sum())))
    user = np.concatenate(user_parts).astype(np.int64)
    order = np.lexsort((np.arange(len(user)), np.concatenate(rank), user))
    out_indptr = np.searchsorted(user[order], np.arange(n_users + 1)).astype(np.int64)
    return out_indptr, np.concatenate(item_parts).astype(np.int32)[order]


def _targets(holdout: HoldOut | None) -> int:
    return int(sum(len(t) for t in holdout.targets)) if holdout is not None else 0


def _content(model: Any) -> np.ndarray | None:
    if not isinstance(model, SequentialRecommender) or model.net.content_proj is None:
        return None
    content: torch.Tensor = model.net.content  # type: ignore[assignment]
    return content[1:].numpy().copy()


# --- scoring ---------------------------------------------------------------------------------------


def _scorer(model: Any, n_items: int) -> Callable[[HoldOut, np.ndarray], np.ndarray]:
    """Scores of hold-out rows over the grown catalogue; a smaller (parent) model gives new items -inf."""
    n_model = int(model.n_items)

    def score(holdout: HoldOut, pos: np.ndarray) -> np.ndarray:
        if isinstance(model, SequentialRecommender):
            out = model.score([q[q < n_model] for q in (holdout.sequences[i] for i in pos)])
        else:
            out = np.asarray(model.score(holdout.exclude(pos)[:, :n_model]))
        if n_model < n_items:
            out = np.hstack([out, np.full((len(pos), n_items - n_model), -np.inf, dtype=out.dtype)])
        return out

    return score


def _ndcg(model: Any, holdout: HoldOut | None, n_items: int) -> float | None:
    """NDCG@10 of ``model`` on ``holdout`` (None without users to score)."""
    if holdout is None or not len(holdout):
        return None
    score = _scorer(model, n_items)
    res = evaluate_ranking(lambda pos: score(holdout, pos), holdout, ks=(10,))
    return float(res["overall"]["ndcg@10"])


def _scores(
    parent: Any, model: Any, split: RecSplit, old_valid: HoldOut | None, n_items: int, known: Mapping[str, float]
) -> dict[str, Any]:
    """NDCG@10 of the refitted model and of its parent on each hold-out (the parent ranks new items last);
    ``known`` holds the refitted model's scores measured already (by WiSE-FT's choice)."""
    holdouts = {"new_valid": split.valid, "new_test": split.test, "old_valid": old_valid}
    return {
        name: {"refit": known[name] if name in known else _ndcg(model, h, n_items), "parent": _ndcg(parent, h, n_items)}
        for name, h in holdouts.items()
        if h is not None and len(h)
    }


def _choose(
    mix: Callable[[float], Any], plan: RefitPlan, valid: HoldOut, old_valid: HoldOut | None, n_items: int
) -> tuple[float | None, list[dict[str, Any]], dict[float, dict[str, float]]]:
    """WiSE-FT's alpha, by the mean NDCG@10 on the new and old validation targets (None: no interpolation),
    its trials, and each alpha's scores by hold-out name."""
    by_alpha: dict[float, dict[str, float]] = {}
    if not plan.interpolate:
        return None, [], by_alpha

    def score(alpha: float) -> list[float]:
        candidate = mix(alpha)
        found = {"new_valid": _ndcg(candidate, valid, n_items), "old_valid": _ndcg(candidate, old_valid, n_items)}
        by_alpha[alpha] = {k: v for k, v in found.items() if v is not None}
        return list(by_alpha[alpha].values())

    alpha, trials = choose_alpha(score, plan.alphas)
    return alpha, trials, by_alpha


# --- continuing the trainable models ---------------------------------------------------------------


def _train(
    parent: Any,
    cfg: RecommenderSettings,
    s: RefitSettings,
    plan: RefitPlan,
    split: RecSplit,
    pool: Interactions | None,
    replayed: np.ndarray,
    rows: sp.csr_matrix,
    seen: sp.csr_matrix,
    reporter: EpochReporter,
) -> tuple[Any, dict[str, Any], Callable[[float], Any]]:
    """Continue a copy of ``parent``; returns it, what the run did, and its WiSE-FT mixer."""
    n_items = seen.shape[1]
    if isinstance(parent, BPRMF):
        return _train_bpr(parent, s, plan, split.valid, rows, seen, reporter)
    seqs = list(split.train.sequences())
    frame = split.train.frame
    flags = flags_by_user(split.train, (frame["part"].to_numpy() == 1) & frame["positive"].to_numpy())
    if pool is not None and replayed.any():
        # A replayed row is a target in its user's old sequence, whose other rows are its context.
        seqs += pool.sequences()
        flags += flags_by_user(pool, replayed & pool.frame["positive"].to_numpy())
    if not any(f.any() for f in flags):
        raise DataError("the new log leaves no positive interaction to train on", hint=_TOO_SHORT)
    return _train_sasrec(parent, cfg, s, plan, split.valid, seqs, flags, n_items, reporter)


def _train_bpr(
    parent: BPRMF,
    s: RefitSettings,
    plan: RefitPlan,
    valid: HoldOut,
    rows: sp.csr_matrix,
    seen: sp.csr_matrix,
    reporter: EpochReporter,
) -> tuple[BPRMF, dict[str, Any], Callable[[float], BPRMF]]:
    n_users, n_items = seen.shape
    old_u, old_i = parent.n_users, parent.n_items
    model = parent.grown(n_users, n_items, seed=s.seed)
    start = {k: v.copy() for k, v in model.state()[0].items()}
    user_rows = (np.arange(n_users) < old_u).astype(np.float32)
    item_rows = (np.arange(n_items) < old_i).astype(np.float32)
    anchor = None
    if plan.penalty > 0:
        anchor = BPRAnchor(
            start["user_factors"], start["item_factors"], start["item_bias"], user_rows, item_rows, plan.penalty
        )
    epochs = s.epochs or max(1, parent.epochs // 2)
    lr = s.lr or parent.lr
    reporter.start(model, epochs)
    model.resume(
        rows,
        epochs=epochs,
        lr=lr,
        seen=seen,
        anchor=anchor,
        seed=s.seed,
        valid_fn=lambda m: _ndcg(m, valid, n_items) or 0.0,
        on_record=reporter.phase("refit"),
    )
    tuned = {k: v.copy() for k, v in model.state()[0].items()}
    shared = {"user_factors": user_rows > 0, "item_factors": item_rows > 0, "item_bias": item_rows > 0}

    def mix(alpha: float) -> BPRMF:
        out = {k: v.copy() for k, v in tuned.items()}
        for k, rows_ in shared.items():
            out[k][rows_] = start[k][rows_] + alpha * (tuned[k][rows_] - start[k][rows_])
        return BPRMF.from_state(out, model.state()[1])

    run: dict[str, Any] = {"epochs": epochs, "lr": lr, "best_epoch": model.best_epoch_}
    if model.stop_reason_:
        run["stop_reason"] = model.stop_reason_
    return model, run, mix


class _SharedRowsPenalty:
    """L2-SP for a grown SASRec: every weight pulled toward its start, item rows only where the parent had them."""

    def __init__(self, net: torch.nn.Module, start: Mapping[str, torch.Tensor], shared: torch.Tensor, weight: float):
        self.rest = AnchorPenalty(net, {k: v for k, v in start.items() if k != "item_emb.weight"}, weight)
        self.emb: torch.Tensor = net.get_parameter("item_emb.weight")
        self.start = start["item_emb.weight"]
        self.shared = shared
        self.weight = weight

    def __call__(self) -> torch.Tensor:
        moved = ((self.emb - self.start) * self.shared) ** 2
        return self.rest() + self.weight * moved.sum()


def _train_sasrec(
    parent: SequentialRecommender,
    cfg: RecommenderSettings,
    s: RefitSettings,
    plan: RefitPlan,
    valid: HoldOut,
    seqs: list[np.ndarray],
    flags: list[np.ndarray],
    n_items: int,
    reporter: EpochReporter,
) -> tuple[SequentialRecommender, dict[str, Any], Callable[[float], SequentialRecommender]]:
    trained = np.zeros(n_items, dtype=bool)
    for q in seqs:
        trained[q] = True
    was_known: torch.Tensor = parent.net.id_known[1:, 0] > 0  # type: ignore[index]
    model = parent.grown(n_items, learned=trained, seed=s.seed)
    start = anchor_state(model.net)
    shared = torch.zeros(n_items + 1, 1)
    shared[1 : parent.n_items + 1, 0] = was_known.float()
    penalty = _SharedRowsPenalty(model.net, start, shared, plan.penalty) if plan.penalty > 0 else None
    _, tune = phase_settings(cfg.pretrain, cfg.pretrain_settings, cfg.finetune_settings)
    tune = replace(tune, epochs=s.epochs or max(1, tune.epochs // 2), lr=s.lr or tune.lr)
    reporter.start(model.net, tune.epochs)
    report = model.finetune(
        seqs,
        flags,
        tune,
        valid_fn=lambda m: _ndcg(m, valid, n_items) or 0.0,
        on_epoch=reporter.phase("refit"),
        penalty=penalty,
    )
    tuned = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    scratch = copy.deepcopy(model)

    def mix(alpha: float) -> SequentialRecommender:
        state_ = interpolate_state(start, tuned, alpha)
        # Rows the parent did not have are not interpolated: they have nothing to return to.
        state_["item_emb.weight"] = torch.where(shared > 0, state_["item_emb.weight"], tuned["item_emb.weight"])
        scratch.net.load_state_dict(state_)
        scratch.net.eval()
        return scratch

    run: dict[str, Any] = {"epochs": tune.epochs, "lr": tune.lr, "best_epoch": report.best_epoch}
    if report.stop_reason:
        run["stop_reason"] = report.stop_reason
    return model, run, mix
