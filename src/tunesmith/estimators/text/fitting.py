"""The steps of a text fit, in the order :meth:`FineTuner.fit` takes them.

read -> infer the schema and validate (once) -> clean -> split -> build -> baselines ->
train -> evaluate -> record. Each step takes what the ones before it produced; the data is
resolved against its schema once (:func:`~tunesmith.data.validate.resolve_data`) and each
split encoded once (:func:`~tunesmith.data.validate.encode_split`), so no later step goes
back to the schema. The order of the steps that draw random numbers (seeding, backbone,
cleaning, baselines, the head) is part of the contract "same seed, same weights".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.adapt import GradualUnfreezer, add_lora, apply_freezing, count_parameters, param_groups
from tunesmith.backbones import create_backbone
from tunesmith.backbones.text import TextBackbone
from tunesmith.config import FitConfig, make_config
from tunesmith.data.clean import CleanReport
from tunesmith.data.io import file_sha256
from tunesmith.data.quality import clean_before_split, clean_train
from tunesmith.data.schema import restore_label_values
from tunesmith.data.split import split_frame
from tunesmith.data.targets import check_target_classes
from tunesmith.data.validate import EncodedSplit, PreparedData, encode_split, prepare_frame, resolve_data, row_numbers
from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators import resume as resume_run
from tunesmith.estimators.base import FitArguments
from tunesmith.estimators.text.inputs import frame_sha256, read_frame
from tunesmith.evaluate.baselines import embedding_baseline, majority_baseline, tfidf_baseline
from tunesmith.evaluate.metrics import metric_direction
from tunesmith.model import FeatureModel, TextModel
from tunesmith.runs.record import RunRecord
from tunesmith.train.averaging import WeightAverage
from tunesmith.train.batching import Collator, TokenDataset
from tunesmith.train.callbacks import Callback, EarlyStopping, EpochHook, ProgressBar, TrainState
from tunesmith.train.callbacks import snapshot as state_snapshot
from tunesmith.train.checkpoint import Checkpointer
from tunesmith.train.continual import AnchorPenalty, PenalisedLoss, anchor_state
from tunesmith.train.loop import LoopSettings, train, training_summary
from tunesmith.train.losses import class_weights, make_loss
from tunesmith.train.optim import make_optimizer, make_scheduler
from tunesmith.train.precision import accelerate_precision, attention_kernel, autocast_dtype
from tunesmith.train.threads import set_trainable_all

# The FineTuner being fitted, saved or loaded; typed loosely because its module imports this one.
TextEstimator = Any


@dataclass
class Inputs:
    """What ``fit`` was given, read into frames: the data, and the given validation/test sets."""

    frame: pd.DataFrame
    target: str
    file: str | None
    eval_set: tuple[pd.DataFrame, str | None] | None = None
    test_set: tuple[pd.DataFrame, str | None] | None = None


@dataclass
class Splits:
    """Train, validation and test splits, how they were made, and (after :func:`build`) encoded once."""

    cleaned: pd.DataFrame  # every row after the cleaning done before the split
    actions: list[Any]  # what that cleaning did
    frames: dict[str, pd.DataFrame]  # train, valid, test as split (before the training split's cleaning)
    files: dict[str, str | None]  # the file each split came from, for error messages
    info: dict[str, Any]
    dropped: dict[str, dict[str, Any]]
    given: bool  # eval_set was given: only X was split and cleaned
    train: EncodedSplit = field(init=False)
    valid: EncodedSplit = field(init=False)
    test: EncodedSplit = field(init=False)


@dataclass
class Built:
    """The backbone, the accelerator and the token ids of each split, with the target scaling."""

    backbone: TextBackbone
    accelerator: Any
    ids: dict[str, list[list[int]]]
    mean: float = 0.0
    std: float = 1.0
    regression: bool = False
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    # The dtype training autocasts to (None: float32), resolved from mixed_precision once.
    autocast: torch.dtype | None = None
    checkpointer: Checkpointer | None = None  # set once the run folder is known

    def scale(self, v: np.ndarray | None) -> np.ndarray | None:
        """Regression targets standardised for training (a stable loss scale whatever the units)."""
        if v is None or not self.regression:
            return v
        return ((v - self.mean) / self.std).astype(np.float32)


@dataclass
class WarmStart:
    """Where a refit starts: the current model's weights, schema and target scaling.

    ``model_state`` loads into the new model as a whole (same strategy as the current one);
    ``base_state`` and ``head_state`` load into the plain backbone before LoRA wraps it, and
    into the head (LoRA adapters trained on the frozen current model). ``penalty`` is the
    L2-SP weight toward the loaded weights (0: none).
    """

    schema: Any
    label_values: list[Any]
    target_scaling: dict[str, float] | None
    model_state: dict[str, torch.Tensor] | None = None
    base_state: dict[str, torch.Tensor] | None = None
    head_state: dict[str, torch.Tensor] | None = None
    penalty: float = 0.0


def resolved_config(params: dict[str, Any], text_column: str | list[str] | None) -> FitConfig:
    """The settings of this fit: the estimator's own, with ``text_column`` given to ``fit`` on top."""
    params = dict(params)
    if text_column is not None:
        params["text_column"] = text_column
    return make_config(params)


