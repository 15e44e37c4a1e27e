"""Training joint adapters for a Personalizer: validation, the choice of penalty, fold-in.

:func:`train_joint` trains the shared part with every user's vector on the rows before each
user's validation rows, keeps the penalty with the lowest validation log loss, checks each
user's (and segment's) vector against the shared model on its own validation rows, and trains
the same model again on all rows: those weights are stored. :func:`fold_in_users` places new
or changed users against the shared part already in the store, without touching anyone else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.errors import ConfigError
from tunesmith.personalize.head import compare_logits
from tunesmith.personalize.joint import (
    JointAdapterSettings,
    JointFit,
    JointModel,
    fit_joint,
    fold_in,
    index_of,
    item_ids,
    joint_logits,
)
from tunesmith.personalize.store import JOINT_KEY, AdapterStore
from tunesmith.progress import progress


@dataclass
class JointCandidate:
    """One user's or segment's joint adapter: what the store saves and its validation check."""

    tensors: dict[str, torch.Tensor]
    check: dict[str, Any]
    settings: dict[str, Any]


@dataclass(frozen=True)
class JointInputs:
    """The rows a joint model trains on: cached shared outputs, labels, ids and validation rows."""

    features: np.ndarray
    logits: np.ndarray
    y: np.ndarray
    users: np.ndarray  # user id (str) per row
    items: np.ndarray | None  # item id (str) per row, or None without an item column
    segments: np.ndarray | None  # segment id (str) per row, or None without a segment column
    held: np.ndarray  # each user's validation rows


def _codes(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Index of each row's value among the values of rows in ``mask`` (-1 for the others)."""
    known = {v: i for i, v in enumerate(v for v in pd.unique(values[mask]) if v is not None)}
    return np.array([known.get(v, -1) if v is not None else -1 for v in values], dtype=np.int64), known


def _user_segments(users: np.ndarray, segments: np.ndarray | None, user_index: dict[str, int]) -> tuple[
    np.ndarray | None, dict[str, int]
]:  # fmt: skip
    """Each user's segment index (the segment most of its rows name) and the segment index."""
    if segments is None:
        return None, {}
    frame = pd.DataFrame({"u": users, "s": segments})
    frame = frame[frame["u"].isin(user_index)]
    top = frame.groupby("u")["s"].agg(lambda s: s.value_counts().index[0])
    seg_index = {v: i for i, v in enumerate(pd.unique(top.to_numpy()))}
    out = np.full(len(user_index), -1, dtype=np.int64)
    for user, seg in top.items():
        out[user_index[str(user)]] = seg_index[seg]
    return out, seg_index


def _fit(
    data: JointInputs, rows: np.ndarray, settings: JointAdapterSettings, l2: float, seed: int,
    on_step: Callable[[], None] | None,
) -> tuple[JointFit, dict[str, int], dict[str, int], dict[str, int]]:  # fmt: skip
    users, user_index = _codes(data.users, rows)
    items, item_index = _codes(data.items, rows) if data.items is not None else (np.full(len(rows), -1), {})
    user_segments, seg_index = _user_segments(data.users[rows], None if data.segments is None else data.segments[rows],
                                              user_index)  # fmt: skip
    fit = fit_joint(
        data.features[rows], data.logits[rows], data.y[rows], users[rows], items[rows],
        n_users=len(user_index), n_items=len(item_index), settings=settings, l2=l2,
        user_segments=user_segments, n_segments=len(seg_index), seed=seed, on_step=on_step,
    )  # fmt: skip
    return fit, user_index, item_index, seg_index


def _index(values: np.ndarray | None, index: dict[str, int], n: int) -> np.ndarray:
    """:func:`~tunesmith.personalize.joint.index_of` of ``values``; all -1 when there are none."""
    return np.full(n, -1, dtype=np.int64) if values is None else index_of(values, index)


