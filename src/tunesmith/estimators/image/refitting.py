"""``ImageFineTuner.refit``: continue a fitted image model on new labeled images without forgetting.

The steps, in order: validate the settings and the plan they stand for
(:class:`~tunesmith.train.continual.RefitSettings`); read the new (and the old, replayed)
images in any form ``fit`` takes, refusing labels the model never saw before anything is
decoded; split them (:class:`~tunesmith.data.replay.RefitData`: new rows held out for early
stopping, old rows held out for WiSE-FT, old rows replayed beside the new); train a deep copy
of the current network with the fit's own loop, augmentation and BatchNorm handling, the loss
wrapped in L2-SP toward the current weights when the plan says so; then choose a WiSE-FT
interpolation on the held-out rows of both periods. The current model is never touched.

BatchNorm statistics are buffers, not weights: the interpolation blends them as it blends
the weights (their values lie between the two models'), and with ``batchnorm="recalibrate"``
each interpolated network's statistics are also re-estimated on the refit's training images
(new and replayed old), kept only when the held-out accuracy does not drop, as a fit keeps its
own re-estimate.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from torch import nn

from tunesmith.config import validate_settings
from tunesmith.data.images import read_image_folder
from tunesmith.data.io import read_table
from tunesmith.data.replay import RefitData, check_new_data
from tunesmith.data.schema import label_string
from tunesmith.errors import DataError
from tunesmith.estimators.base import unsupported
from tunesmith.estimators.image.inputs import ImageInput, Loaded, load_images
from tunesmith.estimators.image.model import ImageModel, model_logits, nhwc_to_tensor, recalibrate_batchnorm
from tunesmith.estimators.image.settings import ImageConfig
from tunesmith.runs.fingerprint import saved_version
from tunesmith.train.continual import (
    AnchorPenalty,
    PenalisedLoss,
    RefitPlan,
    RefitSettings,
    anchor_state,
    choose_alpha,
    interpolate_state,
)
from tunesmith.train.loop import training_summary
from tunesmith.train.precision import accelerate_precision, autocast_dtype
from tunesmith.train.threads import default_threads

# The ImageFineTuner being refitted; typed loosely because its module imports this one.
ImageEstimator = Any

ROW, FROM, LABEL = "_row", "_from", "_label"
"""Columns of the frames a refit splits: the row in its source's images, which source, the label."""


@dataclass
class _Source:
    """One labeled input of a refit (the new data, or the replay data), decoded once."""

    loaded: Loaded
    frame: pd.DataFrame  # ROW, FROM, LABEL: what RefitData splits and samples
    file: str | None
    sha256: str


def _is_array(data: Any) -> bool:
    return isinstance(data, np.ndarray) or (isinstance(data, list) and bool(data) and isinstance(data[0], np.ndarray))


def _label_table(cfg: ImageConfig, data: Any, y: Any, column: str, what: str) -> tuple[pd.DataFrame, list[str]]:
    """The labels of ``data`` as a table, read without decoding an image, and the columns it must have.

    Refusing an unknown label here saves decoding every image first.
    """
    if y is not None:
        return pd.DataFrame({column: np.asarray(y)}), []
    if _is_array(data) or isinstance(data, (list, tuple)):
        raise DataError(
            f"the {what} holds images without labels",
            hint="Pass the labels: refit(images, y) for new data, replay=(images, labels) for replay data",
        )
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        return read_image_folder(data, label_column=column, path_column=cfg.path_column), []
    if isinstance(data, pd.DataFrame):
        return data, [cfg.path_column]
    if isinstance(data, (str, os.PathLike)):
        return read_table(data), [cfg.path_column]
    raise DataError(
        f"the {what} is a {type(data).__name__}",
        hint=f"Pass a folder of class sub-folders, a table (file or DataFrame) with a {cfg.path_column!r} "
        "column and a label column, or an array of images with their labels",
    )


def _read(est: ImageEstimator, data: Any, y: Any, target: str | None, source: int, what: str) -> _Source:
    """``data`` checked against the model's classes, then decoded at its size as ``fit`` decodes."""
    cfg: ImageConfig = est.config_
    column = target or cfg.target
    file = str(data) if isinstance(data, (str, os.PathLike)) else None
    table, columns = _label_table(cfg, data, y, column, what)
    check_new_data(table, columns=columns, target=column, labels=list(est.labels_), file=file, what=what)
    pre = est.model_.backbone.preprocessing
    loaded = load_images(cfg, data, y, pre.size, pre.resize, need_labels=True, progress=cfg.progress, target=target)
    assert loaded.labels is not None
    if not len(loaded.images):
        raise DataError(f"no image of the {what} could be read", file=file, hint="Check the paths and the files")
    names = [label_string(v) for v in loaded.labels]
    frame = pd.DataFrame({ROW: np.arange(len(names)), FROM: source, LABEL: names})
    return _Source(loaded, frame, file, loaded.sha256())


