"""``FineTuner.refit``: continue a fitted text model on new labeled rows without forgetting.

The challenger is a new :class:`FineTuner` whose fit starts from the current model's weights
(:class:`~tunesmith.estimators.text.fitting.WarmStart`) and keeps its schema, classes and
target scaling. What it trains on and how (replay, L2-SP, LoRA on the frozen current model,
WiSE-FT) is :class:`~tunesmith.train.continual.RefitSettings`' plan; the rows are
:class:`~tunesmith.data.replay.RefitData`'s. The current model is never touched.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.config import validate_settings
from tunesmith.data.io import file_sha256
from tunesmith.data.replay import RefitData, check_new_data
from tunesmith.data.schema import missing_mask, row_scores
from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators.base import FitArguments
from tunesmith.estimators.text.fitting import WarmStart
from tunesmith.estimators.text.inputs import frame_sha256, prediction_texts, read_frame
from tunesmith.runs.artifacts import atomic_write_json, json_safe
from tunesmith.runs.fingerprint import saved_version
from tunesmith.train.continual import RefitSettings, choose_alpha, interpolate_state

TextEstimator = Any


def _read(data: Any, y: Any, target: str | None, schema: Any, what: str) -> tuple[pd.DataFrame, str | None, str]:
    """The rows of ``data`` with the model's target name, checked against its columns and labels."""
    df, column, file = read_frame(data, y, target or (schema.target if y is None else None), role=what)
    if column is not None and column != schema.target and column in df.columns:
        df = df.rename(columns={column: schema.target})
    check_new_data(
        df,
        columns=list(schema.text_columns),
        target=schema.target,
        labels=list(schema.labels) if schema.labels is not None else None,
        file=file,
        what=what,
    )
    sha = file_sha256(file) if file else frame_sha256(df)
    # Rows without a label neither train (the fit drops them) nor score a held-out period, nor count.
    labeled = ~missing_mask(df[schema.target]).to_numpy(dtype=bool)
    if not labeled.any():
        raise DataError(
            f"every row of the {what} has a missing label",
            file=file,
            column=schema.target,
            hint="Refit needs labeled rows",
        )
    return df.loc[labeled].reset_index(drop=True), file, sha


def _merged_backbone_state(est: TextEstimator) -> dict[str, torch.Tensor]:
    """The current backbone's weights as plain tensors (LoRA adapters merged into a copy)."""
    backbone = copy.deepcopy(est.model_.backbone)
    if hasattr(backbone.model, "merge_and_unload"):
        backbone.model = backbone.model.merge_and_unload()
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def _token_ids(est: TextEstimator, frames: list[pd.DataFrame]) -> list[list[list[int]]]:
    """Token ids of each held-out frame, built once for every alpha WiSE-FT tries."""
    pre = est._preprocessing()
    return [est.backbone_.tokenize(prediction_texts(f, est.schema_, pre), est.config_.max_length) for f in frames]


def _held_out_score(est: TextEstimator, ids: list[list[int]], frame: pd.DataFrame) -> float:
    """Accuracy (classifiers) or minus the mean absolute error (regression) on labeled rows."""
    outputs = est._outputs_from_ids(ids, progress=False)
    regression = est.schema_.task == "regression"
    if regression:
        s = est.target_scaling_ or {"mean": 0.0, "std": 1.0}
        pred = outputs[:, 0] * s["std"] + s["mean"]
    else:
        pred = est.classes_[outputs.argmax(axis=1)]
    return float(np.mean(row_scores(pred, frame[est.schema_.target], regression=regression)))


