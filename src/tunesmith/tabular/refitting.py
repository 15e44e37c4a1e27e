"""Refitting a fitted tabular model on new labeled rows (``TabularFineTuner.refit``) without forgetting the old.

A refit continues the model in memory, as ``init_model`` continues a saved one: the
preprocessor, the classes and the target scaling stay; LightGBM grows new trees on top of
its booster (its trees are kept as they are) and the network trains on from its weights.
The model refitted is never changed: its booster is rebuilt from text and its network
deep-copied before anything trains.

What :class:`~tunesmith.train.continual.RefitSettings`' plan asks for, per part:

* **replay**: the old rows sampled beside the new ones train both parts (the new trees fit
  the residuals of the old rows too, so they do not undo what the old trees learned);
* **L2-SP**: the network's training loss pulls its weights toward the current ones;
* **WiSE-FT**: the network's weights are interpolated with the current ones, and the new
  trees' leaf values are scaled by the same kind of weight (:func:`scale_new_trees`, exactly
  ``f0 + alpha * (f1 - f0)`` for a sum of trees); each part's ``alpha`` is chosen on the
  held-out new and old rows (accuracy, or minus the MAE for regression);
* **LoRA** needs a pre-trained backbone to adapt, which a table's model has not: the
  estimator refuses it (``NotSupportedError``) before calling :func:`refit_tabular`.

A bagged booster (``bagging_folds``) is one booster, the average of its folds': a refit grows
one set of new trees on top of it, early-stopped on the held-out new rows like any other (the
held-out rows must stay unseen to choose ``alpha`` and the candidate), then ``refit_full``.

The challenger serves the candidate the current model chose (``chosen_``); ``model="auto"``
trains every part the model holds and chooses as ``fit`` does (:func:`selection_key`), but
on the mean over the held-out new and old rows, so a candidate that forgets loses.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.config import validate_settings
from tunesmith.data.io import data_sha256
from tunesmith.data.replay import RefitData, check_new_data
from tunesmith.data.schema import Schema, missing_mask
from tunesmith.data.validate import encode_target
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.metrics import compute_metrics
from tunesmith.runs.fingerprint import saved_version
from tunesmith.tabular.boosting import fit_lightgbm, keep_trees, refit_lightgbm, scale_new_trees
from tunesmith.tabular.columns import labeled_frame, with_rows
from tunesmith.tabular.neural import TabularNet, fit_net
from tunesmith.tabular.preprocess import TabularFeatures
from tunesmith.tabular.settings import MODEL_CHOICES, TabularConfig
from tunesmith.train.continual import RefitPlan, RefitSettings, anchor_state, choose_alpha, interpolate_state

__all__ = ["LORA_HINT", "PARTS", "joint_key", "model_fingerprint", "refit_tabular", "selection_key"]

PARTS: dict[str, tuple[str, ...]] = {
    "lightgbm": ("lightgbm",),
    "neural": ("neural",),
    "ensemble": ("lightgbm", "neural"),
}
"""The trained parts each candidate is made of."""

Period = tuple[TabularFeatures, np.ndarray]

LORA_HINT = (
    "A table's model has no pre-trained backbone to adapt; use method='auto' (replay, L2-SP and WiSE-FT) or 'l2sp'"
)


def selection_key(task: str, metrics: Mapping[str, Any], by: str = "log_loss") -> tuple[float, float]:
    """Larger is better: (-log loss, accuracy) for classification, (-MAE, 0) for regression.

    The rule by which ``fit`` (on validation rows) and ``refit`` (on held-out new and old rows)
    choose among LightGBM, the network and their average. ``by="accuracy"`` (the
    ``selection_metric`` setting) ranks classifiers by (accuracy, -log loss) instead.
    """
    if task == "regression":
        mae = metrics.get("mae")
        return (-float(mae) if mae is not None else -math.inf, 0.0)
    acc = metrics.get("accuracy")
    loss = metrics.get("log_loss")
    accuracy = float(acc) if acc is not None else -math.inf
    fit = -float(loss) if loss is not None else -math.inf
    return (accuracy, fit) if by == "accuracy" else (fit, accuracy)


def joint_key(task: str, periods: Sequence[Mapping[str, Any]], by: str = "log_loss") -> tuple[float, ...]:
    """:func:`selection_key` averaged over the held-out periods (new rows, old rows when held out)."""
    keys = [selection_key(task, m, by) for m in periods]
    return tuple(sum(k[i] for k in keys) / len(keys) for i in range(2))


def model_fingerprint(est: Any) -> str:
    """A short content hash of a fitted tabular model: its preprocessing, trees, network and choice.

    It identifies a model in memory (a refit's ``parent``) and is the same after a save and
    load. The booster's text is hashed up to its trees: the parameters below them name the
    threads of the machine that trained it.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(est.preprocessor_.to_dict(), sort_keys=True, default=str).encode())
    if est.booster_ is not None:
        digest.update(est.booster_.model_to_string().split("end of trees", 1)[0].encode())
    if est.net_ is not None:
        for name, tensor in sorted(est.net_.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(str(est.chosen_).encode())
    return digest.hexdigest()[:12]


def _parts_to_train(est: Any, model: str | None) -> tuple[list[str], list[str]]:
    """The candidates the refit compares and the parts it trains, for the ``model`` setting.

    ``None`` keeps the current model's choice; ``"auto"`` compares every candidate the model
    holds; a name forces that candidate (the model must hold its parts).
    """
    if model is not None and model not in MODEL_CHOICES:
        raise ConfigError(
            f"model must be one of {', '.join(MODEL_CHOICES)} or None, got {model!r}",
            key="model",
            hint="Leave model unset to refit the candidate the model serves",
        )
    held = {"lightgbm": est.booster_ is not None, "neural": est.net_ is not None}
    if model is None:
        names = [str(est.chosen_)]
    elif model == "auto":
        names = [p for p in ("lightgbm", "neural") if held[p]] + (["ensemble"] if all(held.values()) else [])
    else:
        names = [model]
    parts = [p for p in ("lightgbm", "neural") if any(p in PARTS[n] for n in names)]
    lacking = [p for p in parts if not held[p]]
    if lacking:
        raise ConfigError(
            f"refit model={model!r} needs a {lacking[0]} part, which this model does not hold "
            f"(it holds {', '.join(p for p in held if held[p])})",
            key="model",
            hint="Refit what the model holds (leave model unset or use 'auto'), or fit a new model with model=...",
        )
    return names, parts


def _labeled(
    source: Any, y: Any, schema: Schema, target: str | None, what: str
) -> tuple[pd.DataFrame, str | None, str, int]:
    """Rows of ``source`` checked against the model, the label under the model's target name.

    Returns the rows (missing labels dropped, data row numbers kept), the file, the data's
    SHA-256 and how many rows had no label.
    """
    name = target or schema.target
    df, file = labeled_frame(source, y, name, what)
    sha = data_sha256(source, df)
    check_new_data(
        df, columns=schema.feature_columns, target=name, labels=schema.labels, file=file, what=what
    )  # fmt: skip
    if name != schema.target:
        if name in schema.feature_columns:
            raise DataError(
                f"the target {name!r} is an input column of the model", file=file, column=name, hint="Name the label"
            )
        df = df.assign(**{schema.target: df[name]})
    df = with_rows(df)
    missing = missing_mask(df[schema.target]).to_numpy(dtype=bool)
    df = df.loc[~missing]
    if len(df) == 0:
        raise DataError(
            f"every row of the {what} has a missing label", file=file, column=name, hint="Refit needs labeled rows"
        )
    return df, file, sha, int(missing.sum())


def _scores(task: str, outputs: Callable[[TabularFeatures], np.ndarray], periods: Sequence[Period]) -> list[float]:
    """One score per held-out period, higher better: accuracy, or minus the MAE for regression."""
    out = []
    for features, y in periods:
        pred = outputs(features)
        if task == "regression":
            out.append(-float(np.mean(np.abs(pred - y))))
        else:
            out.append(float(np.mean(pred.argmax(axis=1) == y)))
    return out


def _challenger(est: Any) -> Any:
    """A new estimator of ``est``'s class and settings holding what a refit keeps of ``est``."""
    with warnings.catch_warnings():
        # the deprecated ``target`` setting warned when the user set it; a copy need not warn again
        warnings.simplefilter("ignore", DeprecationWarning)
        new = type(est)(**est.get_params())
    new.schema_ = est.schema_  # frozen
    # The preprocessor is read-only once fitted (the refit keeps its columns, codes and scaling),
    # so both models share it rather than copy a text backbone it may hold.
    new.preprocessor_ = est.preprocessor_
    new.label_values_ = list(est.label_values_)
    new.classes_ = None if est.classes_ is None else est.classes_.copy()
    new.n_outputs_ = est.n_outputs_
    new.target_scaling_ = None if est.target_scaling_ is None else dict(est.target_scaling_)
    # Parts the refit does not train stay as they are, in copies.
    new.booster_ = keep_trees(est.booster_) if est.booster_ is not None else None
    new.net_ = copy.deepcopy(est.net_) if est.net_ is not None else None
    new.chosen_ = est.chosen_
    new.test_metrics_ = None
    new.baseline_metrics_ = {}
    new.uncertainty_ = {}
    new.model_path_ = None
    new.run_dir_ = None
    return new


def _refit_trees(
    est: Any,
    new: Any,
    cfg: TabularConfig,
    plan: RefitPlan,
    train: Period,
    valid: Period,
    periods: Sequence[Period],
) -> tuple[Any, dict[str, Any], float, list[dict[str, Any]]]:
    """New trees on the current booster, stopped on the new held-out rows, then their weight chosen.

    Returns the booster before the interpolation (``refit_full`` retrains from it), what
    boosting did, the chosen ``alpha`` and the trials.
    """
    schema = est.schema_
    started = time.perf_counter()
    booster, info = fit_lightgbm(
        cfg, schema.task, est.n_outputs_, est.preprocessor_.raw_categorical_indices, train, valid,
        init_booster=keep_trees(est.booster_), target_scaling=est.target_scaling_,
    )  # fmt: skip
    info["seconds"] = time.perf_counter() - started
    alpha = 1.0
    trials: list[dict[str, Any]] = []
    if plan.interpolate:
        first = int(info["init_trees"])

        def score(a: float) -> list[float]:
            new.booster_ = scale_new_trees(booster, first, a)
            return _scores(schema.task, lambda f: new._outputs(f, "lightgbm"), periods)

        alpha, trials = choose_alpha(score, plan.alphas)
    new.booster_ = scale_new_trees(booster, int(info["init_trees"]), alpha)
    return booster, info, alpha, trials


def _refit_net(
    est: Any,
    new: Any,
    cfg: TabularConfig,
    plan: RefitPlan,
    train: Period,
    valid: Period,
    periods: Sequence[Period],
) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """The network trained on from its weights (L2-SP when planned), then interpolated (WiSE-FT)."""
    schema = est.schema_
    started = time.perf_counter()
    net, info = fit_net(
        cfg, schema.task, est.n_outputs_, est.preprocessor_.cardinalities, train, valid,
        init_net=est.net_, target_scaling=est.target_scaling_, l2sp=plan.penalty,
    )  # fmt: skip
    info["seconds"] = time.perf_counter() - started
    alpha = 1.0
    trials: list[dict[str, Any]] = []
    if plan.interpolate:
        anchor = anchor_state(est.net_)
        tuned = {k: v.detach().clone() for k, v in net.state_dict().items()}

        def at(a: float) -> TabularNet:
            blended = copy.deepcopy(net)
            blended.load_state_dict(interpolate_state(anchor, tuned, a))
            return blended.eval()

        def score(a: float) -> list[float]:
            new.net_ = at(a)
            return _scores(schema.task, lambda f: new._outputs(f, "neural"), periods)

        alpha, trials = choose_alpha(score, plan.alphas)
        net = at(alpha)
    new.net_ = net
    return info, alpha, trials


def refit_tabular(
    est: Any,
    data: Any,
    y: Any = None,
    *,
    replay: Any = None,
    target: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Any:
    """The refitted copy of the fitted tabular estimator ``est`` (see :meth:`TabularFineTuner.refit`).

    ``settings`` are :class:`~tunesmith.train.continual.RefitSettings` fields and ``model``
    (``None``: the candidate ``est`` serves; ``"auto"``: choose again; or a candidate's name).
    """
    started = time.perf_counter()
    given = dict(settings or {})
    model = given.pop("model", None)
    refit_settings = validate_settings(RefitSettings, given)
    plan = refit_settings.plan(has_replay=replay is not None)
    if plan.adapters:
        # the estimator refuses it first, as NotSupportedError; this guards a direct call
        raise ConfigError("refit method 'lora' is not offered for tabular models", key="method", hint=LORA_HINT)
    names, parts = _parts_to_train(est, model)
    schema: Schema = est.schema_
    task = schema.task

    new_df, new_file, new_sha, new_dropped = _labeled(data, y, schema, target, "new data")
    if len(new_df) < 2:
        raise DataError(
            "the new data has one labeled row; refit holds some new rows out to stop training early",
            file=new_file,
            hint="Refit on at least two labeled new rows (a few dozen or more to learn anything)",
        )
    old_df, old_file, old_sha, old_dropped = (
        _labeled(replay, None, schema, target, "replay data") if replay is not None else (None, None, None, 0)
    )
    rows = RefitData(
        new_df, old_df, target=schema.target, stratify=task != "regression",
        replay_ratio=refit_settings.replay_ratio, use_replay=plan.replay, valid_size=refit_settings.valid_size,
        seed=refit_settings.seed,
    )  # fmt: skip

    pre = est.preprocessor_

    def period(frame: pd.DataFrame, file: str | None) -> Period:
        return pre.encode(frame, file=file), encode_target(frame, schema, file=file)

    train = period(rows.train, new_file if not len(rows.replayed) else None)
    new_valid = period(rows.new_valid, new_file)
    periods = [new_valid] + ([period(rows.old_valid, old_file)] if len(rows.old_valid) else [])

    # Fewer rounds and epochs than a fit: the model continues, early stopping decides.
    fit_cfg = est._config()
    budget = {
        "rounds": max(1, fit_cfg.n_estimators // 2),
        "epochs": refit_settings.epochs or max(1, fit_cfg.epochs // 2),
        "lr": refit_settings.lr or fit_cfg.lr,
    }
    cfg = fit_cfg.model_copy(
        update={
            "n_estimators": budget["rounds"],
            "epochs": budget["epochs"],
            "lr": budget["lr"],
            "seed": refit_settings.seed,
            "init_model": None,
        }
    )
    new = _challenger(est)
    training: dict[str, Any] = {"num_threads": torch.get_num_threads()}
    alphas: dict[str, float] = {}
    trials: list[dict[str, Any]] = []
    unscaled = None
    if "lightgbm" in parts:
        unscaled, training["lightgbm"], alphas["lightgbm"], found = _refit_trees(
            est, new, cfg, plan, train, new_valid, periods
        )
        trials += [{"model": "lightgbm", **t} for t in found]
    if "neural" in parts:
        training["neural"], alphas["neural"], found = _refit_net(est, new, cfg, plan, train, new_valid, periods)
        trials += [{"model": "neural", **t} for t in found]

    # Every candidate scored on the held-out new rows (and old rows); with model="auto" the
    # best on their mean serves, so a candidate that forgets the old rows loses.
    labels = list(schema.labels) if schema.labels is not None else None
    new.candidates_ = {}
    for name in names:
        scored = [compute_metrics(task, y_true, new._outputs(f, name), labels) for f, y_true in periods]
        new.candidates_[name] = {"valid": scored[0], **({"old_valid": scored[1]} if len(scored) > 1 else {})}
    held_out = ("valid", "old_valid")
    if model == "auto":
        new.chosen_ = max(
            names,
            key=lambda n: joint_key(
                task, [new.candidates_[n][k] for k in held_out if k in new.candidates_[n]], fit_cfg.selection_metric
            ),
        )
    else:
        new.chosen_ = names[0]
    if unscaled is not None and fit_cfg.refit_full and new.chosen_ != "neural":
        # as fit does: the new trees again on train + held-out new rows, the rounds scaled by the rows
        t0 = time.perf_counter()
        full = refit_lightgbm(
            cfg, task, est.n_outputs_, pre.raw_categorical_indices, train, new_valid,
            booster=unscaled, info=training["lightgbm"],
        )  # fmt: skip
        training["lightgbm"]["seconds"] += time.perf_counter() - t0
        new.booster_ = scale_new_trees(full, int(training["lightgbm"]["init_trees"]), alphas["lightgbm"])

    seconds = time.perf_counter() - started
    # the training loops' time: boosting (and its refit_full) and the network's epochs
    train_seconds = sum(training[p]["seconds"] for p in parts)
    training["seconds"] = round(seconds, 3)
    new.training_info_ = training
    new.data_info_ = {
        "file": Path(new_file).name if new_file else None,
        "sha256": new_sha,
        "target": schema.target,
        "rows": {"train": len(rows.train), "valid": len(rows.new_valid), "test": 0},
        "replay_file": Path(old_file).name if old_file else None,
        "replay_sha256": old_sha,
        "dropped": {"new": {"missing_target": new_dropped}, "replay": {"missing_target": old_dropped}},
    }
    served = "neural" if new.chosen_ == "ensemble" else new.chosen_
    new.refit_info_ = {
        "plan": plan.to_dict(),
        "rows": rows.rows(),
        "replay": rows.replay_note,
        "model": new.chosen_,
        "trained": parts,
        "alpha": alphas.get(served) if plan.interpolate else None,
        "alphas": alphas if plan.interpolate else {},
        "alpha_trials": trials,
        "budget": {**budget, "early_stopping_rounds": fit_cfg.early_stopping_rounds, "patience": fit_cfg.patience},
        "train_seconds": round(train_seconds, 3),
        "seconds": round(seconds, 3),
        "data": {"new_sha256": new_sha, "replay_sha256": old_sha},
        "parent": {
            "fingerprint": model_fingerprint(est),
            "model_version": saved_version(getattr(est, "model_path_", None)),
            "data_sha256": (getattr(est, "data_info_", None) or {}).get("sha256"),
        },
        "fingerprint": model_fingerprint(new),
    }
    return new
