"""Fine-tune a pre-trained image CNN on labeled images: :class:`ImageFineTuner`.

The same estimator contract as the text :class:`~tunesmith.FineTuner` (constructor stores
settings, ``fit`` returns ``self``, learned state ends in ``_``), the same training loop,
callbacks, freezing, gradual unfreezing and layer-wise learning rates. What is particular
to images lives here: decoding and resizing once into a uint8 cache, seeded augmentation on
the fly, and deliberate BatchNorm handling (see ``batchnorm``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from tunesmith.adapt import GradualUnfreezer, apply_freezing, count_parameters, param_groups, set_trainable
from tunesmith.backbones import create_image_backbone
from tunesmith.backbones.image import ImageBackbone, ImagePreprocessing, build_architecture, rebuild
from tunesmith.config import SettingsEstimator, validate_settings
from tunesmith.data.image_augment import ImageAugment, augment_batch, mix_batch
from tunesmith.data.images import (
    DecodeReport,
    decode_images,
    images_from_array,
    is_image_file,
    list_images,
    read_image_folder,
    resolve_image_paths,
)
from tunesmith.data.schema import label_string, sorted_labels
from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError
from tunesmith.evaluate.metrics import compute_metrics, metric_direction
from tunesmith.model import Head
from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json, json_safe, save_tensors
from tunesmith.train.callbacks import Callback, EarlyStopping, EpochHook, ProgressBar, TrainState, snapshot
from tunesmith.train.loop import LoopSettings, train, training_summary
from tunesmith.train.losses import make_loss
from tunesmith.train.optim import make_optimizer, make_scheduler

IMAGE_FORMAT_VERSION = 1
ImageInput = Any  # a folder, a table (file or DataFrame) with a path column, image paths, or a numpy array


class ImageConfig(BaseModel):
    """Every setting of an image fine-tuning run, with its default. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backbone: str = Field("efficientnet-lite0", description="Registered image backbone or a local folder.")
    pretrained: bool = Field(
        True, description="False: same architecture from random weights (a from-scratch baseline)."
    )
    image_size: int | None = Field(None, ge=8, le=1024, description="Input side in pixels; None: the backbone's.")
    resize: Literal["crop", "squash"] = Field("crop", description="crop: shorter side to size, centre crop.")
    target: str = Field("label", description="Label column of a table.")
    path_column: str = Field("path", description="Image-path column of a table.")
    root: str | None = Field(None, description="Folder that table paths are relative to; paths may not leave it.")
    on_error: Literal["raise", "skip"] = Field("raise", description="Unreadable image: stop, or skip and count.")
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    head_lr: float | None = Field(None, gt=0)
    layer_lr_decay: float = Field(1.0, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    strategy: Literal["full", "head_only"] = "full"
    freeze_layers: int = Field(0, ge=0, description="Freeze the stem and the first N stages.")
    gradual_unfreeze: bool = False
    batchnorm: Literal["recalibrate", "train", "frozen"] = Field(
        "recalibrate",
        description="recalibrate: train, then re-estimate BatchNorm statistics on the training images "
        "(kept only if validation does not get worse); train: ordinary running averages; "
        "frozen: keep the pre-trained statistics.",
    )
    dropout: float = Field(0.2, ge=0, lt=1)
    loss: Literal["auto", "cross_entropy", "focal"] = "auto"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: ImageAugment = Field(default_factory=lambda: ImageAugment.model_validate({}))
    valid_size: float = Field(0.1, ge=0, lt=1)
    test_size: float = Field(0.1, ge=0, lt=1)
    monitor: str = Field("auto", description="Validation metric for early stopping; auto: accuracy.")
    patience: int = Field(3, ge=1)
    early_stopping: bool = True
    restore_best: bool = True
    baselines: bool = Field(True, description="Score majority and frozen-feature baselines on the test split.")
    seed: int = 0
    num_threads: int | None = Field(None, ge=1)
    progress: bool = True

    @field_validator("augment", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            return ImageAugment.preset(value)
        return value


def make_image_config(params: dict[str, Any]) -> ImageConfig:
    """Validate ``params`` into an :class:`ImageConfig`, raising :class:`ConfigError` on the first problem."""
    return validate_settings(ImageConfig, params)


class ImageModel(nn.Module):
    """Backbone + head; ``forward(pixels)`` returns logits. Keeps chosen BatchNorm layers in eval mode."""

    def __init__(self, backbone: ImageBackbone, n_outputs: int, dropout: float, *, freeze_all_bn: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = Head(backbone.hidden_size, n_outputs, dropout)
        self.freeze_all_bn = freeze_all_bn

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixels))

    def train(self, mode: bool = True) -> ImageModel:
        super().train(mode)
        if mode:
            # A BatchNorm layer whose scale and shift are frozen keeps its statistics frozen
            # too; otherwise a "frozen" layer would still drift with every batch.
            for bn in self.backbone.batchnorm_layers():
                affine = [p for p in (bn.weight, bn.bias) if p is not None]
                if self.freeze_all_bn or (affine and not any(p.requires_grad for p in affine)):
                    bn.eval()
        return self


def recalibrate_batchnorm(
    model: ImageModel,
    layers: Sequence[nn.modules.batchnorm._BatchNorm],
    images: torch.Tensor,
    pre: ImagePreprocessing,
    batch_size: int,
) -> None:
    """Replace the running statistics of ``layers`` by their averages over ``images`` (uint8 NCHW).

    Each batch counts equally (PyTorch's cumulative average), so keep ``batch_size`` large.
    """
    was_training = model.training
    momenta = {id(bn): bn.momentum for bn in layers}
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over every batch of the pass
        bn.train()
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float().div_(255.0)
            model.backbone(pre.normalize(x))
    for bn in layers:
        bn.momentum = momenta[id(bn)]
    model.train(was_training)


def _trained_batchnorm(model: ImageModel) -> list[nn.modules.batchnorm._BatchNorm]:
    return [bn for bn in model.backbone.batchnorm_layers() if bn.weight is not None and bn.weight.requires_grad]


class _RecalibrateBeforeValidation(Callback):
    """Fresh BatchNorm statistics before each validation, from a fixed sample of training images.

    Running averages lag the weights (EfficientNet keeps 99% of the old value per step), so
    a network whose features moved far from ImageNet's, or one trained from scratch, scores
    near chance in eval mode although it has learned: early stopping would then keep the
    wrong epoch. 1,024 images give statistics close to the full pass at a fraction of its cost.
    """

    order = 10  # before early stopping reads the metrics

    def __init__(self, model: ImageModel, images: torch.Tensor, pre: ImagePreprocessing, batch: int, seed: int):
        self.model = model
        gen = torch.Generator().manual_seed(seed)
        take = torch.randperm(len(images), generator=gen)[: min(len(images), 1024)]
        self.images = images[take]
        self.pre = pre
        self.batch = batch

    def on_validation_start(self, state: TrainState) -> None:
        layers = _trained_batchnorm(self.model)
        if layers:
            recalibrate_batchnorm(self.model, layers, self.images, self.pre, self.batch)


class _Indices(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, targets: np.ndarray, augment: bool) -> None:
        self.targets = targets
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, "target": int(self.targets[i]), "augment": self.augment}


