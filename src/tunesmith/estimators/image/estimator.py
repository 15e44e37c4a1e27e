"""Fine-tune a pre-trained image CNN on labeled images: :class:`ImageFineTuner`.

The same estimator contract as every kind (:class:`~tunesmith.estimators.base.Estimator`),
the same training loop, callbacks, freezing, gradual unfreezing and layer-wise learning
rates as the text kind. What is particular to images: decoding and resizing once into a
uint8 cache (:mod:`.inputs`), seeded augmentation on the fly and deliberate BatchNorm
handling (:mod:`.model`, setting ``batchnorm``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from sklearn.model_selection import train_test_split
from torch import nn

from tunesmith.adapt import GradualUnfreezer, apply_freezing, count_parameters, param_groups, set_trainable
from tunesmith.backbones import create_image_backbone
from tunesmith.backbones.image import ImageBackbone, rebuild
from tunesmith.data.schema import label_string, sorted_labels
from tunesmith.data.targets import check_target_classes
from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators import resume as resume_run
from tunesmith.estimators.base import Estimator, fit_arguments, row_limit
from tunesmith.estimators.image.fewshot import resolve_strategy, trainer
from tunesmith.estimators.image.folder import dict_or, open_image_folder, write_image_folder
from tunesmith.estimators.image.inputs import (
    ImageInput,
    Loaded,
    encode_labels,
    label_values,
    load_for_prediction,
    load_images,
)
from tunesmith.estimators.image.model import (
    Collate,
    ImageModel,
    IndexDataset,
    RecalibrateBeforeValidation,
    backbone_features,
    model_features,
    model_logits,
    nhwc_to_tensor,
    reset_random,
    settle_batchnorm,
    softmax,
    trained_batchnorm,
)
from tunesmith.estimators.image.record import finish_record, start_record, test_predictions
from tunesmith.estimators.image.refitting import refit_image
from tunesmith.estimators.image.settings import ImageConfig, make_image_config
from tunesmith.evaluate.baselines import embedding_baseline, majority_baseline
from tunesmith.evaluate.intervals import TestPredictions
from tunesmith.evaluate.metrics import compute_metrics, metric_direction
from tunesmith.runs.trust import SafeFolder, open_model
from tunesmith.train.callbacks import Callback, EarlyStopping, EpochHook, ProgressBar, TrainState, snapshot
from tunesmith.train.checkpoint import Checkpointer
from tunesmith.train.loop import LoopSettings, train, training_summary
from tunesmith.train.losses import make_loss
from tunesmith.train.optim import make_optimizer, make_scheduler
from tunesmith.train.precision import accelerate_precision, autocast_dtype
from tunesmith.train.threads import default_threads

PROGRESS_MIN_IMAGES = 1024
"""Predictions over at least this many images show progress (when the ``progress`` setting is on)."""


@dataclass
class _Splits:
    """The data of one fit, read, labelled and split: uint8 NHWC images and class indices."""

    data: Loaded
    labels: list[str]
    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    test: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    reports: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return "binary" if len(self.labels) == 2 else "multiclass"


def _pair(value: Any) -> tuple[Any, Any]:
    return value if isinstance(value, tuple) and len(value) == 2 else (value, None)


class ImageFineTuner(Estimator):
    """Fine-tune a pre-trained image backbone on labeled images.

    Parameters are the fields of :class:`ImageConfig` (``backbone``, ``epochs``, ``lr``,
    ``strategy``, ``batchnorm``, ``augment``, ``runs_dir``...). ``fit`` takes a folder with
    one sub-folder per class, a table (file or DataFrame) with an image-path column and a
    label column, or a numpy array of images with ``y``.

    Examples
    --------
    >>> ft = ImageFineTuner(backbone="efficientnet-lite0", image_size=64, epochs=5)  # doctest: +SKIP
    >>> ft.fit("photos/")  # doctest: +SKIP
    >>> ft.predict(["photos/cat/1.jpg"])  # doctest: +SKIP
    """

    kind: ClassVar[str] = "image"
    settings_model = ImageConfig
    model_path_: Path | None = None  # where the model was saved or loaded from
    run_dir_: Path | None = None  # the run record of the last fit, if one was written
    refit_info_: dict[str, Any] | None = None  # what refit() did, on a model it returned (or loaded)

    @property
    def config(self) -> ImageConfig:
        """The validated settings."""
        return make_image_config(self._params)

    def _settings(self) -> ImageConfig:
        return getattr(self, "config_", None) or self.config

    # --- fit -----------------------------------------------------------------------------

    def fit(
        self,
        data: ImageInput,
        y: Any = None,
        *,
        target: str | None = None,
        eval_set: tuple[ImageInput, Any] | ImageInput | None = None,
        test_set: tuple[ImageInput, Any] | ImageInput | None = None,
        callbacks: Sequence[Callback] | None = None,
        resume: str | os.PathLike[str] | None = None,
        valid: tuple[ImageInput, Any] | ImageInput | None = None,
        test: tuple[ImageInput, Any] | ImageInput | None = None,
    ) -> ImageFineTuner:
        """Fine-tune on ``data`` (and ``y`` for arrays); returns ``self``.

        ``target`` names the label column of a table (default: the ``target`` setting).
        Without ``eval_set``/``test_set``, stratified validation and test splits of
        ``valid_size`` and ``test_size`` are carved out (seeded); given, they take the same
        forms as ``data``, as ``(X, y)`` pairs for arrays. ``valid=``/``test=`` are the
        deprecated spellings of ``eval_set=``/``test_set=``. ``resume`` is the run folder of a
        killed fit to continue (see :mod:`tunesmith.estimators.resume`).
        """
        args = fit_arguments(
            self,
            data,
            y,
            target=target,
            eval_set=eval_set,
            test_set=test_set,
            callbacks=callbacks,
            deprecated={"valid": valid, "test": test},
            resume=resume,
        )
        cfg = self.config
        started = time.perf_counter()
        self.model_path_ = None  # a refit model is no longer the one in any earlier folder
        self.run_dir_ = None
        self.refit_info_ = None  # a fit from the pre-trained backbone is no refit
        torch.set_num_threads(cfg.num_threads or default_threads())
        set_seed(cfg.seed)
        backbone = self._build_backbone(cfg)
        splits = self._read_and_split(cfg, args.data, args.y, args.target, args.eval_set, args.test_set, backbone)
        cfg = resolve_strategy(cfg, splits.task, splits.train[1])
        # Checked before Accelerate fixes its precision for the whole process.
        autocast_dtype(cfg.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision=accelerate_precision(cfg.mixed_precision)
        )
        main = accelerator.is_main_process
        record, checkpointer = start_record(cfg, splits.data.file, args.resume, main, splits.train)
        baselines = self._baselines(cfg, backbone, splits)
        state, loop_seconds, info = trainer(self, cfg)(
            cfg,
            backbone,
            splits.labels,
            splits.train,
            splits.valid,
            accelerator,
            args.callbacks,
            record,
            ckpt=checkpointer,
        )
        predictions = self._evaluate(splits, baselines)
        train_seconds = sum(float(h.get("epoch_seconds") or 0.0) for h in state.history) or loop_seconds
        self.training_info_ = {
            **training_summary(
                state, monitor=info["monitor"], train_seconds=train_seconds, loop_seconds=loop_seconds, started=started
            ),
            "parameters": info["parameters"],
            "batchnorm": info["batchnorm"],
        }
        finish_record(self, record, predictions)
        resume_run.finish(checkpointer, cfg)
        return self

    def _build_backbone(self, cfg: ImageConfig) -> ImageBackbone:
        """The pre-trained backbone, or the same architecture from random weights (``pretrained=False``)."""
        backbone = create_image_backbone(cfg.backbone, image_size=cfg.image_size)
        if not cfg.pretrained:
            backbone = rebuild(
                backbone.architecture,
                backbone.preprocessing.to_dict(),
                name=backbone.name,
                fingerprint="random-init",
                hidden_size=backbone.hidden_size,
            )
            reset_random(backbone, cfg.seed)
        backbone.preprocessing.resize = cfg.resize
        return backbone

    def _read_and_split(
        self,
        cfg: ImageConfig,
        X: ImageInput,
        y: Any,
        target: str | None,
        eval_set: Any,
        test_set: Any,
        backbone: ImageBackbone,
    ) -> _Splits:
        """Decode every split, encode the labels, and carve validation and test splits when not given."""
        size, column = backbone.preprocessing.size, target or cfg.target

        def read(x: Any, y_: Any, show: bool) -> Loaded:
            return load_images(cfg, x, y_, size, cfg.resize, need_labels=True, progress=show, target=target)

        data = read(X, y, cfg.progress)
        assert data.labels is not None
        names = [label_string(v) for v in data.labels]
        labels = list(sorted_labels(names))
        if len(labels) < 2:
            raise DataError(f"need at least two classes, found {len(labels)}", column=column)
        check_target_classes(names, column=column, file=X if isinstance(X, (str, os.PathLike)) else None)
        index_of = {name: i for i, name in enumerate(labels)}
        y_all = np.array([index_of[n] for n in names], dtype=np.int64)
        self.label_values_ = label_values(labels, data.labels)
        self.classes_ = np.asarray(self.label_values_, dtype=object)

        def carve(indices: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
            n = round(share * len(y_all))
            if n == 0:
                return indices, indices[:0]
            counts = np.bincount(y_all[indices])
            # Stratified only where every class fits on both sides (few-shot data often does not).
            fits = counts[counts > 0].min() >= 2 and (counts > 0).sum() <= min(n, len(indices) - n)
            strat = y_all[indices] if fits else None
            keep, taken = train_test_split(indices, test_size=n, stratify=strat, random_state=seed)
            return np.sort(keep), np.sort(taken)

        splits = _Splits(data, labels, (data.images, y_all))
        splits.reports["train"] = data.report.to_dict() if data.report is not None else None
        splits.dropped["train"] = data.dropped()
        rest = np.arange(len(y_all))
        for name, given, share, seed in (
            ("test", test_set, cfg.test_size, cfg.seed),
            ("valid", eval_set, cfg.valid_size, cfg.seed + 1),
        ):
            if given is not None:
                part = read(*_pair(given), False)
                setattr(splits, name, (part.images, encode_labels(part, index_of, name, column)))
                splits.reports[name] = part.report.to_dict() if part.report is not None else None
                splits.dropped[name] = part.dropped()
            elif share:
                rest, taken = carve(rest, share, seed)
                setattr(splits, name, (data.images[taken], y_all[taken]))
        splits.train = (data.images[rest], y_all[rest])
        return splits

    def _baselines(self, cfg: ImageConfig, backbone: ImageBackbone, splits: _Splits) -> dict[str, dict[str, Any]]:
        """Majority and frozen-feature baselines on the test split, from the untouched backbone."""
        (train_images, y_train), (test_images, y_test) = splits.train, splits.test
        baselines: dict[str, dict[str, Any]] = {}
        if not cfg.baselines or y_test is None or not len(y_test):
            return baselines
        n_classes, task = len(splits.labels), splits.task
        baselines["majority"] = majority_baseline(y_train, y_test, task, n_classes, labels=splits.labels)
        if cfg.pretrained and test_images is not None:
            f_train = backbone_features(backbone, train_images, cfg.eval_batch_size, show_progress=cfg.progress)
            f_test = backbone_features(backbone, test_images, cfg.eval_batch_size, show_progress=cfg.progress)
            baselines["frozen"] = embedding_baseline(
                f_train, y_train, f_test, y_test, task, n_classes, seed=cfg.seed, labels=splits.labels
            )
        return baselines

    def _train(
        self,
        cfg: ImageConfig,
        backbone: ImageBackbone,
        labels: list[str],
        train_split: tuple[np.ndarray, np.ndarray],
        valid_split: tuple[np.ndarray | None, np.ndarray | None],
        accelerator: Accelerator,
        callbacks: Sequence[Callback],
        record: Any,
        *,
        start: ImageModel | None = None,
        wrap_loss: Callable[[nn.Module], nn.Module] | None = None,
        ckpt: Checkpointer | None = None,
    ) -> tuple[TrainState, float, dict[str, Any]]:
        """Build the network, freeze, train with the shared loop, then settle BatchNorm statistics.

        ``train_split`` and ``valid_split`` are uint8 NHWC images with class indices into
        ``labels``. A fit builds a new head on ``backbone``. A refit passes ``start``, a copy of
        the current network to continue (``backbone`` is then its backbone), and ``wrap_loss``,
        which wraps the training loss (L2-SP adds its pull toward the current weights there).
        """
        (train_images, y_train), (valid_images, y_valid) = train_split, valid_split
        task, n_classes = ("binary" if len(labels) == 2 else "multiclass"), len(labels)
        pre = backbone.preprocessing
        set_seed(cfg.seed)
        if start is None:
            model = ImageModel(backbone, n_classes, cfg.dropout, freeze_all_bn=cfg.batchnorm == "frozen")
        else:
            # A loaded network does not know its BatchNorm mode, and a fitted one has every
            # parameter frozen: the head trains again, the backbone as the strategy says below.
            model = start
            model.freeze_all_bn = cfg.batchnorm == "frozen"
            set_trainable(model.head, True)
        prefix = apply_freezing(
            backbone,  # type: ignore[arg-type]
            strategy=cfg.strategy,
            freeze_embeddings=cfg.freeze_layers > 0,
            freeze_layers=cfg.freeze_layers,
        )
        if cfg.loss == "focal" and cfg.augment.needs_soft_targets:
            raise ConfigError(
                "focal loss needs hard labels but mixup/cutmix make soft ones",
                key="loss",
                hint="Use loss=cross_entropy with mixup or cutmix",
            )
        loss_fn = make_loss(cfg.loss, task, label_smoothing=cfg.label_smoothing)
        if wrap_loss is not None:
            loss_fn = wrap_loss(loss_fn)
        groups = param_groups(
            backbone,  # type: ignore[arg-type]
            model.head,
            lr=cfg.lr,
            head_lr=cfg.head_lr,
            weight_decay=cfg.weight_decay,
            layer_lr_decay=cfg.layer_lr_decay,
        )
        optimizer = make_optimizer(cfg.optimizer, groups, lr=cfg.lr, momentum=cfg.momentum)
        train_t = nhwc_to_tensor(train_images)
        valid_t = nhwc_to_tensor(valid_images) if valid_images is not None else None
        collate = Collate(train_t, valid_t, pre, cfg.augment, n_classes, cfg.seed)
        train_set = IndexDataset(y_train, augment=True)
        valid_set = IndexDataset(y_valid, augment=False) if y_valid is not None and len(y_valid) else None
        monitor = "accuracy" if cfg.monitor == "auto" else cfg.monitor
        mode = metric_direction(monitor, task)

        def valid_metrics(targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
            return compute_metrics(task, targets, softmax(outputs), labels)

        loop_callbacks: list[Callback] = []
        if valid_set is not None:
            loop_callbacks.append(
                EarlyStopping(
                    monitor,
                    mode,
                    patience=cfg.patience,
                    restore_best=cfg.restore_best,
                    stop=cfg.early_stopping,
                    # BatchNorm statistics are buffers, not parameters: the full state is copied.
                    state_fn=lambda: {k: v.detach().cpu() for k, v in snapshot(model, False).items()},
                    load_fn=lambda s: model.load_state_dict(s, strict=False),
                )
            )
        if cfg.gradual_unfreeze and cfg.strategy == "full":
            unfreezer = GradualUnfreezer(backbone, frozen_prefix=prefix)  # type: ignore[arg-type]

            def unfreeze(state: TrainState) -> None:
                state.extra["trainable_layer_groups"] = unfreezer.apply(state.epoch)

            loop_callbacks.append(EpochHook(unfreeze))
        if cfg.batchnorm == "recalibrate" and valid_set is not None:
            loop_callbacks.append(RecalibrateBeforeValidation(model, train_t, pre, cfg.eval_batch_size, cfg.seed))
        if cfg.progress:
            loop_callbacks.append(ProgressBar(f"fine-tuning {cfg.backbone} ({cfg.strategy})"))
        if record is not None:
            loop_callbacks.append(resume_run.history_logger(record.log_epoch))
        loop_callbacks.extend(callbacks)
        trainable, total = count_parameters(model)
        settings = LoopSettings(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size,
            grad_clip=cfg.grad_clip,
            seed=cfg.seed,
            length_bucketing=False,
            autocast_dtype=autocast_dtype(cfg.mixed_precision, accelerator.device),
        )
        # Channels-last weights make every convolution run on NHWC data, which oneDNN computes
        # faster on CPUs; the saved weights go back to the usual layout after training.
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model.to(memory_format=memory_format)  # type: ignore[call-overload]
        initial_bn = {
            id(bn): bn.running_mean.detach().clone()
            for bn in backbone.batchnorm_layers()
            if bn.running_mean is not None
        }
        loop_started = time.perf_counter()
        state = train(
            model,
            train_set=train_set,
            train_lengths=np.ones(len(y_train), dtype=np.int64),
            valid_set=valid_set,
            valid_lengths=np.ones(len(y_valid), dtype=np.int64)
            if valid_set is not None and y_valid is not None
            else None,
            valid_targets=y_valid if valid_set is not None else None,
            collate=collate,
            loss_fn=loss_fn,
            optimizer=optimizer,
            make_scheduler=lambda opt, total_steps: make_scheduler(
                opt, cfg.scheduler, total_steps=total_steps, warmup_ratio=cfg.warmup_ratio
            ),
            settings=settings,
            accelerator=accelerator,
            valid_metrics=valid_metrics,
            callbacks=loop_callbacks,
            checkpointer=ckpt,
        )
        loop_seconds = time.perf_counter() - loop_started
        model = accelerator.unwrap_model(model)
        model.to(memory_format=torch.contiguous_format)
        # Layers still holding their starting statistics were frozen up to the restored epoch
        # (gradual unfreezing can open them later, then restore-best puts them back): they keep them.
        trained_bn = [
            bn
            for bn in (trained_batchnorm(model) if cfg.batchnorm == "recalibrate" else [])
            if id(bn) not in initial_bn or not torch.equal(bn.running_mean, initial_bn[id(bn)])  # type: ignore[arg-type]
        ]
        set_trainable(model, False)
        model.eval()
        self.model_ = model
        self.backbone_ = backbone
        self.config_ = cfg
        self.labels_ = labels
        self.task_ = task
        self.history_ = state.history
        self.best_epoch_ = state.best_epoch
        self.stop_reason_ = state.stop_reason
        bn_info: dict[str, Any] = {"mode": cfg.batchnorm, "recalibrated_layers": 0}
        if trained_bn:
            score = self._validation_score(task, labels, valid_t, y_valid)
            bn_info.update(
                settle_batchnorm(
                    model, trained_bn, train_t, cfg.eval_batch_size, score, monitor, mode, show_progress=cfg.progress
                )
            )
        info = {"monitor": monitor, "parameters": {"trainable": trainable, "total": total}, "batchnorm": bn_info}
        return state, loop_seconds, info

    def _validation_score(
        self, task: str, labels: list[str], images: torch.Tensor | None, targets: np.ndarray | None
    ) -> Callable[[str], float | None] | None:
        """A function: metric name -> the fitted model's value on the validation split (None without one)."""
        if images is None or targets is None or not len(targets):
            return None

        def score(name: str) -> float | None:
            value = compute_metrics(task, targets, self._proba_from_tensor(images), labels).get(name)
            return float(value) if isinstance(value, (int, float)) else None

        return score

    def _evaluate(self, splits: _Splits, baselines: dict[str, dict[str, Any]]) -> TestPredictions | None:
        """Score the test split; note rows per split, what was dropped and the data's fingerprint.

        Returns the test rows' probabilities (with the majority baseline's) for the intervals.
        """
        (_, y_train), (_, y_valid), (test_images, y_test) = splits.train, splits.valid, splits.test
        self.baseline_metrics_ = baselines
        self.test_metrics_: dict[str, Any] | None = None
        proba = None
        if test_images is not None and y_test is not None and len(y_test):
            proba = self._proba_from_images(test_images)
            self.test_metrics_ = compute_metrics(splits.task, y_test, proba, splits.labels)
        self.split_sizes_ = {
            "train": len(y_train),
            "valid": 0 if y_valid is None else len(y_valid),
            "test": 0 if y_test is None else len(y_test),
        }
        data = splits.data
        self.data_info_ = {
            "file": Path(data.file).name if data.file else None,
            "sha256": data.sha256(),
            "rows": {"read": len(data.images), **self.split_sizes_},
            "dropped": splits.dropped,
            "decode": splits.reports["train"],
            "decode_valid_test": {k: v for k, v in splits.reports.items() if k != "train"},
            "ignored_files": data.ignored_files,
        }
        return test_predictions(splits.task, splits.labels, y_train, y_test, proba)

    # --- refit ---------------------------------------------------------------------------

    def refit(
        self, data: ImageInput, y: Any = None, *, replay: Any = None, target: str | None = None, **settings: Any
    ) -> ImageFineTuner:
        """Continue this fitted model on new labeled images; return the refitted copy (the challenger).

        ``data`` takes any form ``fit`` takes (``y`` for arrays); ``replay`` is old labeled
        images in the same forms, an ``(images, labels)`` pair for arrays. ``settings`` are the
        fields of :class:`~tunesmith.train.continual.RefitSettings`; ``method='lora'`` is for
        text backbones and raises :class:`~tunesmith.estimators.base.NotSupportedError`.
        Training starts from a copy of the current weights with the fit's loop, augmentation
        and BatchNorm handling, for ``max(1, epochs // 2)`` epochs unless ``epochs`` is given.
        ``self`` is left unchanged; the copy's ``refit_info_`` (saved under ``refit`` in
        ``tunesmith.json``) records the plan, rows, WiSE-FT trials, data hashes and times.
        A label the model never saw is a :class:`~tunesmith.errors.DataError`. See docs/refit.md
        and :mod:`tunesmith.estimators.image.refitting`.
        """
        return refit_image(self, data, y, replay=replay, target=target, settings=settings)

    # --- prediction ----------------------------------------------------------------------

    def _proba_from_tensor(self, images: torch.Tensor, *, show_progress: bool = False) -> np.ndarray:
        logits = model_logits(
            self.model_, images, self.config_.eval_batch_size, len(self.labels_), show_progress=show_progress
        )
        return softmax(logits)

    def _proba_from_images(self, images: np.ndarray, *, show_progress: bool = False) -> np.ndarray:
        return self._proba_from_tensor(nhwc_to_tensor(images), show_progress=show_progress)

    def _long(self, n: int) -> bool:
        # A bar for a few batches would only flicker; thousands of images take long enough to watch.
        return bool(self.config_.progress) and n >= PROGRESS_MIN_IMAGES

    def _images_for_prediction(self, X: ImageInput) -> np.ndarray:
        pre = self.model_.backbone.preprocessing
        return load_for_prediction(self._settings(), X, pre.size, pre.resize)

    def predict_proba(self, data: ImageInput) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` in the order of ``classes_``."""
        self._check_fitted()
        images = self._images_for_prediction(data)
        return self._proba_from_images(images, show_progress=self._long(len(images)))

    def predict(self, data: ImageInput) -> np.ndarray:
        """The most probable label per image, in the labels' original type."""
        proba = self.predict_proba(data)
        return np.asarray(self.label_values_, dtype=object)[proba.argmax(axis=1)]

    def embed(self, data: ImageInput, *, max_rows: int | None = None) -> np.ndarray:
        """The trained CNN's pooled features of each image, ``(n, hidden_size)`` float32, in input order.

        What the head sees: the images are read and resized as :meth:`predict` reads them and
        run through this model's own backbone in eval mode (its fine-tuned weights and
        BatchNorm statistics). Drift monitoring compares these between reference and current
        data. ``max_rows`` embeds only the first ``max_rows`` images (``None``: every image).
        """
        self._check_fitted()
        limit = row_limit(max_rows)
        images = self._images_for_prediction(data)[:limit]
        features = model_features(
            self.model_, nhwc_to_tensor(images), self.config_.eval_batch_size, show_progress=self._long(len(images))
        )
        return features.astype(np.float32, copy=False)

    def evaluate(self, data: ImageInput, y: Any = None, *, target: str | None = None) -> dict[str, Any]:
        """Test metrics (accuracy, F1, AUC, log loss, per class, confusion matrix) on labeled images.

        ``target`` names the label column of a table when it differs from training's.
        """
        self._check_fitted()
        pre = self.model_.backbone.preprocessing
        loaded = load_images(
            self._settings(), data, y, pre.size, pre.resize, need_labels=True, progress=False, target=target
        )
        assert loaded.labels is not None
        index_of = {name: i for i, name in enumerate(self.labels_)}
        names = [label_string(v) for v in loaded.labels]
        unknown = [n for n in names if n not in index_of]
        if unknown:
            raise DataError(f"label {unknown[0]!r} is not one this model predicts", hint=", ".join(self.labels_))
        y_true = np.array([index_of[n] for n in names], dtype=np.int64)
        proba = self._proba_from_images(loaded.images, show_progress=self._long(len(loaded.images)))
        metrics = compute_metrics(self.task_, y_true, proba, self.labels_)
        if loaded.report is not None:
            # With on_error=skip, unreadable images are left out of the score: say how many.
            metrics["dropped"] = {
                "dropped_total": loaded.report.n_total - loaded.report.n_kept,
                "skipped": [list(x) for x in loaded.report.skipped[:50]],
            }
        return metrics

    def score(self, data: ImageInput, y: Any = None, *, target: str | None = None) -> float:
        """Accuracy on labeled images (higher is better, as scikit-learn's ``score``)."""
        return float(self.evaluate(data, y, target=target)["accuracy"])

    # --- artifacts -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model folder: ``model.safetensors`` (every weight and BatchNorm statistic),
        ``tunesmith.json`` (labels, preprocessing, architecture, metrics) and ``card.md``."""
        self._check_fitted()
        final = write_image_folder(self, path, overwrite=overwrite)
        self.model_path_ = final
        return final

    @classmethod
    def load(cls, path: str | os.PathLike[str] | SafeFolder) -> ImageFineTuner:
        """Load a folder written by :meth:`save` (format version 1 or 2).

        The folder is opened through :func:`tunesmith.runs.trust.open_model` (no pickles, code,
        links or files outside it) and every field of ``tunesmith.json`` is checked
        (:func:`~tunesmith.estimators.image.image_model_info`); the network's shapes are
        checked against the weights before any is read. Any refusal is an
        :class:`~tunesmith.errors.ArtifactError` naming the file and field.
        """
        folder, meta = open_model(path)
        return cls._from_opened(folder, meta)

    @classmethod
    def _from_opened(cls, folder: SafeFolder, meta: dict[str, Any] | None) -> ImageFineTuner:
        opened = open_image_folder(folder, meta)
        cfg, info, meta = opened.config, opened.info, opened.meta
        defaults = ImageConfig.model_validate({})
        est = cls(**{k: getattr(cfg, k) for k in ImageConfig.model_fields if getattr(cfg, k) != getattr(defaults, k)})
        est.model_ = opened.model
        est.backbone_ = opened.model.backbone
        est.config_ = cfg
        est.labels_ = list(info["labels"])
        est.label_values_ = list(info["label_values"])
        est.classes_ = np.asarray(est.label_values_, dtype=object)
        est.task_ = info["task"]
        # Reports only: shown, never computed on; a value of the wrong shape is dropped.
        est.test_metrics_ = dict_or(meta.get("metrics"), None) or None
        est.baseline_metrics_ = dict_or(meta.get("baselines"), {})
        est.training_info_ = dict_or(meta.get("training"), {})
        est.data_info_ = dict_or(meta.get("data"), {})
        history = meta.get("history")
        est.history_ = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
        best = est.training_info_.get("best_epoch")
        est.best_epoch_ = int(best) if isinstance(best, int) and not isinstance(best, bool) else None
        refit = meta.get("refit")
        if isinstance(refit, dict):
            est.refit_info_ = refit
        est.model_path_ = Path(folder.root)
        return est
