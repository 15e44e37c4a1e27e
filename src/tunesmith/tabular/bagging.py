"""k-fold bagging of LightGBM: one booster per fold of train + validation, averaged into one booster.

With ``bagging_folds = k`` (``k >= 2``) the training and validation rows are cut into ``k``
folds (stratified for classification); booster ``i`` trains on every fold but ``i`` and is
evaluated on fold ``i``. The ``k`` boosters grow in lockstep and stop together, on the mean
of their held-out losses, so every row trains ``k - 1`` boosters, each row is predicted
once by the booster that never saw it (the out-of-fold predictions), and the averaged model
varies less than any one booster. This is AutoGluon's k-fold bagging (where each fold stops
on its own; stopping together gives the callbacks one loss per step).

The average is a single LightGBM booster: a booster's raw output is the sum of its trees'
leaf values, so the trees of all ``k`` boosters with their leaf values divided by ``k`` sum
to the mean of the ``k`` raw outputs (log-odds for classification, values for regression).
Saving, loading, ONNX export and refitting (new trees grown on top) treat it as any other
booster. Trees a fit continued from (``init_model``) are kept once, as they were.

Callbacks see one step every ``rounds_per_step`` rounds, its ``valid_loss`` the mean of the
``k`` held-out losses: the quantity the boosters stop on.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunesmith.tabular.boosting import (
    Split,
    booster_params,
    cv_boosters,
    fit_lightgbm,
    keep_trees,
    lgb_dataset,
    scale_new_trees,
)
from tunesmith.tabular.preprocess import TabularFeatures
from tunesmith.tabular.settings import TabularConfig
from tunesmith.train.callbacks import Callback

__all__ = ["average_boosters", "bag_lightgbm", "fit_trees", "fold_indices"]

_TREE = re.compile(r"^Tree=\d+$", re.MULTILINE)


def fold_indices(task: str, y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train positions, held-out positions) pairs covering every row once; stratified for classes.

    ``k`` is lowered to the number of rows when there are fewer. A class with fewer rows than
    folds simply misses from some held-out folds.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    k = max(2, min(int(k), len(y)))
    splitter = KFold(k, shuffle=True, random_state=seed) if task == "regression" else None
    if splitter is None:
        counts = np.bincount(np.asarray(y, dtype=np.int64))
        counts = counts[counts > 0]
        # stratifying needs two classes; a rare class only warns (and misses some folds)
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed) if len(counts) > 1 else None
    splitter = splitter or KFold(k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(len(y)), y)]


def _blocks(text: str) -> tuple[str, list[str], str]:
    """A model text cut into its header, its tree blocks (each from ``Tree=`` to the next) and the rest."""
    starts = [m.start() for m in _TREE.finditer(text)]
    end = text.index("end of trees")
    if not starts:
        return text[:end], [], text[end:]
    bounds = [*starts, end]
    return text[: starts[0]], [text[a:b] for a, b in itertools.pairwise(bounds)], text[end:]


def average_boosters(boosters: Sequence[Any], first: int = 0) -> Any:
    """One booster whose raw output is the mean of ``boosters``' raw outputs.

    ``boosters`` share their first ``first`` iterations (the trees of the model a fit
    continued from): those are kept once, as they are; every later tree joins with its leaf
    values divided by ``len(boosters)``.
    """
    import lightgbm as lgb

    k = len(boosters)
    per_iteration = int(boosters[0].num_model_per_iteration())
    head = tail = ""
    trees: list[str] = []
    for i, booster in enumerate(boosters):
        h, blocks, t = _blocks(scale_new_trees(booster, first, 1.0 / k).model_to_string())
        if i == 0:
            head, tail = h, t
            trees += blocks
        else:
            trees += blocks[first * per_iteration :]
    # trees are numbered in order, and LightGBM reads each at the byte offset tree_sizes gives
    trees = [f"Tree={n}" + block[block.index("\n") :] for n, block in enumerate(trees)]
    sizes = " ".join(str(len(block.encode("utf-8"))) for block in trees)
    head = re.sub(r"^tree_sizes=.*$", f"tree_sizes={sizes}", head, count=1, flags=re.MULTILINE)
    return lgb.Booster(model_str=head + "".join(trees) + tail)


def _stack(a: TabularFeatures, b: TabularFeatures) -> TabularFeatures:
    return TabularFeatures(
        numeric=np.concatenate([a.numeric, b.numeric]),
        categorical=np.concatenate([a.categorical, b.categorical]),
        raw=np.concatenate([a.raw, b.raw]),
    )


def bag_lightgbm(
    cfg: TabularConfig,
    task: str,
    n_outputs: int,
    categorical: Sequence[int],
    train: Split,
    valid: Split,
    *,
    init_booster: Any = None,
    target_scaling: dict[str, float] | None = None,
    callbacks: Sequence[Callback] = (),
) -> tuple[Any, dict[str, Any], np.ndarray]:
    """``cfg.bagging_folds`` boosters on folds of ``train`` + ``valid``, averaged (:func:`average_boosters`).

    Returns the averaged booster, what training did (as :func:`fit_lightgbm`'s info, with
    ``best_iteration`` and ``new_trees`` per fold booster, plus ``bagging_folds`` and
    ``trees``, the iterations the averaged booster holds) and the out-of-fold predictions
    of ``valid``'s rows, in the form ``booster.predict`` gives.
    """
    features = _stack(train[0], valid[0])
    y = np.concatenate([train[1], valid[1]])
    folds = fold_indices(task, y, cfg.bagging_folds, cfg.seed)
    start = int(init_booster.current_iteration()) if init_booster is not None else 0
    std = (target_scaling or {}).get("std", 1.0)
    boosters, rounds, state = cv_boosters(
        booster_params(cfg, task, n_outputs),
        lgb_dataset(features, y, categorical),
        folds,
        rounds=cfg.n_estimators,
        init_model=init_booster,
        early_stopping_rounds=cfg.early_stopping_rounds,
        callbacks=callbacks,
        rounds_per_step=cfg.rounds_per_step,
        loss_scale=1.0 / (std * std) if task == "regression" else 1.0,
        show_progress=cfg.progress,
    )
    kept = [keep_trees(b, start + rounds) for b in boosters]
    oof = None
    for booster, (_, held) in zip(kept, folds, strict=True):
        out = np.asarray(booster.predict(features.raw[held]), dtype=np.float64)
        if oof is None:
            oof = np.zeros((len(y), *out.shape[1:]), dtype=np.float64)
        oof[held] = out
    assert oof is not None
    averaged = average_boosters(kept, start)
    info = {
        "init_trees": start,
        "best_iteration": start + rounds,
        "new_trees": rounds,
        "bagging_folds": len(folds),
        "trees": int(averaged.current_iteration()),
        "steps": state.history,
        "stop_reason": state.stop_reason,
    }
    return averaged, info, oof[len(train[1]) :]


def fit_trees(
    cfg: TabularConfig,
    task: str,
    n_outputs: int,
    categorical: Sequence[int],
    train: Split,
    valid: Split,
    *,
    init_booster: Any = None,
    target_scaling: dict[str, float] | None = None,
    callbacks: Sequence[Callback] = (),
) -> tuple[Any, dict[str, Any], np.ndarray | None]:
    """The LightGBM candidate of a fit: bagged (:func:`bag_lightgbm`) when ``cfg.bagging_folds`` asks for it.

    Returns the booster, what training did and, for a bagged booster, the out-of-fold
    predictions of ``valid``'s rows (``None`` otherwise: the booster never saw them).
    """
    if cfg.bagging_folds >= 2:
        return bag_lightgbm(
            cfg, task, n_outputs, categorical, train, valid,
            init_booster=init_booster, target_scaling=target_scaling, callbacks=callbacks,
        )  # fmt: skip
    booster, info = fit_lightgbm(
        cfg, task, n_outputs, categorical, train, valid,
        init_booster=init_booster, target_scaling=target_scaling, callbacks=callbacks,
    )  # fmt: skip
    return booster, info, None