class _Collate:
    """Gathers uint8 images by index, augments training batches (seeded), normalises."""

    def __init__(
        self,
        train_images: torch.Tensor,
        valid_images: torch.Tensor | None,
        pre: ImagePreprocessing,
        aug: ImageAugment,
        n_classes: int,
        seed: int,
    ) -> None:
        self.train_images = train_images
        self.valid_images = valid_images
        self.pre = pre
        self.aug = aug
        self.n_classes = n_classes
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        index = torch.tensor([b["index"] for b in batch], dtype=torch.long)
        target = torch.tensor([b["target"] for b in batch], dtype=torch.long)
        training = bool(batch[0]["augment"])
        source = self.train_images if training else self.valid_images
        assert source is not None
        x = source[index].float().div_(255.0)
        out_target: torch.Tensor = target
        if training and self.aug.enabled:
            x = augment_batch(x, self.aug, self.generator)
            if self.aug.needs_soft_targets:
                x, out_target = mix_batch(x, target, self.n_classes, self.aug, self.generator)
        return {"pixels": self.pre.normalize(x), "target": out_target, "index": index}


def _nhwc_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


class _Loaded:
    """Images decoded at the model's size, with labels and where each came from."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        rows: np.ndarray,
        report: DecodeReport | None,
        ignored_files: int = 0,
    ) -> None:
        self.images = images
        self.labels = labels
        self.rows = rows
        self.report = report
        self.ignored_files = ignored_files


class ImageFineTuner(SettingsEstimator):
    """Fine-tune a pre-trained image backbone on labeled images.

    Parameters are the fields of :class:`ImageConfig` (``backbone``, ``epochs``, ``lr``,
    ``strategy``, ``batchnorm``, ``augment``...). ``fit`` takes a folder with one
    sub-folder per class, a table (file or DataFrame) with an image-path column and a
    label column, or a numpy array of images with ``y``.

    Examples
    --------
    >>> ft = ImageFineTuner(backbone="efficientnet-lite0", image_size=64, epochs=5)  # doctest: +SKIP
    >>> ft.fit("photos/")  # doctest: +SKIP
    >>> ft.predict(["photos/cat/1.jpg"])  # doctest: +SKIP
    """

    model_path_: Path | None = None  # where the model was saved or loaded from

    settings_model = ImageConfig

    # --- scikit-learn estimator protocol (get_params, set_params, repr: SettingsEstimator) ---

    @property
    def config(self) -> ImageConfig:
        """The validated settings."""
        return make_image_config(self._params)

    # --- inputs --------------------------------------------------------------------------

    def _load(
        self,
        X: ImageInput,
        y: Any,
        size: int,
        resize: str,
        *,
        need_labels: bool,
        progress: bool,
        target: str | None = None,
        root: Path | None = None,
        on_error: str | None = None,
    ) -> _Loaded:
        cfg = getattr(self, "config_", None) or self.config
        label_column = target or cfg.target
        if isinstance(X, np.ndarray) or (isinstance(X, list) and X and isinstance(X[0], np.ndarray)):
            images = images_from_array(np.asarray(X), size, resize="squash")
            labels = None if y is None else np.asarray(y)
            if labels is not None and len(labels) != len(images):
                raise DataError(f"y has {len(labels)} labels for {len(images)} images", hint="Give one label per image")
            if need_labels and labels is None:
                raise DataError("images given as an array need labels: pass y", hint="fit(X, y)")
            return _Loaded(images, labels, np.arange(1, len(images) + 1), None)
        file: str | None = None
        base: Path
        if isinstance(X, (str, os.PathLike)) and Path(X).is_dir():
            frame = read_image_folder(X, label_column=label_column, path_column=cfg.path_column)
            paths = frame[cfg.path_column].astype(str).tolist()
            file = str(X)
        elif isinstance(X, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in X):
            base = root or (Path(cfg.root).resolve() if cfg.root else Path.cwd().resolve())
            frame = pd.DataFrame({cfg.path_column: [str(p) for p in X]})
            paths = resolve_image_paths(frame, cfg.path_column, base)
        else:
            if isinstance(X, pd.DataFrame):
                frame = X
                base = Path(cfg.root).resolve() if cfg.root else Path.cwd().resolve()
            else:
                from tunesmith.data.io import read_table

                file = str(X)
                frame = read_table(X)
                base = Path(cfg.root).resolve() if cfg.root else Path(X).resolve().parent
            if cfg.path_column not in frame.columns:
                raise DataError(
                    f"no image-path column {cfg.path_column!r}",
                    file=file,
                    column=cfg.path_column,
                    hint=f"Columns: {', '.join(map(str, frame.columns))}; set path_column",
                )
            paths = resolve_image_paths(frame, cfg.path_column, base, file=file)
        labels_all: np.ndarray | None = None
        if y is not None:
            labels_all = np.asarray(y)
            if len(labels_all) != len(paths):
                raise DataError(
                    f"y has {len(labels_all)} labels for {len(paths)} images",
                    file=file,
                    hint="Give one label per image",
                )
        elif label_column in frame.columns:
            labels_all = frame[label_column].to_numpy()
        if need_labels and labels_all is None:
            raise DataError(f"no label column {label_column!r}", file=file, column=label_column, hint="Set target")
        rows = np.arange(1, len(paths) + 1)
        images, kept, report = decode_images(
            paths,
            size,
            on_error=cast(Literal["raise", "skip"], on_error or cfg.on_error),
            resize=cast(Literal["crop", "squash"], resize),
            progress=progress,
            rows=rows.tolist(),
            file=file,
        )
        labels = labels_all[kept] if labels_all is not None else None
        if labels is not None and need_labels:
            missing = pd.isna(pd.Series(labels))
            if missing.any():
                first = int(rows[kept][np.argmax(missing.to_numpy())])
                raise DataError("missing label", file=file, row=first, column=label_column, hint="Label every image")
        return _Loaded(images, labels, rows[kept], report, int(frame.attrs.get("ignored_files", 0)))

    # --- fit -----------------------------------------------------------------------------

    def fit(
        self,
        X: ImageInput,
        y: Any = None,
        *,
        valid: tuple[ImageInput, Any] | ImageInput | None = None,
        test: tuple[ImageInput, Any] | ImageInput | None = None,
        callbacks: Sequence[Callback] | None = None,
    ) -> ImageFineTuner:
        """Fine-tune on ``X`` (and ``y`` for arrays); returns ``self``.

        Without ``valid``/``test``, stratified validation and test splits of ``valid_size``
        and ``test_size`` are carved out (seeded). ``valid``/``test`` take the same forms as
        ``X``, as ``(X, y)`` pairs for arrays.
        """
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from tunesmith.estimator import default_threads

        cfg = self.config
        started = time.perf_counter()
        self.model_path_ = None  # a refit model is no longer the one in any earlier folder
        torch.set_num_threads(cfg.num_threads or default_threads())
        set_seed(cfg.seed)
        backbone = create_image_backbone(cfg.backbone, image_size=cfg.image_size)
        if not cfg.pretrained:
            backbone = rebuild(
                backbone.architecture,
                backbone.preprocessing.to_dict(),
                name=backbone.name,
                fingerprint="random-init",
                hidden_size=backbone.hidden_size,
            )
            self._reset_random(backbone, cfg.seed)
        backbone.preprocessing.resize = cfg.resize
        pre = backbone.preprocessing
        size = pre.size

        def pair(v: Any) -> tuple[Any, Any]:
            return v if isinstance(v, tuple) and len(v) == 2 else (v, None)

        data = self._load(X, y, size, cfg.resize, need_labels=True, progress=cfg.progress)
        assert data.labels is not None
        label_names = [label_string(v) for v in data.labels]
        labels = list(sorted_labels(label_names))
        if len(labels) < 2:
            raise DataError(f"need at least two classes, found {len(labels)}", column=cfg.target)
        index_of = {name: i for i, name in enumerate(labels)}
        y_all = np.array([index_of[n] for n in label_names], dtype=np.int64)
        self.label_values_ = self._label_values(labels, data.labels)
        self.classes_ = np.asarray(self.label_values_, dtype=object)

        def encode(loaded: _Loaded, what: str) -> np.ndarray:
            assert loaded.labels is not None
            out = []
            for i, v in enumerate(loaded.labels):
                name = label_string(v)
                if name not in index_of:
                    raise DataError(
                        f"{what} label {name!r} never occurs in the training data",
                        row=int(loaded.rows[i]),
                        column=cfg.target,
                        hint=f"Known labels: {', '.join(labels)}",
                    )
                out.append(index_of[name])
            return np.asarray(out, dtype=np.int64)

        idx_all = np.arange(len(y_all))
        parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        rest = idx_all
        from sklearn.model_selection import train_test_split

        def carve(indices: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
            n = round(share * len(y_all))
            if n == 0:
                return indices, indices[:0]
            counts = np.bincount(y_all[indices])
            strat = y_all[indices] if counts[counts > 0].min() >= 2 else None
            keep, taken = train_test_split(indices, test_size=n, stratify=strat, random_state=seed)
            return np.sort(keep), np.sort(taken)

        reports: dict[str, Any] = {"train": data.report.to_dict() if data.report is not None else None}
        if test is not None:
            t = self._load(*pair(test), size, cfg.resize, need_labels=True, progress=False)
            parts["test"] = (t.images, encode(t, "test"))
            reports["test"] = t.report.to_dict() if t.report is not None else None
        elif cfg.test_size:
            rest, taken = carve(rest, cfg.test_size, cfg.seed)
            parts["test"] = (data.images[taken], y_all[taken])
        if valid is not None:
            v = self._load(*pair(valid), size, cfg.resize, need_labels=True, progress=False)
            parts["valid"] = (v.images, encode(v, "valid"))
            reports["valid"] = v.report.to_dict() if v.report is not None else None
        elif cfg.valid_size:
            rest, taken = carve(rest, cfg.valid_size, cfg.seed + 1)
            parts["valid"] = (data.images[taken], y_all[taken])
        train_images, y_train = data.images[rest], y_all[rest]
        valid_images, y_valid = parts.get("valid", (None, None))
        test_images, y_test = parts.get("test", (None, None))
        task = "binary" if len(labels) == 2 else "multiclass"

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        n_classes = len(labels)

        # --- baselines from the untouched backbone (before any weight changes) ---------
        baselines: dict[str, dict[str, Any]] = {}
        if cfg.baselines and y_test is not None and len(y_test):
            from tunesmith.evaluate.baselines import embedding_baseline, majority_baseline

            baselines["majority"] = majority_baseline(y_train, y_test, task, n_classes, labels=labels)
            if cfg.pretrained and test_images is not None:
                f_train = self._features(backbone, train_images, cfg.eval_batch_size)
                f_test = self._features(backbone, test_images, cfg.eval_batch_size)
                baselines["frozen"] = embedding_baseline(
                    f_train, y_train, f_test, y_test, task, n_classes, seed=cfg.seed, labels=labels
                )

        set_seed(cfg.seed)
        model = ImageModel(backbone, n_classes, cfg.dropout, freeze_all_bn=cfg.batchnorm == "frozen")
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
        groups = param_groups(
            backbone,  # type: ignore[arg-type]
            model.head,
            lr=cfg.lr,
            head_lr=cfg.head_lr,
            weight_decay=cfg.weight_decay,
            layer_lr_decay=cfg.layer_lr_decay,
        )
        optimizer = make_optimizer(cfg.optimizer, groups, lr=cfg.lr, momentum=cfg.momentum)
        train_t = _nhwc_to_tensor(train_images)
        valid_t = _nhwc_to_tensor(valid_images) if valid_images is not None else None
        collate = _Collate(train_t, valid_t, pre, cfg.augment, n_classes, cfg.seed)
        train_set = _Indices(y_train, augment=True)
        valid_set = _Indices(y_valid, augment=False) if y_valid is not None and len(y_valid) else None

        monitor = "accuracy" if cfg.monitor == "auto" else cfg.monitor
        mode = metric_direction(monitor, task)

        def valid_metrics(targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
            return compute_metrics(task, targets, _softmax(outputs), labels)

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
            loop_callbacks.append(_RecalibrateBeforeValidation(model, train_t, pre, cfg.eval_batch_size, cfg.seed))
        if cfg.progress:
            loop_callbacks.append(ProgressBar(f"fine-tuning {cfg.backbone} ({cfg.strategy})"))
        loop_callbacks.extend(callbacks or ())
        trainable, total = count_parameters(model)
        settings = LoopSettings(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size,
            grad_clip=cfg.grad_clip,
            seed=cfg.seed,
            length_bucketing=False,
        )
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
        )
        loop_seconds = time.perf_counter() - loop_started
        model = accelerator.unwrap_model(model)
        # Layers still holding their starting statistics were frozen up to the restored epoch
        # (gradual unfreezing can open them later, then restore-best puts them back): they keep them.
        trained_bn = [
            bn
            for bn in (_trained_batchnorm(model) if cfg.batchnorm == "recalibrate" else [])
            if id(bn) not in initial_bn or not torch.equal(bn.running_mean, initial_bn[id(bn)])  # type: ignore[arg-type]
        ]
        set_trainable(model, False)
        model.eval()
        self.model_ = model
        self.backbone_ = backbone
        self.config_ = cfg
        self.labels_ = labels
        self.task_ = task

        bn_info: dict[str, Any] = {"mode": cfg.batchnorm, "recalibrated_layers": 0}
        if trained_bn:
            bn_info.update(self._recalibrate(trained_bn, train_t, pre, cfg, valid_t, y_valid, task, monitor, mode))

        train_seconds = sum(float(h.get("epoch_seconds") or 0.0) for h in state.history) or loop_seconds
        self.history_ = state.history
        self.best_epoch_ = state.best_epoch
        self.stop_reason_ = state.stop_reason
        self.baseline_metrics_ = baselines
        self.test_metrics_: dict[str, Any] | None = None
        if test_images is not None and y_test is not None and len(y_test):
            proba = self._proba_from_images(test_images)
            self.test_metrics_ = compute_metrics(task, y_test, proba, labels)
        self.split_sizes_ = {
            "train": len(y_train),
            "valid": 0 if y_valid is None else len(y_valid),
            "test": 0 if y_test is None else len(y_test),
        }
        self.data_info_ = {
            "rows": {"read": len(data.images), **self.split_sizes_},
            "decode": reports["train"],
            "decode_valid_test": {k: v for k, v in reports.items() if k != "train"},
            "ignored_files": data.ignored_files,
        }
        self.training_info_ = {
            **training_summary(
                state, monitor=monitor, train_seconds=train_seconds, loop_seconds=loop_seconds, started=started
            ),
            "parameters": {"trainable": trainable, "total": total},
            "batchnorm": bn_info,
        }
        return self

    @staticmethod
    def _reset_random(backbone: ImageBackbone, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in backbone.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.reset_parameters()

    @staticmethod
    def _label_values(labels: Sequence[str], original: np.ndarray) -> list[Any]:
        from tunesmith.estimator import FineTuner

        return FineTuner._label_values(labels, pd.Series(original))

    def _features(self, backbone: ImageBackbone, images: np.ndarray, batch_size: int) -> np.ndarray:
        backbone.eval()
        device = next(backbone.parameters()).device
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = _nhwc_to_tensor(images[start : start + batch_size]).to(device).float().div_(255.0)
                out.append(backbone(backbone.preprocessing.normalize(x)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, backbone.hidden_size), dtype=np.float32)

    def _recalibrate(
        self,
        layers: list[nn.modules.batchnorm._BatchNorm],
        train_t: torch.Tensor,
        pre: ImagePreprocessing,
        cfg: ImageConfig,
        valid_t: torch.Tensor | None,
        y_valid: np.ndarray | None,
        task: str,
        monitor: str,
        mode: str,
    ) -> dict[str, Any]:
        """Re-estimate BatchNorm statistics of the trained layers on un-augmented training images.

        Running averages gathered while the weights were still moving lag behind the final
        weights; a pass with the final weights gives the statistics the model will see.
        The new statistics are kept only when validation does not get worse.
        """
        model = self.model_
        before = {id(bn): (bn.running_mean.clone(), bn.running_var.clone()) for bn in layers}  # type: ignore[union-attr]

        # A monitor compute_metrics has no value for (the loss; AUC with one class present)
        # falls back to accuracy.
        def score(name: str) -> float | None:
            assert valid_t is not None and y_valid is not None
            value = compute_metrics(task, y_valid, self._proba_from_tensor(valid_t), self.labels_).get(name)
            return float(value) if isinstance(value, (int, float)) else None

        score_before = None
        if valid_t is not None and y_valid is not None and len(y_valid):
            score_before = score(monitor)
            if score_before is None:
                monitor, mode = "accuracy", "max"
                score_before = score(monitor)
        recalibrate_batchnorm(model, layers, train_t, pre, cfg.eval_batch_size)
        info: dict[str, Any] = {"recalibrated_layers": len(layers), "kept": True}
        if score_before is not None:
            assert valid_t is not None and y_valid is not None
            score_after = score(monitor)
            assert score_after is not None and score_before is not None
            worse = score_after < score_before if mode == "max" else score_after > score_before
            info.update({f"valid_{monitor}_before": score_before, f"valid_{monitor}_after": score_after})
            if worse:
                for bn in layers:
                    mean, var = before[id(bn)]
                    bn.running_mean.copy_(mean)  # type: ignore[union-attr]
                    bn.running_var.copy_(var)  # type: ignore[union-attr]
                info["kept"] = False
        return info

    # --- prediction ----------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if getattr(self, "model_", None) is None:
            raise NotFittedError("this ImageFineTuner is not fitted yet; call fit() or tunesmith.load()")

    def _proba_from_tensor(self, images: torch.Tensor) -> np.ndarray:
        return _softmax(self._logits_from_tensor(images))

    def _logits_from_tensor(self, images: torch.Tensor) -> np.ndarray:
        model = self.model_
        model.eval()
        pre = model.backbone.preprocessing
        batch = self.config_.eval_batch_size
        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                x = images[start : start + batch].to(device).float().div_(255.0)
                out.append(model(pre.normalize(x)).float().cpu().numpy())
        if not out:
            return np.zeros((0, len(self.labels_)), dtype=np.float32)
        return np.concatenate(out)

    def _proba_from_images(self, images: np.ndarray) -> np.ndarray:
        return self._proba_from_tensor(_nhwc_to_tensor(images))

    def _images_for_prediction(self, X: ImageInput) -> np.ndarray:
        pre = self.model_.backbone.preprocessing
        root = None
        if isinstance(X, (str, os.PathLike)) and Path(X).is_file() and is_image_file(X):
            X = [Path(X).resolve()]
            root = X[0].parent
        elif isinstance(X, (str, os.PathLike)) and Path(X).is_dir():
            # A folder to predict: every image under it, in sorted order (class sub-folders optional).
            root = Path(X).resolve()
            X = list_images(root)
        # Predictions must line up with the inputs: an unreadable image is an error here, whatever
        # on_error says (that setting is for training data).
        loaded = self._load(
            X, None, pre.size, pre.resize, need_labels=False, progress=False, root=root, on_error="raise"
        )
        return loaded.images

    def predict_proba(self, X: ImageInput) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` in the order of ``classes_``."""
        self._check_fitted()
        return self._proba_from_images(self._images_for_prediction(X))

    def predict(self, X: ImageInput) -> np.ndarray:
        """The most probable label per image, in the labels' original type."""
        proba = self.predict_proba(X)
        return np.asarray(self.label_values_, dtype=object)[proba.argmax(axis=1)]

    def evaluate(self, X: ImageInput, y: Any = None, *, target: str | None = None) -> dict[str, Any]:
        """Test metrics (accuracy, F1, AUC, log loss, per class, confusion matrix) on labeled images.

        ``target`` names the label column of a table when it differs from training's.
        """
        self._check_fitted()
        pre = self.model_.backbone.preprocessing
        loaded = self._load(X, y, pre.size, pre.resize, need_labels=True, progress=False, target=target)
        assert loaded.labels is not None
        index_of = {name: i for i, name in enumerate(self.labels_)}
        names = [label_string(v) for v in loaded.labels]
        unknown = [n for n in names if n not in index_of]
        if unknown:
            raise DataError(f"label {unknown[0]!r} is not one this model predicts", hint=", ".join(self.labels_))
        y_true = np.array([index_of[n] for n in names], dtype=np.int64)
        metrics = compute_metrics(self.task_, y_true, self._proba_from_images(loaded.images), self.labels_)
        if loaded.report is not None:
            # With on_error=skip, unreadable images are left out of the score: say how many.
            metrics["dropped"] = {
                "dropped_total": loaded.report.n_total - loaded.report.n_kept,
                "skipped": [list(x) for x in loaded.report.skipped[:50]],
            }
        return metrics

    def score(self, X: ImageInput, y: Any = None) -> float:
        """Accuracy on labeled images (scikit-learn's ``score``)."""
        return float(self.evaluate(X, y)["accuracy"])

    # --- artifacts -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model folder: ``model.safetensors`` (every weight and BatchNorm statistic),
        ``tunesmith.json`` (labels, preprocessing, architecture, metrics) and ``card.md``."""
        self._check_fitted()
        from tunesmith.estimator import _version
        from tunesmith.runs.record import environment_info
        from tunesmith.runs.report import render_report

        cfg = self.config_
        backbone = self.model_.backbone
        meta = {
            "format_version": IMAGE_FORMAT_VERSION,
            "kind": "image",
            "tunesmith_version": _version(),
            "task": self.task_,
            "labels": list(self.labels_),
            "label_values": list(self.label_values_),
            "preprocessing": backbone.preprocessing.to_dict(),
            "n_outputs": len(self.labels_),
            "backbone": {
                "name": backbone.name,
                "architecture": backbone.architecture,
                "fingerprint": backbone.fingerprint,
                "hidden_size": backbone.hidden_size,
                "weights": "full",
            },
            "config": cfg.model_dump(mode="json"),
            "metrics": self.test_metrics_,
            "baselines": self.baseline_metrics_,
            "training": self.training_info_,
            "data": self.data_info_,
            "history": self.history_,
            "environment": environment_info(seed=cfg.seed),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        info = {
            "title": f"Image classifier fine-tuned from {cfg.backbone}",
            "task": self.task_,
            "backbone": cfg.backbone,
            "strategy": cfg.strategy,
            "labels": list(self.labels_),
            "metrics": self.test_metrics_,
            "baselines": {k: {**v, "model": _BASELINE_NAMES.get(k, k)} for k, v in self.baseline_metrics_.items()},
            "config": cfg.model_dump(mode="json"),
            "data": {"rows": self.data_info_.get("rows")},
            "training": self.training_info_,
            "history": self.history_,
        }
        final = Path(path)
        with AtomicDirectory(final, overwrite=overwrite) as tmp:
            tmp = Path(tmp)
            save_tensors(tmp / "model.safetensors", self.model_.state_dict(), {"format": "tunesmith", "kind": "image"})
            atomic_write_json(tmp / "tunesmith.json", json_safe(meta))
            (tmp / "card.md").write_text(render_report(info))
        self.model_path_ = final
        return final

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ImageFineTuner:
        """Load a folder written by :meth:`save`.

        The folder is opened through :func:`tunesmith.runs.trust.open_model` (no pickles, code,
        links or files outside it) and every field of ``tunesmith.json`` is checked
        (:func:`image_model_info`). The network is first built on PyTorch's ``meta`` device and
        its tensor shapes compared with the safetensors header, so a folder cannot make
        tunesmith allocate more than its weights hold; any refusal is an :class:`ArtifactError`
        naming the file and field.
        """
        from tunesmith.runs.trust import check_state_shapes, malformed, meta_shapes, open_model

        folder, meta = open_model(path)
        info = image_model_info(meta, file=folder.root / "tunesmith.json")
        weights = folder.root / "model.safetensors"
        cfg: ImageConfig = info["config"]
        arch, pre = info["architecture"], info["preprocessing"]

        def build() -> ImageModel:
            backbone = rebuild(
                arch, pre.to_dict(), name=info["name"], fingerprint=info["fingerprint"], hidden_size=info["hidden_size"]
            )
            return ImageModel(backbone, info["n_outputs"], cfg.dropout)

        with malformed(folder.root / "tunesmith.json", "the backbone architecture"):
            # On the meta device: shapes only, no memory, whatever sizes the metadata declares.
            with torch.device("meta"):
                width = build_architecture(arch).hidden_size
            expected = meta_shapes(build)
        if width != info["hidden_size"]:
            raise ArtifactError(
                f"field 'backbone.hidden_size' is {info['hidden_size']}, but the architecture in "
                f"'backbone.architecture' gives {width}-wide features",
                path=folder.root / "tunesmith.json",
                hint="Only load folders written by tunesmith; ask whoever sent it to re-save it",
            )
        check_state_shapes(expected, folder.header("model.safetensors"), file=weights)
        model = build()
        state = folder.tensors("model.safetensors", expected=expected)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(
                f"weights do not match the architecture: {str(exc).splitlines()[0]}", path=weights
            ) from None
        set_trainable(model, False)
        model.eval()
        defaults = ImageConfig.model_validate({})
        est = cls(**{k: getattr(cfg, k) for k in ImageConfig.model_fields if getattr(cfg, k) != getattr(defaults, k)})
        est.model_ = model
        est.backbone_ = model.backbone
        est.config_ = cfg
        est.labels_ = list(info["labels"])
        est.label_values_ = list(info["label_values"])
        est.classes_ = np.asarray(est.label_values_, dtype=object)
        est.task_ = info["task"]
        # Reports only: shown, never computed on; a value of the wrong shape is dropped.
        est.test_metrics_ = _dict_or(meta.get("metrics"), None)
        est.baseline_metrics_ = _dict_or(meta.get("baselines"), {})
        est.training_info_ = _dict_or(meta.get("training"), {})
        est.data_info_ = _dict_or(meta.get("data"), {})
        history = meta.get("history")
        est.history_ = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
        best = est.training_info_.get("best_epoch")
        est.best_epoch_ = int(best) if isinstance(best, int) and not isinstance(best, bool) else None
        est.model_path_ = Path(path)
        return est


MAX_CLASSES = 100_000
"""Most classes a loaded image model may declare (its head is checked against the weights too)."""


def image_model_info(meta: Any, *, file: str | os.PathLike[str]) -> dict[str, Any]:
    """The fields of an image model's ``tunesmith.json`` that loading and serving use, each checked.

    Returns ``task``, ``labels``, ``label_values``, ``n_outputs``, ``preprocessing``
    (:class:`ImagePreprocessing`), ``architecture`` (a checked description), ``name``,
    ``fingerprint``, ``hidden_size`` and ``config`` (:class:`ImageConfig`). A missing, mistyped
    or out-of-range field is an :class:`ArtifactError` naming ``file`` and the field.
    """
    from tunesmith.backbones.image import architecture_from_meta
    from tunesmith.runs.trust import field

    kind = field(meta, "kind", (str, type(None)), file=file, default=None)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if kind != "image" or version != IMAGE_FORMAT_VERSION or isinstance(version, bool):
        raise ArtifactError(
            f"not an image model of format {IMAGE_FORMAT_VERSION} (kind {kind!r}, format {version!r:.40})",
            path=file,
            hint="Load it with tunesmith.load(), or pass a folder written by ImageFineTuner.save",
        )
    labels = field(meta, "labels", list, file=file)
    n_outputs = field(meta, "n_outputs", int, file=file, low=1, high=MAX_CLASSES)
    if not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        raise ArtifactError("field 'labels' must be a list of distinct strings", path=file)
    if len(labels) != n_outputs:
        raise ArtifactError(f"field 'n_outputs' is {n_outputs} but field 'labels' holds {len(labels)}", path=file)
    task = field(meta, "task", str, file=file, choices=("binary", "multiclass"))
    if task != ("binary" if n_outputs == 2 else "multiclass"):
        raise ArtifactError(f"field 'task' is {task!r}, which does not fit {n_outputs} labels", path=file)
    values = field(meta, "label_values", list, file=file, default=None) or list(labels)
    if len(values) != len(labels) or not all(
        isinstance(v, (str, int, float, bool)) and v == v
        for v in values  # v == v: not NaN
    ):
        raise ArtifactError(
            f"field 'label_values' must hold one string, number or boolean per label ({len(labels)})", path=file
        )
    backbone_fields = {
        "name": field(meta, "backbone.name", str, file=file),
        "fingerprint": field(meta, "backbone.fingerprint", str, file=file),
        "hidden_size": field(meta, "backbone.hidden_size", int, file=file, low=1, high=1 << 20),
    }
    architecture = architecture_from_meta(meta, file=file, name="backbone.architecture")
    preprocessing = ImagePreprocessing.from_meta(meta, file=file)
    settings = field(meta, "config", dict, file=file)
    try:
        config = make_image_config(settings)
    except ConfigError as exc:
        where = f"config.{exc.key}" if exc.key else "config"
        raise ArtifactError(f"field {where!r}: {exc.message}", path=file) from None
    return {
        "task": task,
        "labels": labels,
        "label_values": values,
        "n_outputs": n_outputs,
        "preprocessing": preprocessing,
        "architecture": architecture,
        "config": config,
        **backbone_fields,
    }


def _dict_or(value: Any, default: Any) -> Any:
    return value if isinstance(value, dict) else default


_BASELINE_NAMES = {"majority": "majority class", "frozen": "frozen pre-trained features + logistic regression"}


def _softmax(logits: np.ndarray) -> np.ndarray:
    from tunesmith.export.runtime import softmax

    return softmax(logits).astype(np.float32)