def train_joint(
    data: JointInputs,
    keys: dict[str, tuple[str, str]],
    settings: JointAdapterSettings,
    *,
    seed: int,
    on_step: Callable[[], None] | None = None,
) -> tuple[dict[str, JointCandidate], JointFit, list[str], dict[str, Any]]:
    """Joint adapters for every key in ``keys`` (``key -> (level, id)``) and the shared part to store.

    Returns the candidates per key, the fit on all rows, its item ids in table order, and a
    summary (the penalty chosen, each penalty's validation log loss, the steps' losses).
    """
    train = ~data.held
    if not train.any():
        raise ConfigError("no training rows before the validation rows", key="valid_fraction")
    valid = np.flatnonzero(data.held)
    tried: dict[float, float] = {}
    best: tuple[float, JointFit, dict[str, int], dict[str, int], dict[str, int]] | None = None
    for l2 in settings.l2:
        fit, user_index, item_index, seg_index = _fit(data, train, settings, l2, seed, on_step)
        if len(valid):
            out = _valid_logits(fit, data, valid, user_index, item_index, seg_index, level="user")
            loss = _log_loss(out, data.y[valid])
        else:
            loss = float("nan")
        tried[l2] = loss
        if best is None or loss < tried[best[0]]:
            best = (l2, fit, user_index, item_index, seg_index)
    assert best is not None
    l2, first, user_index, item_index, seg_index = best
    shared_loss = _log_loss(data.logits[valid], data.y[valid]) if len(valid) else float("nan")
    pooled = bool(tried[l2] < shared_loss)
    checks: dict[str, dict[str, Any]] = {}
    for key, (level, value) in keys.items():
        column = data.users if level == "user" else data.segments
        assert column is not None
        mine = valid[column[valid] == value]
        out = _valid_logits(first, data, mine, user_index, item_index, seg_index, level=level)
        checks[key] = joint_check(data.logits[mine], out, data.y[mine], pooled_better=pooled)
    everything = np.ones(len(data.y), dtype=bool)
    final, user_index, item_index, seg_index = _fit(data, everything, settings, l2, seed, on_step)
    record = {"rank": settings.rank, "steps": settings.steps, "lr": settings.lr, "l2": l2}
    candidates: dict[str, JointCandidate] = {}
    for key, (level, value) in keys.items():
        if level == "user" and value in user_index:
            i = user_index[value]
            tensors = {"u": final.user_vectors[i].clone(), "c": final.user_bias[i].clone()}
        elif level == "segment" and value in seg_index:
            i = seg_index[value]
            tensors = {"u": final.segment_vectors[i].clone(), "c": final.segment_bias[i].clone()}
        else:
            continue
        candidates[key] = JointCandidate(tensors, checks[key], record)
    items = sorted(item_index, key=item_index.__getitem__)
    summary = {
        "l2": l2,
        "validation_log_loss": {str(k): v for k, v in tried.items()},
        "shared_validation_log_loss": shared_loss,
        "pooled_better": pooled,
        "users": len(user_index),
        "items": len(item_index),
        "segments": len(seg_index),
        "final_loss": final.history[-1] if final.history else None,
    }
    return candidates, final, items, summary


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    return float(torch.nn.functional.cross_entropy(torch.as_tensor(logits), torch.as_tensor(y)))


SIGNIFICANT = 1.645
"""One-sided 5% level of the paired test that keeps a user off a joint vector that hurts it."""


