"""Training LightGBM for a tabular fit, its rounds reported to callbacks as steps.

Boosting has no epochs, so every ``rounds_per_step`` rounds count as one step: the training
callbacks' ``on_epoch_end(state, metrics)`` runs with ``state.epoch`` the step (0-based) and
``metrics`` holding ``valid_loss`` (the boosting's validation loss) and ``round``. A pruning
callback (hyperparameter search) thus prunes with boosting rounds as its steps; a callback
raising :class:`~tunesmith.train.callbacks.StopTraining` ends boosting with the best trees
so far, any other exception (``optuna.TrialPruned``) reaches the caller.

LightGBM itself is imported only when a booster is trained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tunesmith.progress import Progress, progress
from tunesmith.tabular.preprocess import TabularFeatures
from tunesmith.tabular.settings import TabularConfig
from tunesmith.train.callbacks import Callback, StopTraining, TrainState, epoch_line

__all__ = [
    "booster_params",
    "cv_boosters",
    "fit_lightgbm",
    "keep_trees",
    "lgb_dataset",
    "lgb_outputs",
    "lgb_params",
    "refit_lightgbm",
    "refit_rounds",
    "scale_new_trees",
    "train_booster",
]

NOTE_EVERY_S = 5.0
"""Least seconds between two progress lines of boosting steps (every step still reaches the callbacks)."""


def lgb_params(
    task: str, n_outputs: int, *, learning_rate: float, num_leaves: int, min_child_samples: int, seed: int
) -> dict[str, Any]:
    """LightGBM's parameters for ``task``: deterministic, as many threads as torch uses."""
    params: dict[str, Any] = {
        "learning_rate": float(learning_rate),
        "num_leaves": int(num_leaves),
        "min_child_samples": int(min_child_samples),
        "seed": int(seed),
        "deterministic": True,
        # row/column-wise choice is timed by LightGBM unless fixed; fixing it keeps runs identical
        "force_col_wise": True,
        # match the caller's torch setting: tests and shared machines pin it, and LightGBM
        # would otherwise take every core
        "num_threads": torch.get_num_threads(),
        "verbose": -1,
    }
    if task == "regression":
        params.update(objective="regression", metric="l2")
    elif task == "binary":
        params.update(objective="binary", metric="binary_logloss")
    else:
        params.update(objective="multiclass", metric="multi_logloss", num_class=int(n_outputs))
    return params


def lgb_dataset(features: TabularFeatures, y: np.ndarray, categorical: Sequence[int], reference: Any = None) -> Any:
    """A LightGBM dataset of the raw features (categories as codes, NaN kept)."""
    import lightgbm as lgb

    # generic names: LightGBM rejects some characters that user column names may hold
    names = [f"f{i}" for i in range(features.raw.shape[1])]
    return lgb.Dataset(
        features.raw,
        label=y,
        feature_name=names,
        categorical_feature=list(categorical),
        reference=reference,
        params={"verbose": -1, "max_bin": 255},
        free_raw_data=False,
    )


def lgb_outputs(task: str, raw: np.ndarray) -> np.ndarray:
    """A booster's predictions as the estimator's outputs: ``(n, k)`` probabilities, or ``(n,)`` values."""
    if task == "binary":
        return np.column_stack([1.0 - raw, raw])
    return raw


class _Steps:
    """A LightGBM callback: progress per round, the training callbacks per step of rounds."""

    order = 25  # before LightGBM's early stopping (30), so the round it stops at is seen too

    def __init__(
        self,
        callbacks: Sequence[Callback],
        state: TrainState,
        step: int,
        loss_scale: float,
        bar: Progress,
        first_round: int = 0,
    ) -> None:
        self.callbacks = sorted(callbacks, key=lambda c: c.order)
        self.state = state
        self.step = step
        self.loss_scale = loss_scale
        self.bar = bar
        # lgb.cv counts its rounds from 0 even on top of an earlier model; lgb.train does not
        self.first_round = first_round
        self.best: tuple[float, int, list[Any]] | None = None
        self.noted = -math.inf

    def __call__(self, env: Any) -> None:
        import lightgbm as lgb

        done = env.iteration - env.begin_iteration + 1
        results = list(env.evaluation_result_list or [])
        loss = float(results[0][2]) * self.loss_scale if results else math.nan
        if results and (self.best is None or loss < self.best[0]):
            self.best = (loss, env.iteration, results)
        self.state.model = env.model
        self.state.step = done
        self.bar.advance(1, info=f"valid_loss {loss:.4f}" if results else None)
        if done % self.step and done != env.end_iteration - env.begin_iteration:
            return
        metrics: dict[str, Any] = {"epoch": math.ceil(done / self.step), "round": self.first_round + env.iteration + 1}
        if results:
            metrics["valid_loss"] = loss
        self.state.epoch = metrics["epoch"] - 1
        self.state.history.append(metrics)
        stop: StopTraining | None = None
        for cb in self.callbacks:
            try:
                cb.on_epoch_end(self.state, metrics)
            except StopTraining as raised:
                stop = stop or raised
        now = time.monotonic()
        if now - self.noted >= NOTE_EVERY_S or stop is not None:
            # boosting steps can come hundreds a second: a line for each would flood a log
            self.noted = now
            self.bar.note(epoch_line(metrics, self.state.epochs).replace("epoch", "step", 1) + f" (round {done})")
        if stop is not None:
            self.state.stop_reason = stop.reason
            best_round, best_results = (self.best[1], self.best[2]) if self.best else (env.iteration, results)
            # LightGBM's own way out of its loop: it keeps the trees up to best_round
            raise lgb.callback.EarlyStopException(best_round, best_results)