def read(args: FitArguments) -> Inputs:
    """Step 1: the data (and any given validation and test sets) as frames."""
    df, target, file = read_frame(args.data, args.y, args.target)
    if target is None:
        raise ConfigError("no target given", key="target", hint="Pass target='column' (CLI: --target COL)")
    if args.eval_set is None and args.test_set is not None:
        raise ConfigError("test_set needs eval_set too", key="test_set")
    inputs = Inputs(df, target, file)
    if args.eval_set is not None:
        vdf, _, vfile = read_frame(args.eval_set, None, None, role="eval_set")
        inputs.eval_set = (vdf, vfile)
    if args.test_set is not None:
        tdf, _, tfile = read_frame(args.test_set, None, None, role="test_set")
        inputs.test_set = (tdf, tfile)
    return inputs


def resolve(inputs: Inputs, cfg: FitConfig, warm: WarmStart | None = None) -> PreparedData:
    """Step 2: infer the schema once and validate the data against it.

    A refit keeps the current model's schema (its classes, its input columns): the new rows
    are validated against it, never used to infer another one.
    """
    if warm is not None:
        frame, drops = prepare_frame(inputs.frame, warm.schema, file=inputs.file)
        file = str(inputs.file) if inputs.file is not None else None
        return PreparedData(frame, warm.schema, drops, list(warm.label_values), file)
    task = None if cfg.task == "auto" else cfg.task
    # Group and split columns organise the data; fed to the model they would leak the split.
    ignore = [c for c in (cfg.group_column, cfg.split_column) if c]
    data = resolve_data(
        inputs.frame, inputs.target, text_column=cfg.text_column, task=task, ignore=ignore, file=inputs.file
    )
    if data.schema.task != "regression":
        # an id or free-text column picked as the target is refused here, in our words, not sklearn's
        check_target_classes(data.frame[data.schema.target], column=data.schema.target, file=inputs.file)
    return data