def joint_check(shared: np.ndarray, adapted: np.ndarray, y: np.ndarray, *, pooled_better: bool) -> dict[str, Any]:
    """Shared vs joint on a user's validation rows: used if joint adapters win on all users' validation
    rows together and this user's rows do not show it doing significantly worse.

    A head or LoRA adapter is trained on its user's rows alone and must prove itself on that
    user's few validation rows. A joint vector is one part of a model trained and validated on
    all users' rows; judged on four or five rows of one user it would be turned down by chance
    as often as for a real loss (most of MovieLens' users). So the pooled verdict decides, and
    a user is kept on the shared model only when its own rows say the vector hurts: the mean
    per-row log-loss difference is above zero by more than 1.645 standard errors (a one-sided
    paired test at 5%).
    """
    check = compare_logits(shared, adapted, y)
    if not check["rows"]:
        return check
    t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    loss = torch.nn.functional.cross_entropy
    diff = (
        loss(torch.as_tensor(adapted), t, reduction="none") - loss(torch.as_tensor(shared), t, reduction="none")
    ).numpy()
    mean = float(diff.mean())
    spread = float(diff.std(ddof=1)) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
    worse = mean > 0 and (spread == 0.0 or mean / spread > SIGNIFICANT)
    check.update(rule="pooled", pooled_better=pooled_better, worse=bool(worse), used=bool(pooled_better and not worse))
    return check


def _valid_logits(
    fit: JointFit, data: JointInputs, rows: np.ndarray, user_index: dict[str, int], item_index: dict[str, int],
    seg_index: dict[str, int], *, level: str,
) -> np.ndarray:  # fmt: skip
    """Logits of validation ``rows`` as a route of ``level`` answers them (a user's vector, or the segment's)."""
    n = len(rows)
    none = np.full(n, -1, dtype=np.int64)
    if level == "user":  # a user's vector already holds its segment's
        users, segs = _index(data.users[rows], user_index, n), none
    else:
        users, segs = none, _index(None if data.segments is None else data.segments[rows], seg_index, n)
    items = _index(None if data.items is None else data.items[rows], item_index, n)
    return fit.logits(data.features[rows], data.logits[rows], items, users, segs)


def load_joint(store: AdapterStore) -> tuple[JointModel, dict[str, int]]:
    """The shared part of the store's joint adapters and its item index.

    Raises:
        ConfigError: the store has no joint adapters yet.
    """
    if JOINT_KEY not in store:
        raise ConfigError(
            "the adapter store has no joint model yet: fold-in places users against one",
            key="users",
            hint="Fit every user first (without users=), then fold in new ones",
        )
    model = JointModel.from_tensors(store.load(JOINT_KEY))
    items = store.info(JOINT_KEY).get("items", [])
    return model, {str(v): i for i, v in enumerate(items)}


def fold_in_users(
    store: AdapterStore,
    data: JointInputs,
    keys: dict[str, tuple[str, str]],
    settings: JointAdapterSettings,
    *,
    segment_column: str | None,
) -> dict[str, JointCandidate]:
    """Joint adapters for the users in ``keys`` against the store's shared part (nobody else changes).

    Each user is placed on the rows before its validation rows, checked on them, then placed
    again on all its rows (what is stored). A user whose segment has a joint adapter starts
    from, and is pulled towards, the segment's vector.
    """
    model, item_index = load_joint(store)
    info = store.info(JOINT_KEY)
    l2 = float((info.get("settings") or {}).get("l2", settings.l2[0]))
    training = info.get("training")
    # The verdict of the full fit on all users' validation rows (a store without one: not proven).
    pooled = isinstance(training, dict) and training.get("pooled_better") is True
    record = {"rank": model.rank, "steps": settings.fold_in_steps, "lr": settings.lr, "l2": l2}
    out: dict[str, JointCandidate] = {}
    for key, (level, value) in keys.items():
        if level != "user":
            continue
        mine = np.flatnonzero(data.users == value)
        prior = None
        if data.segments is not None and segment_column:
            seg = pd.Series(data.segments[mine]).value_counts().index[0]
            seg_key = f"segment:{segment_column}={seg}"
            seg_info = store.info(seg_key) if seg_key in store else {}
            if seg_info.get("kind") == "joint" and seg_info.get("joint") == info.get("id"):
                t = store.load(seg_key)
                prior = (t["u"], t["c"])
        items = _index(None if data.items is None else data.items[mine], item_index, len(mine))
        train, valid = ~data.held[mine], data.held[mine]
        f, z, y = data.features[mine], data.logits[mine], data.y[mine]
        vec, bias = fold_in(model, f[train], z[train], y[train], items[train], l2=l2, steps=settings.fold_in_steps,
                            prior=prior)  # fmt: skip
        adapted = joint_logits(model, f[valid], z[valid], items[valid], vec, bias)
        check = joint_check(z[valid], adapted, y[valid], pooled_better=pooled)
        vec, bias = fold_in(model, f, z, y, items, l2=l2, steps=settings.fold_in_steps, prior=prior)
        out[key] = JointCandidate({"u": vec, "c": bias}, check, record)
    return out