def train_booster(
    params: dict[str, Any],
    train: Any,
    *,
    rounds: int,
    valid: Any = None,
    init_model: Any = None,
    early_stopping_rounds: int | None = None,
    callbacks: Sequence[Callback] = (),
    rounds_per_step: int = 10,
    loss_scale: float = 1.0,
    show_progress: bool = False,
    description: str = "boosting LightGBM",
) -> tuple[Any, TrainState]:
    """Boost up to ``rounds`` rounds on ``train``, stopping early on ``valid``'s loss.

    ``callbacks`` get ``on_fit_start``, ``on_epoch_end`` every ``rounds_per_step`` rounds
    (``valid_loss`` times ``loss_scale``, so a regression reports the loss of the standardised
    target as the network does) and ``on_fit_end``. Returns the booster and the
    :class:`TrainState` (steps reported, stop reason).
    """
    import lightgbm as lgb

    step = max(1, int(rounds_per_step))
    state = TrainState(model=init_model, epochs=math.ceil(rounds / step), steps_per_epoch=step)
    lgb_callbacks: list[Any] = []
    if valid is not None and early_stopping_rounds:
        lgb_callbacks.append(lgb.early_stopping(int(early_stopping_rounds), verbose=False))
    ordered = sorted(callbacks, key=lambda c: c.order)
    with progress(description, rounds, unit="rounds", enabled=show_progress) as bar:
        steps = _Steps(ordered if valid is not None else (), state, step, loss_scale, bar)
        lgb_callbacks.append(steps)
        if valid is not None:
            for cb in ordered:
                cb.on_fit_start(state)
        try:
            booster = lgb.train(
                params,
                train,
                num_boost_round=int(rounds),
                valid_sets=[valid] if valid is not None else None,
                valid_names=["valid"] if valid is not None else None,
                init_model=init_model,
                callbacks=lgb_callbacks,
            )
            state.model = booster
        finally:
            if valid is not None:
                for cb in ordered:
                    cb.on_fit_end(state)
        bar.set_total(bar.done)
    return booster, state


def cv_boosters(
    params: dict[str, Any],
    data: Any,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    rounds: int,
    init_model: Any = None,
    early_stopping_rounds: int,
    callbacks: Sequence[Callback] = (),
    rounds_per_step: int = 10,
    loss_scale: float = 1.0,
    show_progress: bool = False,
) -> tuple[list[Any], int, TrainState]:
    """One booster per fold of ``data``, boosted in lockstep and stopped together on their mean held-out loss.

    ``folds`` are (train positions, held-out positions) pairs. ``callbacks`` get the steps as
    in :func:`train_booster`, ``valid_loss`` the mean over the folds. Returns the boosters
    (every tree grown, the rounds past the best ones included), the best number of new
    rounds (the trees to keep beyond ``init_model``'s) and the :class:`TrainState`.
    """
    import lightgbm as lgb

    step = max(1, int(rounds_per_step))
    start = int(init_model.current_iteration()) if init_model is not None else 0
    state = TrainState(model=init_model, epochs=math.ceil(rounds / step), steps_per_epoch=step)
    ordered = sorted(callbacks, key=lambda c: c.order)
    with progress(f"boosting LightGBM on {len(folds)} folds", rounds, unit="rounds", enabled=show_progress) as bar:
        steps = _Steps(ordered, state, step, loss_scale, bar, first_round=start)
        for cb in ordered:
            cb.on_fit_start(state)
        try:
            found = lgb.cv(
                params,
                data,
                num_boost_round=int(rounds),
                folds=list(folds),
                init_model=init_model,
                callbacks=[lgb.early_stopping(int(early_stopping_rounds), verbose=False), steps],
                return_cvbooster=True,
            )
            cv: Any = found["cvbooster"]
            state.model = cv
        finally:
            for cb in ordered:
                cb.on_fit_end(state)
        bar.set_total(bar.done)
    grown = int(cv.boosters[0].current_iteration()) - start
    best = int(cv.best_iteration) if int(cv.best_iteration) > 0 else grown
    return list(cv.boosters), min(best, grown), state