def split(data: PreparedData, inputs: Inputs, cfg: FitConfig) -> Splits:
    """Steps 3 and 4: duplicates and conflicts go before the split (so copies cannot straddle
    it), then the split by ``valid_size``/``test_size`` unless ``eval_set`` was given."""
    schema, file = data.schema, data.file
    df, actions = clean_before_split(data.frame, schema, cfg)
    dropped = {"data": data.drops.to_dict()}
    if inputs.eval_set is None:
        parts = split_frame(
            df,
            target=schema.target,
            task=schema.task,
            valid_size=cfg.valid_size,
            test_size=cfg.test_size,
            seed=cfg.seed,
            group_column=cfg.group_column,
            split_column=cfg.split_column,
            file=file,
        )
        frames = {"train": parts.train, "valid": parts.valid, "test": parts.test}
        files = {"train": file, "valid": file, "test": file}
        info: dict[str, Any] = {"strategy": parts.strategy, "notes": list(parts.notes)}
    else:
        vdf, vfile = inputs.eval_set
        frames = {"train": df}
        frames["valid"], vdrops = prepare_frame(vdf, schema, file=vfile)
        dropped["eval_set"] = vdrops.to_dict()
        files = {"train": file, "valid": vfile, "test": None}
        if inputs.test_set is not None:
            tdf, tfile = inputs.test_set
            frames["test"], tdrops = prepare_frame(tdf, schema, file=tfile)
            dropped["test_set"] = tdrops.to_dict()
            files["test"] = tfile
        else:
            frames["test"] = df.iloc[:0]
        info = {"strategy": "given", "notes": []}
    if len(frames["train"]) == 0:
        raise DataError(
            "no rows left to train on after splitting", file=file, hint="Lower valid_size/test_size or give more data"
        )
    return Splits(df, actions, frames, files, info, dropped, given=inputs.eval_set is not None)