def joint_candidates(
    host: Any, df: pd.DataFrame, y: np.ndarray, features: np.ndarray, logits: np.ndarray, held: np.ndarray,
    plan: list[tuple[str, str, str, np.ndarray, np.ndarray]], *, fold: bool,
) -> tuple[dict[str, JointCandidate], dict[str, Any] | None]:  # fmt: skip
    """A Personalizer's joint adapters of the keys in ``plan``: all trained together, or (``fold``) folded in.

    Returns the candidates and the training summary (``None`` for a fold-in). A full fit writes
    the shared part to the store first; its id (``store.info(JOINT_KEY)["id"]``) goes into every
    joint adapter's entry, so a vector is never served with a shared part it was not trained with.
    """
    data = JointInputs(
        features=features,
        logits=logits,
        y=y,
        users=df[host.user_column].astype(str).to_numpy(dtype=object),
        items=item_ids(df[host.item_column]) if host.item_column else None,
        segments=(
            df[host.segment_column].astype(str).to_numpy(dtype=object)
            if host.segment_column and host.segment_column in df.columns
            else None
        ),
        held=held,
    )
    keys = {key: (level, value) for level, value, key, _, _ in plan}
    store: AdapterStore = host.store
    settings: JointAdapterSettings = host.joint_settings
    if fold:
        return fold_in_users(store, data, keys, settings, segment_column=host.segment_column), None
    total = settings.steps * (len(settings.l2) + 1)
    bar = progress("joint adapters (all users together)", total, unit="steps", enabled=host.progress)
    with bar as advance:
        candidates, final, items, summary = train_joint(data, keys, settings, seed=host.seed, on_step=advance)
    tensors = final.model.tensors()
    digest = hashlib.sha256("\0".join(items).encode("utf-8"))
    for name in sorted(tensors):
        digest.update(tensors[name].numpy().tobytes())
    joint_id = "sha256:" + digest.hexdigest()
    record = {"rank": final.model.rank, "steps": settings.steps, "lr": settings.lr, "l2": summary["l2"]}
    meta = {"kind": "joint", "id": joint_id, "items": items, "rows_train": len(y), "settings": record,
            "training": summary}  # fmt: skip
    store.put(JOINT_KEY, tensors, meta)
    for key in list(store):
        # Vectors of users absent from these rows belong to the shared part just replaced.
        if key not in candidates and store.info(key).get("kind") == "joint":
            store.delete(key)
    return candidates, summary


def log_loss_of(check: dict[str, Any]) -> float | None:
    """The adapter's validation log loss in a check (None if it has none)."""
    adapter = check.get("adapter") or {}
    value = adapter.get("log_loss")
    return None if value is None else float(value)


def best_kind(candidates: dict[str, tuple[Any, dict[str, Any], Any]]) -> str:
    """The kind whose adapter has the lowest validation log loss, preferring those that beat the shared model."""

    def rank(kind: str) -> tuple[bool, float]:
        check = candidates[kind][1]
        loss = log_loss_of(check)
        return (not check.get("used", False), float("inf") if loss is None else loss)

    return min(candidates, key=rank)


__all__ = [
    "JointCandidate",
    "JointInputs",
    "best_kind",
    "fold_in_users",
    "joint_candidates",
    "joint_check",
    "load_joint",
    "log_loss_of",
    "train_joint",
]