def _gather(frame: pd.DataFrame, sources: Sequence[_Source], index_of: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and class indices of ``frame``'s rows, in its order."""
    first = sources[0].loaded.images
    images = np.empty((len(frame), *first.shape[1:]), dtype=np.uint8)
    rows, origin = frame[ROW].to_numpy(dtype=np.int64), frame[FROM].to_numpy(dtype=np.int64)
    for i, source in enumerate(sources):
        mask = origin == i
        images[mask] = source.loaded.images[rows[mask]]
    return images, np.array([index_of[n] for n in frame[LABEL]], dtype=np.int64)


def _weights_sha256(model: nn.Module) -> str:
    """SHA-256 of every tensor of ``model`` (names and bytes): which network a refit started from."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _moved_batchnorm(model: ImageModel, anchor: dict[str, torch.Tensor]) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers whose statistics the refit changed (the others were frozen all along)."""
    name_of = {id(m): n for n, m in model.named_modules()}
    moved = []
    for bn in model.backbone.batchnorm_layers():
        start = anchor.get(f"{name_of[id(bn)]}.running_mean")
        mean = bn.running_mean
        if mean is not None and (start is None or not torch.equal(mean.cpu(), start.cpu())):
            moved.append(bn)
    return moved


RECALIBRATION_IMAGES = 512
"""Training images WiSE-FT re-estimates each interpolated network's BatchNorm statistics on: a
few hundred images fix the statistics well, and every alpha tried costs one pass over them."""


def _interpolate(
    est: ImageEstimator,
    anchor: dict[str, torch.Tensor],
    train_images: np.ndarray,
    held: list[tuple[np.ndarray, np.ndarray]],
    alphas: Sequence[float],
    seed: int = 0,
) -> tuple[float, list[dict[str, Any]]]:
    """WiSE-FT: load the interpolation whose mean held-out accuracy is best; return it and every trial.

    ``held`` is the new and (when replay data was given) the old held-out rows. With
    ``batchnorm="recalibrate"``, an interpolated network's statistics are those of its own
    weights, re-estimated on a sample of ``train_images`` (at most
    :data:`RECALIBRATION_IMAGES`, the same for every alpha), as a fit re-estimates them;
    ``alpha`` 1.0 is the refitted network, whose statistics were re-estimated after training.
    With frozen statistics they are interpolated with the weights.
    """
    model: ImageModel = est.model_
    cfg: ImageConfig = est.config_
    tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = _moved_batchnorm(model, anchor) if cfg.batchnorm == "recalibrate" else []
    if len(train_images) > RECALIBRATION_IMAGES:
        pick = np.random.default_rng(seed).choice(len(train_images), size=RECALIBRATION_IMAGES, replace=False)
        train_images = train_images[np.sort(pick)]
    images = nhwc_to_tensor(train_images)
    held_t = [(nhwc_to_tensor(x), y) for x, y in held]
    n_outputs = len(est.labels_)

    def batchnorm(alpha: float) -> str:
        return "re-estimated" if layers and alpha < 1.0 else "interpolated" if alpha < 1.0 else "refitted"

    def load(alpha: float) -> None:
        model.load_state_dict(tuned if alpha >= 1.0 else interpolate_state(anchor, tuned, alpha))
        if batchnorm(alpha) == "re-estimated":
            recalibrate_batchnorm(model, layers, images, model.backbone.preprocessing, cfg.eval_batch_size)

    def score(alpha: float) -> list[float]:
        load(alpha)
        return [
            float(np.mean(model_logits(model, x, cfg.eval_batch_size, n_outputs).argmax(axis=1) == y))
            for x, y in held_t
        ]

    alpha, trials = choose_alpha(score, alphas)
    load(alpha)
    for trial in trials:
        trial["batchnorm"] = batchnorm(trial["alpha"])
    return alpha, trials


def refit_image(
    est: ImageEstimator,
    data: ImageInput,
    y: Any = None,
    *,
    replay: Any = None,
    target: str | None = None,
    settings: dict[str, Any],
) -> ImageEstimator:
    """See :meth:`ImageFineTuner.refit`."""
    started = time.perf_counter()
    est._check_fitted()
    chosen = validate_settings(RefitSettings, settings)
    plan: RefitPlan = chosen.plan(has_replay=replay is not None)
    if plan.adapters:
        raise unsupported(
            est,
            "refit method 'lora'",
            "Use method='auto' or 'l2sp': LoRA adapters are for text backbones; L2-SP keeps a CNN near its "
            "current weights",
        )
    cfg: ImageConfig = est.config_
    new = _read(est, data, y, target, 0, "new data")
    sources = [new]
    if replay is not None:
        old_x, old_y = replay if isinstance(replay, tuple) and len(replay) == 2 else (replay, None)
        sources.append(_read(est, old_x, old_y, target, 1, "replay data"))
    parts = RefitData(
        new.frame,
        sources[1].frame if replay is not None else None,
        target=LABEL,
        stratify=True,
        replay_ratio=chosen.replay_ratio,
        use_replay=plan.replay,
        valid_size=chosen.valid_size,
        seed=chosen.seed,
    )
    index_of = {name: i for i, name in enumerate(est.labels_)}
    train_split = _gather(parts.train, sources, index_of)
    new_valid = _gather(parts.new_valid, sources, index_of)
    old_valid = _gather(parts.old_valid, sources, index_of)

    # Continuing from a trained model needs fewer passes than a fit. Gradual unfreezing is a
    # fit's way to let a new head settle; a refit's head is already trained, so it is off.
    run_cfg = cfg.model_copy(
        update={
            "epochs": chosen.epochs or max(1, cfg.epochs // 2),
            "lr": chosen.lr or cfg.lr,
            "seed": chosen.seed,
            "gradual_unfreeze": False,
            # A few-shot model's frozen backbone and fitted head continue as a full fine-tune.
            "strategy": "full" if cfg.strategy == "fewshot" else cfg.strategy,
        }
    )
    challenger = type(est)(**est.get_params())
    challenger.label_values_ = list(est.label_values_)
    challenger.classes_ = np.asarray(challenger.label_values_, dtype=object)
    torch.set_num_threads(cfg.num_threads or default_threads())
    # Checked before Accelerate fixes its precision for the whole process.
    autocast_dtype(cfg.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=accelerate_precision(cfg.mixed_precision)
    )
    anchor = anchor_state(est.model_)
    # On the training device before the penalty pairs each weight with its anchor.
    model = copy.deepcopy(est.model_).to(accelerator.device)
    wrap_loss: Callable[[nn.Module], nn.Module] | None = None
    if plan.penalty:
        wrap_loss = partial(PenalisedLoss, penalty=AnchorPenalty(model, anchor, plan.penalty))
    state, loop_seconds, info = challenger._train(
        run_cfg,
        model.backbone,
        list(est.labels_),
        train_split,
        new_valid,
        accelerator,
        [],
        None,
        start=model,
        wrap_loss=wrap_loss,
    )
    train_seconds = sum(float(h.get("epoch_seconds") or 0.0) for h in state.history) or loop_seconds
    # The model's settings stay those of its fit (a later refit halves the fit's epochs again);
    # what this refit used is in refit_info_.
    challenger.config_ = cfg.model_copy()

    alpha: float | None = None
    trials: list[dict[str, Any]] = []
    held = [part for part in (new_valid, old_valid) if len(part[1])]
    if plan.interpolate and len(new_valid[1]):
        alpha, trials = _interpolate(challenger, anchor, train_split[0], held, plan.alphas, chosen.seed)
    challenger.training_info_ = {
        **training_summary(
            state, monitor=info["monitor"], train_seconds=train_seconds, loop_seconds=loop_seconds, started=started
        ),
        "parameters": info["parameters"],
        "batchnorm": info["batchnorm"],
    }
    # The fit's test and baseline scores were of the parent; the gate scores the challenger.
    challenger.test_metrics_ = None
    challenger.baseline_metrics_ = {}
    challenger.uncertainty_ = {}
    challenger.data_info_ = copy.deepcopy(getattr(est, "data_info_", None) or {})
    challenger.refit_info_ = {
        "plan": plan.to_dict(),
        "rows": parts.rows(),
        "replay": parts.replay_note,
        "alpha": alpha,
        "alpha_trials": trials,
        "epochs": run_cfg.epochs,
        "lr": run_cfg.lr,
        "epochs_run": len(state.history),
        "best_epoch": state.best_epoch,
        "batchnorm": info["batchnorm"],
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - started,
        "data": {
            "new_file": Path(new.file).name if new.file else None,
            "new_sha256": new.sha256,
            "replay_sha256": sources[1].sha256 if replay is not None else None,
        },
        "parent": {
            "model_version": saved_version(getattr(est, "model_path_", None)),
            "weights_sha256": _weights_sha256(est.model_),
            "data_sha256": (getattr(est, "data_info_", None) or {}).get("sha256"),
        },
    }
    return challenger