def build(
    est: TextEstimator, cfg: FitConfig, data: PreparedData, splits: Splits, warm: WarmStart | None = None
) -> Built:
    """Step 5: the backbone, the cleaning of the training split, the encoded splits and their tokens."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    schema, file, frames = data.schema, data.file, splits.frames
    set_seed(cfg.seed)  # a tiny test backbone is randomly initialised
    backbone = create_backbone(cfg.backbone, pooling=cfg.pooling)
    # Cleaning, balancing and augmentation touch the training split only; what it learns
    # (imputed values, numeric scaling) is applied to validation, test and predictions alike.
    # the thorough label-error search fine-tunes this same kind of model per fold
    train_df, train_actions, preprocessing = clean_train(
        frames["train"], schema, cfg, backbone=backbone, fold_model=type(est)
    )
    est.preprocessing_ = preprocessing
    valid_df, test_df = preprocessing.apply(frames["valid"]), preprocessing.apply(frames["test"])
    # With eval_set, only X is cleaned: the given validation and test sets are not counted.
    kept = len(train_df) + (0 if splits.given else len(valid_df) + len(test_df))
    est.cleaning_ = CleanReport(rows_in=len(data.frame), rows_out=kept, actions=splits.actions + train_actions)
    if len(train_df) == 0:
        raise DataError("cleaning left no rows to train on", file=file, hint=est.cleaning_.summary())

    splits.train = encode_split(train_df, schema, file=file)
    splits.valid = encode_split(valid_df, schema, file=splits.files["valid"])
    splits.test = encode_split(test_df, schema, file=splits.files["test"])
    regression = schema.task == "regression"
    assert splits.train.y is not None  # cleaning left rows, checked above
    if not regression and warm is None and len(np.unique(splits.train.y)) < 2:
        raise DataError(
            "the training split holds only one class",
            file=file,
            column=schema.target,
            hint="Give more rows of the rarer classes or lower valid_size/test_size",
        )
    labels = list(schema.labels or [])
    est.label_values_ = data.label_values
    est.classes_ = restore_label_values(labels, data.label_values) if not regression else None

    # Gradual unfreezing changes which parameters get gradients after DDP has wrapped the
    # model; DDP must then look for unused parameters every step instead of waiting on them.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.gradual_unfreeze else []
    # Resolved before Accelerate is built: it fixes its precision once per process, so a
    # setting this machine cannot run must fail before it does.
    dtype = autocast_dtype(cfg.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=accelerate_precision(cfg.mixed_precision),
        kwargs_handlers=handlers,
    )
    set_seed(cfg.seed)
    # A folder is stored resolved, so a head-only or LoRA model loads from any working directory.
    est._backbone_origin = str(Path(cfg.backbone).resolve()) if Path(cfg.backbone).exists() else cfg.backbone
    ids = {
        name: backbone.tokenize(part.texts, cfg.max_length) if part.texts else []
        for name, part in (("train", splits.train), ("valid", splits.valid), ("test", splits.test))
    }
    built = Built(backbone, accelerator, ids, regression=regression, autocast=dtype)
    # Predictions are mapped back from the standardised scale the model trains on.
    if regression and warm is not None and warm.target_scaling:
        # the head's outputs keep the scale they were trained on
        built.mean, built.std = float(warm.target_scaling["mean"]), float(warm.target_scaling["std"])
        est.target_scaling_ = dict(warm.target_scaling)
    elif regression:
        assert splits.train.y is not None
        built.mean, built.std = float(np.mean(splits.train.y)), float(np.std(splits.train.y)) or 1.0
        est.target_scaling_ = {"mean": built.mean, "std": built.std}
    else:
        est.target_scaling_ = None
    return built


def baselines(
    est: TextEstimator, cfg: FitConfig, schema: Any, splits: Splits, built: Built
) -> dict[str, dict[str, Any]]:
    """Step 6: the baselines, on the same test split, from the untouched pre-trained backbone.

    The backbone was built by this fit and nothing has changed its weights yet (no adapters,
    freezing or training until :func:`train_model`), so its features are the pre-trained
    weights' features: the same for every fit in this process, hence cacheable. ``head_only``
    training reuses them (``built.frozen``).
    """
    out: dict[str, dict[str, Any]] = {}
    ids, frozen, cache = built.ids, built.frozen, cfg.feature_cache
    need_features = cfg.strategy == "head_only"
    scored = cfg.baselines and splits.test.y is not None and built.accelerator.is_main_process
    if not (scored or need_features):
        return out
    frozen["train"] = est._embed(built.backbone, ids["train"], cfg, "embedding train split", cache=cache)
    if scored:
        frozen["test"] = est._embed(built.backbone, ids["test"], cfg, "embedding test split", cache=cache)
        labels = list(schema.labels or [])
        n_classes = len(labels) if not built.regression else None
        y_train, y_test = splits.train.y, splits.test.y
        assert y_train is not None and y_test is not None
        out["majority"] = majority_baseline(y_train, y_test, schema.task, n_classes, labels=labels)
        out["tfidf"] = tfidf_baseline(
            splits.train.texts, y_train, splits.test.texts, y_test, schema.task, n_classes, seed=cfg.seed, labels=labels
        )
        out["frozen"] = embedding_baseline(
            frozen["train"].numpy(),
            y_train,
            frozen["test"].numpy(),
            y_test,
            schema.task,
            n_classes,
            seed=cfg.seed,
            labels=labels,
        )
    if need_features and ids["valid"]:
        frozen["valid"] = est._embed(built.backbone, ids["valid"], cfg, "embedding valid split", cache=cache)
    if need_features and ids["test"] and "test" not in frozen:
        # head_only never changes the backbone, so the test split is scored from the same
        # frozen features (and a later fit on the same data embeds nothing).
        frozen["test"] = est._embed(built.backbone, ids["test"], cfg, "embedding test split", cache=cache)
    return out


class _FeatureDataset(torch.utils.data.Dataset[dict[str, object]]):
    def __init__(self, features: torch.Tensor, targets: np.ndarray | None) -> None:
        self.features = features
        self.targets = targets

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, i: int) -> dict[str, object]:
        item: dict[str, object] = {"features": self.features[i], "index": i}
        if self.targets is not None:
            item["target"] = self.targets[i]
        return item


def _collate_features(regression: bool) -> Callable[[list[dict[str, object]]], dict[str, torch.Tensor]]:
    def collate(batch: list[dict[str, object]]) -> dict[str, torch.Tensor]:
        out = {
            "features": torch.stack([b["features"] for b in batch]),  # type: ignore[misc]
            "index": torch.as_tensor([b["index"] for b in batch], dtype=torch.long),
        }
        if "target" in batch[0]:
            dtype = torch.float32 if regression else torch.long
            out["target"] = torch.as_tensor(np.asarray([b["target"] for b in batch]), dtype=dtype)
        return out

    return collate


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=True)


@dataclass
class Trained:
    """What :func:`train_model` leaves: the model, the loop's state and its timings."""

    model: TextModel
    state: TrainState
    monitor: str
    mode: str
    train_seconds: float
    loop_seconds: float
    parameters: dict[str, int]
    # What the steps ran in: {"precision": "bfloat16" | "float32", "attention": kernel}.
    compute: dict[str, str]