def refit_rounds(new_trees: int, n_train: int, n_valid: int) -> int:
    """Rounds for a refit on train + validation: those found on train, scaled by the row ratio."""
    return max(1, round(new_trees * (n_train + n_valid) / max(1, n_train)))


def keep_trees(booster: Any, n: int | None = None) -> Any:
    """A booster of ``booster``'s first ``n`` iterations (all when None), rebuilt from its text.

    Keeping only the best trees makes the saved text and predictions need no iteration argument.
    """
    import lightgbm as lgb

    return lgb.Booster(model_str=booster.model_to_string(num_iteration=n))


def scale_new_trees(booster: Any, first: int, alpha: float) -> Any:
    """A copy of ``booster`` whose trees from iteration ``first`` on count ``alpha`` times: WiSE-FT for trees.

    A booster's output is the sum of its trees' leaf values, so scaling the leaves of the trees
    a refit added gives ``f0 + alpha * (f1 - f0)`` exactly (``f0`` the earlier model, ``f1``
    the refitted one), the interpolation WiSE-FT makes in a network's weights. The first
    ``first`` iterations' trees are left as they were; ``alpha == 1`` is a plain copy.
    """
    out = keep_trees(booster)
    if alpha == 1.0:
        return out
    per_iteration = int(out.num_model_per_iteration())
    for tree, info in enumerate(out.dump_model()["tree_info"]):
        if tree < first * per_iteration:
            continue
        for leaf in range(int(info["num_leaves"])):
            out.set_leaf_output(tree, leaf, alpha * out.get_leaf_output(tree, leaf))
    return out


Split = tuple[TabularFeatures, np.ndarray]


def booster_params(cfg: TabularConfig, task: str, n_outputs: int) -> dict[str, Any]:
    """LightGBM's parameters for a fit with settings ``cfg`` (:func:`lgb_params` of its fields)."""
    return lgb_params(
        task,
        n_outputs,
        learning_rate=cfg.learning_rate,
        num_leaves=cfg.num_leaves,
        min_child_samples=cfg.min_child_samples,
        seed=cfg.seed,
    )


def fit_lightgbm(
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
) -> tuple[Any, dict[str, Any]]:
    """The LightGBM candidate of a fit: the booster of its best round, and what training did.

    Grows on from ``init_booster`` when given. The info holds ``init_trees``,
    ``best_iteration`` (counting the earlier trees), ``new_trees``, the ``steps`` reported to
    ``callbacks`` and the ``stop_reason`` a callback gave.
    """
    dtrain = lgb_dataset(train[0], train[1], categorical)
    dvalid = lgb_dataset(valid[0], valid[1], categorical, reference=dtrain)
    start = int(init_booster.current_iteration()) if init_booster is not None else 0
    std = (target_scaling or {}).get("std", 1.0)
    booster, state = train_booster(
        booster_params(cfg, task, n_outputs),
        dtrain,
        rounds=cfg.n_estimators,
        valid=dvalid,
        init_model=init_booster,
        early_stopping_rounds=cfg.early_stopping_rounds,
        callbacks=callbacks,
        rounds_per_step=cfg.rounds_per_step,
        # the net reports the loss of the standardised target; so do the trees
        loss_scale=1.0 / (std * std) if task == "regression" else 1.0,
        show_progress=cfg.progress,
    )
    # best_iteration counts the trees of init_model too
    best_total = int(booster.best_iteration) or int(booster.current_iteration())
    info = {
        "init_trees": start,
        "best_iteration": best_total,
        "new_trees": best_total - start,
        "steps": state.history,
        "stop_reason": state.stop_reason,
    }
    return keep_trees(booster, best_total), info


def refit_lightgbm(
    cfg: TabularConfig,
    task: str,
    n_outputs: int,
    categorical: Sequence[int],
    train: Split,
    valid: Split,
    *,
    booster: Any,
    info: dict[str, Any],
) -> Any:
    """LightGBM retrained on train + validation with the rounds found (``info``'s), scaled by the rows.

    The earlier model's trees (``init_trees``) are kept as they were; ``info`` gains
    ``refit_full_rounds``.
    """
    rounds = refit_rounds(info["new_trees"], len(train[1]), len(valid[1]))
    full = TabularFeatures(
        numeric=np.concatenate([train[0].numeric, valid[0].numeric]),
        categorical=np.concatenate([train[0].categorical, valid[0].categorical]),
        raw=np.concatenate([train[0].raw, valid[0].raw]),
    )
    init = keep_trees(booster, info["init_trees"]) if info["init_trees"] else None
    refit, _ = train_booster(
        booster_params(cfg, task, n_outputs),
        lgb_dataset(full, np.concatenate([train[1], valid[1]]), categorical),
        rounds=rounds,
        init_model=init,
        show_progress=cfg.progress,
        description="refitting LightGBM on train + validation",
    )
    info["refit_full_rounds"] = rounds
    return keep_trees(refit)
