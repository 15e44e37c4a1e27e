"""Few-shot image models: a closed-form head on the frozen pre-trained CNN's features.

With a handful of labeled images per class, fine-tuning a CNN and a new head by gradient steps
has almost nothing to learn from: a few batches, a validation split of a few images to stop
on, BatchNorm statistics estimated from a few dozen images. A pre-trained CNN's pooled features
already separate most classes, so ``strategy="fewshot"`` keeps the backbone as it was trained
(weights and BatchNorm statistics, eval mode) and fits the head in closed form on its features
(:mod:`tunesmith.train.heads`: a logistic regression or class prototypes, the same heads as
the text kind's few-shot strategy). The logistic head is the default: on MNIST with 8 images
per class it beat the prototypes on every seed, and ``auto``'s k-fold choice between the two,
made on a few dozen images, picked the prototypes on two seeds of three. The head is copied
into the model's linear layer, so the result is an ordinary
:class:`~tunesmith.estimators.image.model.ImageModel` that saves, predicts, exports to ONNX and
serves as every image model does.

When augmentation is on (setting ``augment``), the head also learns from ``fewshot_views``
augmented copies of each training image: the augmentations the user declared label-preserving
give the head more points per class at the cost of one forward pass per copy, with nothing
added at prediction time. A short contrastive tuning of the top stages (as the text kind does)
was measured on MNIST with 8 images per class and left out: without augmentation it lowered
accuracy, with it it matched the augmented copies at several times their cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from tunesmith.adapt import count_parameters, set_trainable
from tunesmith.backbones.image import ImageBackbone
from tunesmith.data.image_augment import ImageAugment, augment_batch
from tunesmith.estimators.image.model import ImageModel, model_features, model_logits, nhwc_to_tensor, softmax
from tunesmith.estimators.image.settings import ImageConfig
from tunesmith.evaluate.metrics import compute_metrics
from tunesmith.runs.record import RunRecord
from tunesmith.train.callbacks import Callback, TrainState, end_epoch
from tunesmith.train.heads import choose_head, head_weights, resolve_auto_strategy

__all__ = ["IMAGE_FEWSHOT_MAX_PER_CLASS", "augmented_views", "resolve_strategy", "train_fewshot", "trainer"]


# Settings only the training loop reads.
_LOOP_SETTINGS = (
    "epochs",
    "lr",
    "head_lr",
    "batch_size",
    "optimizer",
    "scheduler",
    "loss",
    "label_smoothing",
    "freeze_layers",
    "gradual_unfreeze",
    "layer_lr_decay",
)


# Lower than text's 64: on MNIST-5k (bench/few_labels.py) the few-shot head led full fine-tuning
# by about 10 points at 16 images per class and trailed it by about 4 at 64.
IMAGE_FEWSHOT_MAX_PER_CLASS = 32


def resolve_strategy(cfg: ImageConfig, task: str, y_train: Any) -> ImageConfig:
    """The settings with ``strategy="auto"`` resolved (:func:`~tunesmith.train.heads.resolve_auto_strategy`).

    A backbone without pre-trained weights (``pretrained=False``) keeps full fine-tuning:
    random features are no basis for a head.
    """
    resolved: ImageConfig = resolve_auto_strategy(
        cfg,
        task,
        y_train,
        loop_settings=_LOOP_SETTINGS,
        keep_full=not cfg.pretrained,
        hint="Use strategy='full' (or 'head_only') for regression",
        max_per_class=IMAGE_FEWSHOT_MAX_PER_CLASS,
    )
    return resolved


def augmented_views(
    images: torch.Tensor, augment: ImageAugment, views: int, seed: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """``views`` augmented copies of uint8 NCHW ``images``, one uint8 tensor at a time, seeded.

    Each copy draws from its own generator (seeded by ``seed`` and the copy's number), so the
    same settings give byte-identical copies; mixup and cutmix, which change labels, are not used.
    """
    for view in range(views):
        key = np.random.SeedSequence([seed, view]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(key))
        out = torch.empty_like(images)
        for start in range(0, len(images), batch_size):
            x = augment_batch(images[start : start + batch_size].float().div_(255.0), augment, generator)
            out[start : start + batch_size] = x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        yield out


def _log_loss(features: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> float:
    logits = features.astype(np.float64) @ weight.T.astype(np.float64) + bias
    logits -= logits.max(axis=1, keepdims=True)
    log_proba = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_proba[np.arange(len(y)), y].mean())


def train_fewshot(
    est: Any,
    cfg: ImageConfig,
    backbone: ImageBackbone,
    labels: list[str],
    train_split: tuple[np.ndarray, np.ndarray],
    valid_split: tuple[np.ndarray | None, np.ndarray | None],
    accelerator: Accelerator,
    callbacks: Sequence[Callback],
    record: RunRecord | None,
    *,
    ckpt: Any = None,
) -> tuple[TrainState, float, dict[str, Any]]:
    """The training step of ``ImageFineTuner.fit`` for ``strategy="fewshot"``; returns what ``_train`` returns.

    Features of the training images (and of their augmented copies when ``augment`` is on)
    from the frozen backbone in eval mode; the ``fewshot_head`` (``auto``: logistic or
    prototype, whichever classifies held-out labeled images better by k-fold) fitted on them
    and copied into the model's head. The run's history holds one entry, as one epoch would:
    the head's log loss on the training images and the validation metrics. ``callbacks`` see
    that entry through ``on_epoch_end``. ``ckpt`` is unused: there is no loop to resume.
    """
    (train_images, y_train), (valid_images, y_valid) = train_split, valid_split
    y_train = np.asarray(y_train, dtype=np.int64)
    task, n_classes = ("binary" if len(labels) == 2 else "multiclass"), len(labels)
    set_seed(cfg.seed)
    model = ImageModel(backbone, n_classes, cfg.dropout, freeze_all_bn=cfg.batchnorm == "frozen")
    set_trainable(model, False)
    model.to(accelerator.device)
    model.eval()
    head_size = sum(p.numel() for p in model.head.parameters())
    state = TrainState(model=model, epochs=1, steps_per_epoch=1, is_main_process=accelerator.is_main_process)
    ordered = sorted(callbacks, key=lambda cb: cb.order)
    started = time.perf_counter()
    # The loop's callback contract: on_fit_end always runs; StopTraining ends cleanly.
    try:
        for cb in ordered:
            cb.on_fit_start(state)
        show = cfg.progress and accelerator.is_main_process
        train_t = nhwc_to_tensor(train_images)
        original = model_features(model, train_t, cfg.eval_batch_size, show_progress=show)
        features, targets = [original], [y_train]
        views = cfg.fewshot_views if cfg.augment.per_image else 0
        for copy in augmented_views(train_t, cfg.augment, views, cfg.seed, cfg.eval_batch_size):
            features.append(model_features(model, copy, cfg.eval_batch_size, show_progress=show))
            targets.append(y_train)
        head: str = cfg.fewshot_head
        if head == "auto":
            # Chosen on the original images only: copies of one image in both folds would flatter the
            # head that memorises them.
            head = choose_head(original, y_train, cfg.fewshot_head_c, cfg.seed)
        weight, bias = head_weights(
            head, np.concatenate(features), np.concatenate(targets), n_classes, cfg.fewshot_head_c, cfg.seed
        )
        with torch.no_grad():
            model.head.linear.weight.copy_(torch.as_tensor(weight))
            model.head.linear.bias.copy_(torch.as_tensor(bias))
        train_seconds = time.perf_counter() - started
        examples = len(y_train) * (1 + views)
        state.step, state.examples_seen, state.epoch = 1, examples, 1
        metrics: dict[str, Any] = {
            "epoch": 1,
            "train_loss": _log_loss(original, y_train, weight, bias),
            "epoch_seconds": train_seconds,
            "train_examples_per_s": examples / train_seconds if train_seconds > 0 else None,
            "head": head,
            "augmented_views": views,
        }
        monitor = "accuracy" if cfg.monitor == "auto" else cfg.monitor
        if valid_images is not None and y_valid is not None and len(y_valid):
            logits = model_logits(model, nhwc_to_tensor(valid_images), cfg.eval_batch_size, n_classes)
            found = compute_metrics(task, y_valid, softmax(logits), labels)
            for key, value in found.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "n":
                    metrics[f"valid_{key}"] = float(value)
            state.best_epoch = 1
        state.history.append(metrics)
        if record is not None:
            record.log_epoch(metrics)
        end_epoch(ordered, state, metrics)
    finally:
        for cb in ordered:
            cb.on_fit_end(state)
    loop_seconds = time.perf_counter() - started
    _, total = count_parameters(model)
    est.model_ = model
    est.backbone_ = backbone
    est.config_ = cfg
    est.labels_ = labels
    est.task_ = task
    est.history_ = state.history
    est.best_epoch_ = state.best_epoch
    est.stop_reason_ = state.stop_reason
    info = {
        "monitor": monitor,
        "parameters": {"trainable": head_size, "total": total},
        # The pre-trained statistics are the ones the features were computed with: they stay.
        "batchnorm": {"mode": "pretrained", "recalibrated_layers": 0},
    }
    return state, loop_seconds, info


def trainer(est: Any, cfg: ImageConfig) -> Callable[..., tuple[TrainState, float, dict[str, Any]]]:
    """The training step of a fit with the resolved ``cfg``: :func:`train_fewshot` for the
    fewshot strategy, else the estimator's training loop (``est._train``); both take the same arguments."""
    return partial(train_fewshot, est) if cfg.strategy == "fewshot" else est._train