def train_model(
    est: TextEstimator,
    cfg: FitConfig,
    schema: Any,
    splits: Splits,
    built: Built,
    record: RunRecord | None,
    callbacks: Sequence[Callback],
    warm: WarmStart | None = None,
) -> Trained:
    """Step 7: adapt the backbone, add the head and run the training loop with its callbacks.

    With ``warm`` (a refit) the network starts from the current model's weights instead of
    the pre-trained backbone and a new head, and L2-SP may pull it back toward them.
    """
    from accelerate.utils import set_seed

    backbone, accelerator, ids, regression = built.backbone, built.accelerator, built.ids, built.regression
    labels = list(schema.labels or [])
    y_train, y_valid = splits.train.y, splits.valid.y
    assert y_train is not None
    n_outputs = 1 if regression else len(labels)
    if warm is not None and warm.base_state is not None:
        backbone.load_state_dict(warm.base_state)
    dtype = built.autocast
    kernel = backbone.use_attention(attention_kernel(cfg.attention, accelerator.device, dtype))
    if cfg.strategy == "lora":
        add_lora(backbone, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets)
    set_seed(cfg.seed)
    model = TextModel(backbone, n_outputs, cfg.dropout)
    if warm is not None and warm.model_state is not None:
        model.load_state_dict(warm.model_state)
    if warm is not None and warm.head_state is not None:
        model.head.load_state_dict(warm.head_state)
    prefix = apply_freezing(
        backbone, strategy=cfg.strategy, freeze_embeddings=cfg.freeze_embeddings, freeze_layers=cfg.freeze_layers
    )
    wanted_weight = "balanced" if cfg.balance == "class_weight" else cfg.class_weight
    weight = None if regression else class_weights(wanted_weight, y_train, labels)
    loss_fn = make_loss(
        cfg.loss,
        schema.task,
        label_smoothing=cfg.label_smoothing,
        focal_gamma=cfg.focal_gamma,
        # Targets are standardised for training; the threshold is given in the target's units.
        huber_delta=cfg.huber_delta / built.std,
        weight=weight,
    ).to(accelerator.device)

    trained: torch.nn.Module
    if cfg.strategy == "head_only":
        trained = FeatureModel(model.head)
        head_lr = cfg.head_lr or cfg.lr
        groups = [
            {"params": [model.head.linear.weight], "lr": head_lr, "weight_decay": cfg.weight_decay, "name": "head"},
            {"params": [model.head.linear.bias], "lr": head_lr, "weight_decay": 0.0, "name": "head/no_decay"},
        ]
        frozen = built.frozen
        train_set: torch.utils.data.Dataset[Any] = _FeatureDataset(frozen["train"], built.scale(y_train))
        valid_set: torch.utils.data.Dataset[Any] | None = (
            _FeatureDataset(frozen["valid"], built.scale(y_valid)) if "valid" in frozen else None
        )
        collate: Any = _collate_features(regression)
        train_lengths = np.ones(len(ids["train"]), dtype=np.int64)
        valid_lengths = np.ones(len(ids["valid"]), dtype=np.int64)
    else:
        trained = model
        groups = param_groups(
            backbone,
            model.head,
            lr=cfg.lr,
            head_lr=cfg.head_lr,
            weight_decay=cfg.weight_decay,
            layer_lr_decay=cfg.layer_lr_decay,
        )
        token_train = TokenDataset(ids["train"], built.scale(y_train))
        token_valid = TokenDataset(ids["valid"], built.scale(y_valid)) if ids["valid"] else None
        train_set, valid_set = token_train, token_valid
        collate = Collator(backbone.pad_id, regression=regression)
        train_lengths = token_train.lengths
        valid_lengths = token_valid.lengths if token_valid is not None else np.zeros(0, dtype=np.int64)
    optimizer = make_optimizer(cfg.optimizer, groups, lr=cfg.lr, momentum=cfg.momentum)
    if warm is not None and warm.penalty > 0:
        loss_fn = PenalisedLoss(loss_fn, AnchorPenalty(trained, anchor_state(trained), warm.penalty))

    def sched(opt: torch.optim.Optimizer, total: int) -> Any:
        return make_scheduler(opt, cfg.scheduler, total_steps=total, warmup_ratio=cfg.warmup_ratio)

    def valid_metrics(targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        return est._metrics_from_outputs(schema.task, targets, outputs, labels, built.mean, built.std)

    monitor = cfg.monitor if cfg.monitor != "auto" else ("rmse" if regression else "f1_macro")
    mode = metric_direction(monitor, schema.task)
    loop_callbacks: list[Callback] = []
    if y_valid is not None and len(y_valid):
        loop_callbacks.append(
            EarlyStopping(
                monitor,
                mode,
                patience=cfg.patience,
                min_delta=cfg.min_delta,
                restore_best=cfg.restore_best,
                stop=cfg.early_stopping,
                # Only what trains can change, so only that is copied (to the CPU).
                state_fn=lambda: {
                    k: v.detach().cpu() for k, v in state_snapshot(accelerator.unwrap_model(trained), True).items()
                },
                load_fn=lambda s: accelerator.unwrap_model(trained).load_state_dict(s, strict=False),
            )
        )
    if cfg.ema_decay > 0:
        loop_callbacks.append(WeightAverage(cfg.ema_decay))
    if cfg.gradual_unfreeze and cfg.strategy == "full":
        unfreezer = GradualUnfreezer(backbone, frozen_prefix=prefix)

        def unfreeze(state: TrainState) -> None:
            state.extra["trainable_layer_groups"] = unfreezer.apply(state.epoch)

        loop_callbacks.append(EpochHook(unfreeze))
    if cfg.progress and accelerator.is_main_process:
        loop_callbacks.append(ProgressBar(f"fine-tuning {cfg.backbone} ({cfg.strategy})"))
    if record is not None:
        loop_callbacks.append(resume_run.history_logger(record.log_epoch))
    # The caller's callbacks join the built-in ones; the loop runs them all by ``order``.
    loop_callbacks.extend(callbacks)

    trainable, total = count_parameters(model)
    settings = LoopSettings(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        grad_accum_steps=cfg.grad_accum_steps,
        grad_clip=cfg.grad_clip,
        seed=cfg.seed,
        length_bucketing=cfg.length_bucketing,
        autocast_dtype=dtype,
    )
    train_started = time.perf_counter()
    with _deterministic(cfg.deterministic):
        state = train(
            trained,
            train_set=train_set,
            train_lengths=train_lengths,
            valid_set=valid_set,
            valid_lengths=valid_lengths,
            valid_targets=built.scale(y_valid),
            collate=collate,
            loss_fn=loss_fn,
            optimizer=optimizer,
            make_scheduler=sched,
            settings=settings,
            accelerator=accelerator,
            valid_metrics=valid_metrics,
            callbacks=loop_callbacks,
            checkpointer=built.checkpointer,
        )
    loop_seconds = time.perf_counter() - train_started
    # Training time proper: the epochs' passes over the training split, without the
    # validation that follows each epoch (reported apart).
    train_seconds = sum(float(h.get("epoch_seconds") or 0.0) for h in state.history) or loop_seconds
    model.eval()
    set_trainable_all(model, False)
    counts = {"trainable": trainable, "total": total}
    compute = {"precision": "bfloat16" if dtype == torch.bfloat16 else "float32", "attention": kernel}
    return Trained(model, state, monitor, mode, train_seconds, loop_seconds, counts, compute)


def keep(est: TextEstimator, cfg: FitConfig, built: Built, run: Trained, splits: Splits) -> None:
    """The learned state, set only now that training has succeeded."""
    state = run.state
    est.model_ = run.model
    est.backbone_ = built.backbone
    est.config_ = cfg
    est.n_outputs_ = run.model.head.linear.out_features
    est.history_ = state.history
    est.best_epoch_ = state.best_epoch
    est.monitor_ = f"valid_{run.monitor}"
    est.monitor_mode_ = run.mode
    est.best_score_ = best_score(state.history, est.monitor_, state.best_epoch)
    est.stop_reason_ = state.stop_reason
    est.train_seconds_ = run.train_seconds
    est.train_examples_ = state.examples_seen
    est.n_parameters_ = run.parameters
    est.drop_report_ = splits.dropped
    est.split_sizes_ = {"train": len(splits.train), "valid": len(splits.valid), "test": len(splits.test)}
    est.split_info_ = splits.info


def evaluate(est: TextEstimator, cfg: FitConfig, schema: Any, splits: Splits, built: Built) -> None:
    """Step 8: the fine-tuned model on the test split (from cached features for ``head_only``)."""
    est.test_metrics_ = None
    y_test = splits.test.y
    if y_test is None or not len(y_test):
        return
    if cfg.strategy == "head_only" and "test" in built.frozen:
        outputs = est._outputs_from_features(built.frozen["test"])
    else:
        outputs = est._outputs_from_ids(built.ids["test"], progress=False)
    y_scaled = built.scale(y_test)
    assert y_scaled is not None
    labels = list(schema.labels or [])
    est.test_metrics_ = est._metrics_from_outputs(schema.task, y_scaled, outputs, labels, built.mean, built.std)
    est._test_outputs = outputs
    est._y_test = y_test


def describe(
    est: TextEstimator,
    data: PreparedData,
    splits: Splits,
    run: Trained,
    found_baselines: dict[str, dict[str, Any]],
    started: float,
) -> None:
    """Step 9: what the run record, the model folder and the report say about the data and training."""
    schema, file = data.schema, data.file
    est.baseline_metrics_ = found_baselines
    est.data_info_ = {
        "file": Path(file).name if file else None,
        "sha256": file_sha256(file) if file else frame_sha256(splits.cleaned),
        "rows": {"after_cleaning": len(splits.cleaned), **est.split_sizes_},
        "dropped": splits.dropped,
        "cleaning": est.cleaning_.to_dict(max_rows=200),
        "split": splits.info,
        "target": schema.target,
        "text_columns": list(schema.text_columns),
    }
    if file and not splits.given:
        # Which data rows (1-based) formed the test split: with the same file (checked by its
        # SHA-256), an export can measure int8 accuracy on exactly the rows the run was scored on.
        est.data_info_["test_rows"] = row_numbers(splits.test.frame).tolist()
    est.training_info_ = {
        **training_summary(
            run.state,
            monitor=run.monitor,
            train_seconds=run.train_seconds,
            loop_seconds=run.loop_seconds,
            started=started,
        ),
        "parameters": run.parameters,
        # Training and validation ran in this; predictions run in float32.
        "compute": run.compute,
    }


def best_score(history: Sequence[dict[str, Any]], key: str, best_epoch: int | None) -> float | None:
    """The monitored validation value at the best epoch (1-based), or None without one."""
    if best_epoch is None or not 1 <= best_epoch <= len(history):
        return None
    value = history[best_epoch - 1].get(key)
    if value is None or not np.isfinite(float(value)):
        return None
    return float(value)