def refit(
    est: TextEstimator,
    data: Any,
    y: Any = None,
    *,
    replay: Any = None,
    target: str | None = None,
    eval_set: Any = None,
    callbacks: Any = None,
    settings: dict[str, Any],
) -> TextEstimator:
    """See :meth:`FineTuner.refit`."""
    started = time.perf_counter()
    est._check_fitted()
    chosen = validate_settings(RefitSettings, settings)
    plan = chosen.plan(has_replay=replay is not None)
    schema, cfg = est.schema_, est.config_
    new_df, new_file, new_sha = _read(data, y, target, schema, "new data")
    old_df, replay_sha = None, None
    if replay is not None:
        old_df, _, replay_sha = _read(replay, None, target, schema, "replay data")
    valid_df = _read(eval_set, None, target, schema, "eval_set")[0] if eval_set is not None else None
    parts = RefitData(
        new_df,
        old_df,
        target=schema.target,
        stratify=schema.task != "regression",
        replay_ratio=chosen.replay_ratio,
        use_replay=plan.replay,
        valid_size=chosen.valid_size,
        seed=chosen.seed,
        eval_set=valid_df,
    )

    params = est.get_params()
    params.update(
        epochs=chosen.epochs or max(1, cfg.epochs // 2),
        lr=chosen.lr or cfg.lr,
        seed=chosen.seed,
        text_column=list(schema.text_columns),
        # the head is trained already: nothing to protect it from by unfreezing layer by layer
        gradual_unfreeze=False,
    )
    common = {"schema": schema, "label_values": list(est.label_values_), "target_scaling": est.target_scaling_}
    if plan.adapters:
        if cfg.strategy == "head_only":
            raise ConfigError(
                "method 'lora' trains adapters inside the encoder, but this model was fitted head_only",
                key="method",
                hint="Use method='auto' (a head-only model refits its head)",
            )
        base = _merged_backbone_state(est)
        head = {k: v.detach().clone() for k, v in est.model_.head.state_dict().items()}
        warm = WarmStart(**common, base_state=base, head_state=head, penalty=plan.penalty)
        anchor = {f"backbone.{k}": v for k, v in base.items()} | {f"head.{k}": v for k, v in head.items()}
        params["strategy"] = "lora"
    else:
        if cfg.strategy in ("fewshot", "full"):
            # The weights are a whole tuned network; continuing them is a full fine-tune (and
            # "auto" must not pick again from the few new rows).
            params["strategy"] = "full"
        state = {k: v.detach().clone() for k, v in est.model_.state_dict().items()}
        warm = WarmStart(**common, model_state=state, penalty=plan.penalty)
        anchor = state
    challenger = type(est)(**params)
    args = FitArguments(parts.train, None, schema.target, parts.new_valid, None, list(callbacks or []))
    challenger._fit(args, None, warm)
    if plan.adapters:
        # The adapters merge into the weights they were trained on; the folder then stores every
        # weight, since its base is the current model, not the pre-trained backbone.
        model = challenger.model_
        model.backbone.model = model.backbone.model.merge_and_unload()
        challenger.set_params(strategy="full")
        challenger.config_ = challenger.config_.model_copy(update={"strategy": "full"})

    # The challenger's settings stay the model's own (what a later fit would use); what this
    # refit trained with is in refit_info_.
    kept = {k: cfg.model_dump()[k] for k in ("epochs", "lr", "seed", "gradual_unfreeze")}
    challenger.set_params(**kept)
    challenger.config_ = challenger.config_.model_copy(update=kept)

    alpha: float | None = None
    trials: list[dict[str, Any]] = []
    if plan.interpolate:
        frames = [parts.new_valid] + ([parts.old_valid] if len(parts.old_valid) else [])
        frames = [f for f in frames if len(f)]
        ids = _token_ids(challenger, frames)
        tuned = {k: v.detach().clone() for k, v in challenger.model_.state_dict().items()}

        def score(a: float) -> list[float]:
            challenger.model_.load_state_dict(interpolate_state(anchor, tuned, a))
            return [_held_out_score(challenger, i, f) for i, f in zip(ids, frames, strict=True)]

        if frames:
            alpha, trials = choose_alpha(score, plan.alphas)
            challenger.model_.load_state_dict(interpolate_state(anchor, tuned, alpha))
    challenger.refit_info_ = {
        "plan": plan.to_dict(),
        "rows": parts.rows(),
        "replay": parts.replay_note,
        "alpha": alpha,
        "alpha_trials": trials,
        "epochs": params["epochs"],
        "lr": params["lr"],
        "train_seconds": float(challenger.train_seconds_),
        "seconds": time.perf_counter() - started,
        # the file's name, as a fit records it: a saved model carries no path of the machine that made it
        "data": {
            "new_file": Path(new_file).name if new_file else None,
            "new_sha256": new_sha,
            "replay_sha256": replay_sha,
        },
        "parent": {
            "model_version": saved_version(getattr(est, "model_path_", None)),
            "data_sha256": (getattr(est, "data_info_", None) or {}).get("sha256"),
        },
    }
    if challenger.run_dir_ is not None:
        atomic_write_json(challenger.run_dir_ / "refit.json", json_safe(challenger.refit_info_))
    return challenger
