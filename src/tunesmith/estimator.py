"""``FineTuner``: fine-tune a pre-trained backbone on labeled data, the scikit-learn way.

The constructor only stores (and validates) settings; ``fit`` learns; learned state ends
in ``_``; ``get_params``/``set_params``/``sklearn.base.clone`` work, so searches,
cross-validation and per-user copies need nothing special.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.adapt import (
    GradualUnfreezer,
    add_lora,
    apply_freezing,
    count_parameters,
    load_lora_state_dict,
    lora_state_dict,
    param_groups,
)
from tunesmith.backbones import create_backbone, is_text_backbone
from tunesmith.backbones.cache import FEATURE_CACHE, feature_key
from tunesmith.backbones.embed import run_batches
from tunesmith.backbones.text import TextBackbone, build_from_files, encoder_shapes, saved_encoder_config
from tunesmith.config import FitConfig, SettingsEstimator, config_to_yaml, make_config
from tunesmith.data.clean import CleanReport
from tunesmith.data.io import file_sha256, read_table
from tunesmith.data.quality import Preprocessing, clean_before_split, clean_train
from tunesmith.data.schema import Schema, infer_schema
from tunesmith.data.split import split_frame
from tunesmith.data.validate import DropReport, encode_target, prepare_frame, row_numbers, texts_of
from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError
from tunesmith.evaluate.baselines import embedding_baseline, majority_baseline, tfidf_baseline
from tunesmith.evaluate.metrics import compute_metrics, metric_direction
from tunesmith.export.runtime import (
    TEXT_FORMAT_VERSION,
    check_text_meta,
    field_errors,
    saved_preprocessing,
    saved_schema,
)
from tunesmith.model import FeatureModel, TextModel
from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json, json_safe, save_tensors
from tunesmith.runs.record import RunRecord, environment_info
from tunesmith.runs.trust import SafeFolder, check_state_shapes, field, malformed, open_model
from tunesmith.train.batching import Collator, TokenDataset
from tunesmith.train.callbacks import (
    Callback,
    EarlyStopping,
    EpochHook,
    HistoryLogger,
    ProgressBar,
    TrainState,
    snapshot,
)
from tunesmith.train.loop import LoopSettings, train, training_summary
from tunesmith.train.losses import class_weights, make_loss
from tunesmith.train.optim import make_optimizer, make_scheduler
from tunesmith.train.threads import default_threads, set_trainable_all
from tunesmith.train.threads import is_secondary_process as _is_secondary_process

FORMAT_VERSION = TEXT_FORMAT_VERSION
DataLike = Any  # a path, a DataFrame, or a sequence of texts


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


def _restore_label_values(labels: Sequence[str], values: Sequence[Any]) -> np.ndarray:
    """Labels back in the user's type: ints stay ints, booleans stay booleans."""
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return np.asarray([lbl.lower() == "true" for lbl in labels])
    if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray([int(lbl) for lbl in labels])
    return np.asarray(list(labels), dtype=object)


class FineTuner(SettingsEstimator):
    """Fine-tune a pre-trained text backbone on a labeled table.

    Every keyword is a setting of :class:`tunesmith.config.FitConfig` (see ``docs/config.md``);
    unknown or conflicting settings raise :class:`tunesmith.errors.ConfigError` here, at
    construction, not halfway through a run.

    Examples
    --------
    >>> ft = FineTuner(backbone="tiny-text", epochs=1, runs_dir="")  # doctest: +SKIP
    >>> ft.fit("reviews.csv", target="label").predict(["great film"])  # doctest: +SKIP
    """

    model_path_: Path | None = None

    settings_model = FitConfig

    # --- scikit-learn estimator protocol (get_params, set_params, repr: SettingsEstimator) ---

    @property
    def config(self) -> FitConfig:
        """The validated settings."""
        return make_config(self._params)

    def __sklearn_tags__(self) -> Any:  # pragma: no cover - only used by sklearn utilities
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=True))

    # --- data ------------------------------------------------------------------------------

    @staticmethod
    def _frame(
        X: DataLike, y: Any = None, target: str | None = None, *, role: str = "data"
    ) -> tuple[pd.DataFrame, str | None, str | None]:
        """(frame, target column, file name) from a path, a DataFrame or texts + labels."""
        file: str | None = None
        if isinstance(X, str) and _looks_like_text(X):
            X = [X]
        if isinstance(X, (str, os.PathLike)):
            file = str(X)
            df = read_table(X)
        elif isinstance(X, pd.DataFrame):
            df = X
        elif (
            isinstance(X, pd.Series)
            or (isinstance(X, Sequence) and not isinstance(X, str))
            or isinstance(X, np.ndarray)
        ):
            df = pd.DataFrame({"text": list(X)})
        else:
            raise DataError(
                f"{role} must be a file path, a pandas DataFrame or a list of texts, got {type(X).__name__}"
            )
        if y is not None:
            if target is not None:
                raise ConfigError("give either y or target, not both", key="target")
            if len(y) != len(df):
                raise DataError(f"{role} has {len(df)} rows but y has {len(y)} values", file=file)
            df = df.copy()
            target = "target" if "target" not in df.columns else "__target__"
            df[target] = list(y)
        return df, target, file

    def _prepare(self, df: pd.DataFrame, file: str | None) -> tuple[pd.DataFrame, DropReport]:
        assert self.schema_ is not None
        return prepare_frame(df, self.schema_, file=file)

    # --- fitting ---------------------------------------------------------------------------

    def fit(
        self,
        X: DataLike,
        y: Any = None,
        *,
        target: str | None = None,
        text_column: str | list[str] | None = None,
        eval_set: DataLike | None = None,
        test_set: DataLike | None = None,
        callbacks: Sequence[Callback] | None = None,
    ) -> FineTuner:
        """Fine-tune on ``X`` and score the result and the baselines on a held-out test split.

        ``X`` is a file (CSV, TSV, Parquet, JSONL), a DataFrame with a ``target`` column, or a
        list of texts with labels ``y``. Without ``eval_set``, ``X`` is split into train,
        validation and test by ``valid_size``/``test_size`` (grouped by ``group_column`` or
        following ``split_column`` when set). With ``eval_set`` all of ``X`` trains and
        ``test_set`` (optional) is the test split.

        ``callbacks`` are extra :class:`~tunesmith.train.callbacks.Callback` objects for the
        training loop (a search's pruner, a custom logger). They run with the built-in ones
        in ascending ``order``: early stopping (20) first, then order 50 (the default),
        progress (80) and the run log (90). ``on_epoch_end(state, metrics)`` receives the
        epoch's metrics, with ``metrics[self.monitor_]`` (say ``"valid_f1_macro"``) when
        there is validation data. A callback may raise
        :class:`~tunesmith.train.callbacks.StopTraining` to end training cleanly; any other
        exception propagates out of ``fit`` unchanged (after every callback's
        ``on_fit_end``), and the estimator is then left not fitted. When early stopping
        fires, callbacks of higher order do not see that last epoch: give a callback an
        ``order`` below 20 to see every epoch.

        After fitting, ``monitor_`` names the monitored validation metric (``"valid_rmse"``),
        ``monitor_mode_`` says whether higher (``"max"``) or lower (``"min"``) is better and
        ``best_score_`` is its value at ``best_epoch_`` (the best value seen, and the epoch
        whose weights ``restore_best`` keeps), or ``None`` without validation data.

        With ``feature_cache`` on (the default), the frozen backbone's features of a split
        (``head_only`` training, the frozen-embedding baseline) are computed once per process
        and reused by later fits of the same backbone, pooling, ``max_length`` and texts; see
        :mod:`tunesmith.backbones.cache`.
        """
        # A refit that fails halfway must not leave the old model paired with new labels:
        # until this fit completes, the estimator counts as not fitted.
        self.model_: TextModel | None = None
        self.best_score_: float | None = None
        self.monitor_: str | None = None
        self.monitor_mode_: str | None = None
        params = dict(self._params)
        if text_column is not None:
            params["text_column"] = text_column
        cfg = make_config(params)
        started = time.perf_counter()
        torch.set_num_threads(cfg.num_threads or default_threads())

        df, target_col, file = self._frame(X, y, target)
        if target_col is None:
            raise ConfigError("no target given", key="target", hint="Pass target='column' (CLI: --target COL)")
        task = None if cfg.task == "auto" else cfg.task
        # Group and split columns organise the data; fed to the model they would leak the split.
        ignore = [c for c in (cfg.group_column, cfg.split_column) if c]
        schema = infer_schema(df, target_col, text_column=cfg.text_column, task=task, ignore=ignore, file=file)
        self.schema_: Schema | None = schema
        raw_target = df[target_col]  # before labels become strings, to give predictions back in the user's type
        df, drops = prepare_frame(df, schema, file=file)
        drop_reports = {"data": drops.to_dict()}
        rows_prepared = len(df)
        # Duplicates and conflicts go before the split, so that copies cannot straddle it.
        df, clean_actions = clean_before_split(df, schema, cfg)

        if eval_set is None:
            if test_set is not None:
                raise ConfigError("test_set needs eval_set too", key="test_set")
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
            train_df, valid_df, test_df = parts.train, parts.valid, parts.test
            valid_file = test_file = file
            split_info: dict[str, Any] = {"strategy": parts.strategy, "notes": list(parts.notes)}
        else:
            train_df = df
            vdf, _, vfile = self._frame(eval_set, None, None, role="eval_set")
            valid_df, vdrops = prepare_frame(vdf, schema, file=vfile)
            drop_reports["eval_set"] = vdrops.to_dict()
            if test_set is not None:
                tdf, _, tfile = self._frame(test_set, None, None, role="test_set")
                test_df, tdrops = prepare_frame(tdf, schema, file=tfile)
                drop_reports["test_set"] = tdrops.to_dict()
            else:
                test_df = train_df.iloc[:0]
            split_info = {"strategy": "given", "notes": []}
            valid_file = vfile
            test_file = tfile if test_set is not None else None
        if len(train_df) == 0:
            raise DataError(
                "no rows left to train on after splitting",
                file=file,
                hint="Lower valid_size/test_size or give more data",
            )
        from accelerate.utils import set_seed

        set_seed(cfg.seed)  # a tiny test backbone is randomly initialised
        backbone = create_backbone(cfg.backbone, pooling=cfg.pooling)
        # Cleaning, balancing and augmentation touch the training split only; what it learns
        # (imputed values, numeric scaling) is applied to validation, test and predictions alike.
        train_df, train_actions, preprocessing = clean_train(train_df, schema, cfg, backbone=backbone)
        clean_actions += train_actions
        self.preprocessing_ = preprocessing
        valid_df, test_df = preprocessing.apply(valid_df), preprocessing.apply(test_df)
        # With eval_set, only X is cleaned: the given validation and test sets are not counted.
        kept = len(train_df) + (len(valid_df) + len(test_df) if eval_set is None else 0)
        self.cleaning_ = CleanReport(rows_in=rows_prepared, rows_out=kept, actions=clean_actions)
        if len(train_df) == 0:
            raise DataError("cleaning left no rows to train on", file=file, hint=self.cleaning_.summary())

        labels = list(schema.labels or [])
        regression = schema.task == "regression"
        y_train = encode_target(train_df[schema.target], schema, file=file)
        y_valid = encode_target(valid_df[schema.target], schema, file=valid_file) if len(valid_df) else None
        y_test = encode_target(test_df[schema.target], schema, file=test_file) if len(test_df) else None
        if not regression and len(np.unique(y_train)) < 2:
            raise DataError(
                "the training split holds only one class",
                file=file,
                column=schema.target,
                hint="Give more rows of the rarer classes or lower valid_size/test_size",
            )
        original = raw_target if not regression else None
        self.label_values_ = self._label_values(labels, original)
        self.classes_ = _restore_label_values(labels, self.label_values_) if not regression else None

        texts_train = texts_of(train_df, schema)
        texts_valid = texts_of(valid_df, schema) if len(valid_df) else []
        texts_test = texts_of(test_df, schema) if len(test_df) else []

        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        # Gradual unfreezing changes which parameters get gradients after DDP has wrapped the
        # model; DDP must then look for unused parameters every step instead of waiting on them.
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.gradual_unfreeze else []
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision, kwargs_handlers=handlers
        )
        set_seed(cfg.seed)
        # A folder is stored resolved, so a head-only or LoRA model loads from any working directory.
        self._backbone_origin = str(Path(cfg.backbone).resolve()) if Path(cfg.backbone).exists() else cfg.backbone
        ids_train = backbone.tokenize(texts_train, cfg.max_length)
        ids_valid = backbone.tokenize(texts_valid, cfg.max_length) if texts_valid else []
        ids_test = backbone.tokenize(texts_test, cfg.max_length) if texts_test else []

        # Regression targets are standardised for training (a stable loss scale whatever
        # the units); predictions are mapped back.
        if regression:
            mean, std = float(np.mean(y_train)), float(np.std(y_train)) or 1.0
            self.target_scaling_: dict[str, float] | None = {"mean": mean, "std": std}
        else:
            mean, std = 0.0, 1.0
            self.target_scaling_ = None

        def scale(v: np.ndarray | None) -> np.ndarray | None:
            return None if v is None else ((v - mean) / std).astype(np.float32) if regression else v

        is_main = accelerator.is_main_process
        record: RunRecord | None = None
        if cfg.runs_dir and is_main:
            record = RunRecord.create(cfg.runs_dir, cfg.run_name or f"{Path(file).stem if file else 'fit'}")
            record.write_config(cfg.model_dump(mode="json"))

        # --- baselines, on the same test split, from the untouched pre-trained backbone ---------
        # The backbone was built by this fit and nothing has changed its weights yet (no
        # adapters, freezing or training until below), so its features are the pre-trained
        # weights' features: the same for every fit in this process, hence cacheable.
        baselines: dict[str, dict[str, Any]] = {}
        frozen_cache: dict[str, torch.Tensor] = {}
        need_features = cfg.strategy == "head_only"
        cache = cfg.feature_cache
        if (cfg.baselines and y_test is not None and is_main) or need_features:
            feats_train = self._embed(backbone, ids_train, cfg, "embedding train split", cache=cache)
            frozen_cache["train"] = feats_train
            if cfg.baselines and y_test is not None and is_main:
                feats_test = self._embed(backbone, ids_test, cfg, "embedding test split", cache=cache)
                frozen_cache["test"] = feats_test
                n_classes = len(labels) if not regression else None
                baselines["majority"] = majority_baseline(y_train, y_test, schema.task, n_classes, labels=labels)
                baselines["tfidf"] = tfidf_baseline(
                    texts_train,
                    y_train,
                    texts_test,
                    y_test,
                    schema.task,
                    n_classes,
                    seed=cfg.seed,
                    labels=labels,
                )
                baselines["frozen"] = embedding_baseline(
                    feats_train.numpy(),
                    y_train,
                    feats_test.numpy(),
                    y_test,
                    schema.task,
                    n_classes,
                    seed=cfg.seed,
                    labels=labels,
                )
            if need_features and ids_valid:
                frozen_cache["valid"] = self._embed(backbone, ids_valid, cfg, "embedding valid split", cache=cache)
            if need_features and ids_test and "test" not in frozen_cache:
                # head_only never changes the backbone, so the test split is scored from the
                # same frozen features (and a later fit on the same data embeds nothing).
                frozen_cache["test"] = self._embed(backbone, ids_test, cfg, "embedding test split", cache=cache)

        # --- model, adaptation and optimisation --------------------------------------------
        n_outputs = 1 if regression else len(labels)
        if cfg.strategy == "lora":
            add_lora(
                backbone,
                r=cfg.lora_r,
                alpha=cfg.lora_alpha,
                dropout=cfg.lora_dropout,
                targets=cfg.lora_targets,
            )
        set_seed(cfg.seed)
        model = TextModel(backbone, n_outputs, cfg.dropout)
        prefix = apply_freezing(
            backbone,
            strategy=cfg.strategy,
            freeze_embeddings=cfg.freeze_embeddings,
            freeze_layers=cfg.freeze_layers,
        )
        wanted_weight = "balanced" if cfg.balance == "class_weight" else cfg.class_weight
        weight = None if regression else class_weights(wanted_weight, y_train, labels)
        loss_fn = make_loss(
            cfg.loss,
            schema.task,
            label_smoothing=cfg.label_smoothing,
            focal_gamma=cfg.focal_gamma,
            # Targets are standardised for training; the threshold is given in the target's units.
            huber_delta=cfg.huber_delta / std,
            weight=weight,
        ).to(accelerator.device)

        if cfg.strategy == "head_only":
            trained: torch.nn.Module = FeatureModel(model.head)
            head_lr = cfg.head_lr or cfg.lr
            groups = [
                {"params": [model.head.linear.weight], "lr": head_lr, "weight_decay": cfg.weight_decay, "name": "head"},
                {"params": [model.head.linear.bias], "lr": head_lr, "weight_decay": 0.0, "name": "head/no_decay"},
            ]
            train_set: torch.utils.data.Dataset[Any] = _FeatureDataset(frozen_cache["train"], scale(y_train))
            valid_set: torch.utils.data.Dataset[Any] | None = (
                _FeatureDataset(frozen_cache["valid"], scale(y_valid)) if "valid" in frozen_cache else None
            )
            collate = _collate_features(regression)
            train_lengths = np.ones(len(ids_train), dtype=np.int64)
            valid_lengths = np.ones(len(ids_valid), dtype=np.int64)
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
            token_train = TokenDataset(ids_train, scale(y_train))
            token_valid = TokenDataset(ids_valid, scale(y_valid)) if ids_valid else None
            train_set, valid_set = token_train, token_valid
            collate = Collator(backbone.pad_id, regression=regression)
            train_lengths = token_train.lengths
            valid_lengths = token_valid.lengths if token_valid is not None else np.zeros(0, dtype=np.int64)
        optimizer = make_optimizer(cfg.optimizer, groups, lr=cfg.lr, momentum=cfg.momentum)

        def sched(opt: torch.optim.Optimizer, total: int) -> Any:
            return make_scheduler(opt, cfg.scheduler, total_steps=total, warmup_ratio=cfg.warmup_ratio)

        def valid_metrics(targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
            return self._metrics_from_outputs(schema.task, targets, outputs, labels, mean, std)

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
                        k: v.detach().cpu() for k, v in snapshot(accelerator.unwrap_model(trained), True).items()
                    },
                    load_fn=lambda s: accelerator.unwrap_model(trained).load_state_dict(s, strict=False),
                )
            )
        if cfg.gradual_unfreeze and cfg.strategy == "full":
            unfreezer = GradualUnfreezer(backbone, frozen_prefix=prefix)

            def unfreeze(state: TrainState) -> None:
                state.extra["trainable_layer_groups"] = unfreezer.apply(state.epoch)

            loop_callbacks.append(EpochHook(unfreeze))
        if cfg.progress and is_main:
            loop_callbacks.append(ProgressBar(f"fine-tuning {cfg.backbone} ({cfg.strategy})"))
        if record is not None:
            loop_callbacks.append(HistoryLogger(record.log_epoch))
        # The caller's callbacks join the built-in ones; the loop runs them all by ``order``.
        loop_callbacks.extend(callbacks or ())

        trainable, total = count_parameters(model)
        settings = LoopSettings(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size,
            grad_accum_steps=cfg.grad_accum_steps,
            grad_clip=cfg.grad_clip,
            seed=cfg.seed,
            length_bucketing=cfg.length_bucketing,
        )
        train_started = time.perf_counter()
        with _deterministic(cfg.deterministic):
            state = train(
                trained,
                train_set=train_set,
                train_lengths=train_lengths,
                valid_set=valid_set,
                valid_lengths=valid_lengths,
                valid_targets=scale(y_valid),
                collate=collate,
                loss_fn=loss_fn,
                optimizer=optimizer,
                make_scheduler=sched,
                settings=settings,
                accelerator=accelerator,
                valid_metrics=valid_metrics,
                callbacks=loop_callbacks,
            )
        loop_seconds = time.perf_counter() - train_started
        # Training time proper: the epochs' passes over the training split, without the
        # validation that follows each epoch (reported apart).
        train_seconds = sum(float(h.get("epoch_seconds") or 0.0) for h in state.history) or loop_seconds
        model.eval()
        set_trainable_all(model, False)
        self.model_ = model
        self.backbone_ = backbone
        self.config_ = cfg
        self.n_outputs_ = n_outputs
        self.history_ = state.history
        self.best_epoch_ = state.best_epoch
        self.monitor_ = f"valid_{monitor}"
        self.monitor_mode_ = mode
        self.best_score_ = _best_score(state.history, self.monitor_, state.best_epoch)
        self.stop_reason_ = state.stop_reason
        self.train_seconds_ = train_seconds
        self.train_examples_ = state.examples_seen
        self.n_parameters_ = {"trainable": trainable, "total": total}
        self.drop_report_ = drop_reports
        self.split_sizes_ = {"train": len(train_df), "valid": len(valid_df), "test": len(test_df)}
        self.split_info_ = split_info

        # --- test evaluation -----------------------------------------------------------------
        self.test_metrics_: dict[str, Any] | None = None
        if y_test is not None and len(y_test):
            if cfg.strategy == "head_only" and "test" in frozen_cache:
                outputs = self._outputs_from_features(frozen_cache["test"])
            else:
                outputs = self._outputs_from_ids(ids_test, progress=False)
            y_test_scaled = scale(y_test)
            assert y_test_scaled is not None
            self.test_metrics_ = self._metrics_from_outputs(schema.task, y_test_scaled, outputs, labels, mean, std)
            self._test_outputs = outputs
            self._y_test = y_test
        self.baseline_metrics_ = baselines
        self.data_info_ = {
            "file": Path(file).name if file else None,
            "sha256": file_sha256(file) if file else _frame_sha256(df),
            "rows": {"after_cleaning": len(df), **self.split_sizes_},
            "dropped": drop_reports,
            "cleaning": self.cleaning_.to_dict(max_rows=200),
            "split": split_info,
            "target": schema.target,
            "text_columns": list(schema.text_columns),
        }
        if file and eval_set is None:
            # Which data rows (1-based) formed the test split: with the same file (checked by its
            # SHA-256), an export can measure int8 accuracy on exactly the rows the run was scored on.
            self.data_info_["test_rows"] = row_numbers(test_df).tolist()
        self.training_info_ = {
            **training_summary(
                state, monitor=monitor, train_seconds=train_seconds, loop_seconds=loop_seconds, started=started
            ),
            "parameters": self.n_parameters_,
        }
        self.run_dir_ = None
        if record is not None:
            self._write_record(record)
            self.run_dir_ = record.path
        accelerator.wait_for_everyone()
        return self

    # --- internals -------------------------------------------------------------------------

    @staticmethod
    def _label_values(labels: Sequence[str], original: pd.Series | None) -> list[Any]:
        if original is None:
            return []
        by_label: dict[str, Any] = {}
        for value in original.dropna().unique():
            key = str(value)
            if isinstance(value, (float, np.floating)) and float(value).is_integer():
                key, value = str(int(value)), int(value)
            by_label.setdefault(key, value.item() if isinstance(value, np.generic) else value)
        return [by_label.get(lbl, lbl) for lbl in labels]

    @staticmethod
    def _metrics_from_outputs(
        task: str, targets: np.ndarray, outputs: np.ndarray, labels: Sequence[str], mean: float, std: float
    ) -> dict[str, Any]:
        if task == "regression":
            return compute_metrics(task, targets * std + mean, outputs[:, 0] * std + mean)
        proba = torch.softmax(torch.as_tensor(outputs, dtype=torch.float32), dim=-1).numpy()
        return compute_metrics(task, targets, proba, labels)

    def _embed(
        self, backbone: TextBackbone, ids: list[list[int]], cfg: FitConfig, what: str, *, cache: bool = False
    ) -> torch.Tensor:
        """Pooled vectors of the backbone as it is (pre-trained, frozen).

        With ``cache``, which the caller may only set while ``backbone`` holds its pre-trained
        weights untouched, the vectors come from (or go to) the process-wide feature cache;
        a backbone without a fingerprint is never cached.
        """
        key = None
        if cache and backbone.fingerprint and ids:
            key = feature_key(backbone.fingerprint, backbone.pooling, cfg.max_length, ids)
            hit = FEATURE_CACHE.get(key)
            if hit is not None:
                return hit
        out = torch.as_tensor(
            self._run_batches(
                backbone, ids, cfg.eval_batch_size, backbone.pad_id, progress=cfg.progress, description=what
            )
        )
        if key is not None:
            FEATURE_CACHE.put(key, out)
        return out

    @staticmethod
    def _run_batches(
        module: torch.nn.Module,
        ids: list[list[int]],
        batch_size: int,
        pad_id: int,
        *,
        progress: bool,
        description: str,
    ) -> np.ndarray:
        """Run ``module`` over token ids in length-sorted batches; results in input order."""
        return run_batches(module, ids, batch_size, pad_id, progress=progress, description=description)

    def _outputs_from_ids(self, ids: list[list[int]], *, progress: bool) -> np.ndarray:
        assert self.model_ is not None
        cfg = self.config_
        return self._run_batches(
            self.model_,
            ids,
            cfg.eval_batch_size,
            self.backbone_.pad_id,
            progress=progress,
            description="predicting",
        )

    def _outputs_from_features(self, features: torch.Tensor) -> np.ndarray:
        assert self.model_ is not None
        with torch.inference_mode():
            device = next(self.model_.parameters()).device
            return self.model_.head(features.to(device)).float().cpu().numpy()

    def _check_fitted(self) -> None:
        if getattr(self, "model_", None) is None:
            raise NotFittedError(
                "this FineTuner is not fitted yet", hint="Call fit() first or tunesmith.load() a model"
            )

    def _texts_for_prediction(self, X: DataLike) -> tuple[list[str], pd.DataFrame, str | None]:
        assert self.schema_ is not None
        df, _, file = self._frame(X, None, None, role="data")
        if list(df.columns) == ["text"] and list(self.schema_.text_columns) != ["text"]:
            df = df.rename(columns={"text": self.schema_.text_columns[0]})
        missing = [c for c in self.schema_.text_columns if c not in df.columns]
        if missing:
            raise DataError(
                f"column {missing[0]!r} used in training is missing",
                file=file,
                column=missing[0],
                hint=f"Columns present: {', '.join(map(str, df.columns))}",
            )
        blank = pd.Series(True, index=df.index)
        for col in self.schema_.text_columns:
            blank &= df[col].isna() | df[col].astype(str).str.strip().eq("")
        if blank.any():
            rows = (np.flatnonzero(blank.to_numpy()) + 1)[:10].tolist()
            warnings.warn(
                f"{int(blank.sum())} row(s) have no text (rows {rows}); they are predicted from an empty text",
                stacklevel=3,
            )
        filled = df.copy()
        for col in self.schema_.text_columns:
            filled[col] = filled[col].fillna("")
        absent = [c for c in (*self.schema_.numeric_columns, *self.schema_.categorical_columns) if c not in df.columns]
        if absent:
            warnings.warn(
                f"column(s) {', '.join(map(repr, absent))} used in training are missing; predicting without them",
                stacklevel=3,
            )
        for col in absent:
            filled[col] = np.nan
        filled = self._preprocessing().apply(filled)
        return texts_of(filled, self.schema_), df, file

    def _preprocessing(self) -> Preprocessing:
        return getattr(self, "preprocessing_", None) or Preprocessing()

    def _predict_outputs(self, X: DataLike) -> np.ndarray:
        self._check_fitted()
        texts, _, _ = self._texts_for_prediction(X)
        ids = self.backbone_.tokenize(texts, self.config_.max_length)
        return self._outputs_from_ids(ids, progress=self.config_.progress and len(ids) >= 2048)

    # --- prediction ------------------------------------------------------------------------

    def predict_proba(self, X: DataLike) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, columns in the order of ``classes_``."""
        self._check_fitted()
        if self.schema_ is not None and self.schema_.task == "regression":
            raise ConfigError("predict_proba is for classification; this model does regression", key="task")
        outputs = self._predict_outputs(X)
        return torch.softmax(torch.as_tensor(outputs), dim=-1).numpy()

    def predict(self, X: DataLike) -> np.ndarray:
        """Predicted labels (in the target's own type) or values for regression."""
        self._check_fitted()
        outputs = self._predict_outputs(X)
        if self.schema_ is not None and self.schema_.task == "regression":
            s = self.target_scaling_ or {"mean": 0.0, "std": 1.0}
            return outputs[:, 0] * s["std"] + s["mean"]
        assert self.classes_ is not None
        return self.classes_[outputs.argmax(axis=1)]

    def evaluate(self, X: DataLike, y: Any = None, *, target: str | None = None) -> dict[str, Any]:
        """Metrics on labeled data; a label never seen in training is an error naming its row."""
        self._check_fitted()
        assert self.schema_ is not None
        df, target_col, file = self._frame(X, y, target or (self.schema_.target if y is None else None))
        if list(df.columns)[:1] == ["text"] and "text" not in self.schema_.text_columns:
            df = df.rename(columns={"text": self.schema_.text_columns[0]})
        if target_col not in df.columns:
            raise DataError(
                f"target column {target_col!r} is missing",
                file=file,
                column=target_col,
                hint="Pass --target with the column holding the labels",
            )
        schema = self.schema_
        if target_col != schema.target:
            df = df.rename(columns={target_col: schema.target})
        df, drops = prepare_frame(df, schema, file=file)
        y_true = encode_target(df[schema.target], schema, file=file)
        texts = texts_of(self._preprocessing().apply(df), schema)
        ids = self.backbone_.tokenize(texts, self.config_.max_length)
        outputs = self._outputs_from_ids(ids, progress=self.config_.progress and len(ids) >= 2048)
        s = self.target_scaling_ or {"mean": 0.0, "std": 1.0}
        y_scaled = (y_true - s["mean"]) / s["std"] if schema.task == "regression" else y_true
        metrics = self._metrics_from_outputs(
            schema.task, y_scaled, outputs, list(schema.labels or []), s["mean"], s["std"]
        )
        metrics["dropped"] = drops.to_dict()
        return metrics

    def score(self, X: DataLike, y: Any = None, *, target: str | None = None) -> float:
        """Accuracy for classification, R² for regression (the scikit-learn convention)."""
        metrics = self.evaluate(X, y, target=target)
        key = "r2" if self.schema_ is not None and self.schema_.task == "regression" else "accuracy"
        return float(metrics[key])

    # --- search ------------------------------------------------------------------------------

    def tune(
        self,
        X: DataLike,
        y: Any = None,
        *,
        target: str | None = None,
        space: Any = None,
        n_trials: int | None = 20,
        time_budget: str | float | None = None,
        refit: bool = False,
        **options: Any,
    ) -> Any:
        """Search settings around this estimator's own; keep the best ones on it.

        A thin door to :func:`tunesmith.search.tune` (same ``space``, ``n_trials``,
        ``time_budget``, ``sampler``, ``pruner``, ``cv``, ``storage``, ``workers``,
        ``out_dir`` options): trials start from :meth:`get_params` and the best settings
        found are set on this estimator with :meth:`set_params`. With ``refit=True`` the
        estimator is then fitted on ``X`` with them. Returns the
        :class:`~tunesmith.search.tuner.TuneResult`.
        """
        from tunesmith.search.tuner import tune as run_search

        df, target_col, _ = self._frame(X, y, target)
        if target_col is None:
            raise ConfigError("no target given", key="target", hint="Pass target='column'")
        result = run_search(
            df,
            target_col,
            base_params=self.get_params(),
            space=space,
            n_trials=n_trials,
            time_budget=time_budget,
            **options,
        )
        if result.best_params:
            chosen = {k: v for k, v in result.best_config.items() if k in self._params or k in result.best_params}
            self.set_params(**chosen)
        if refit:
            self.fit(df, target=target_col, text_column=options.get("text_column"))
        return result

    # --- records and artifacts ---------------------------------------------------------------

    def _report_info(self) -> dict[str, Any]:
        cfg = self.config_
        assert self.schema_ is not None
        return {
            "title": f"{cfg.backbone} fine-tuned on {self.data_info_.get('file') or 'a DataFrame'}",
            "task": self.schema_.task,
            "backbone": cfg.backbone,
            "strategy": cfg.strategy,
            "labels": list(self.schema_.labels or []),
            "metrics": self.test_metrics_ or {},
            "baselines": self.baseline_metrics_,
            "config": cfg.model_dump(mode="json"),
            "data": self.data_info_,
            "training": self.training_info_,
            "environment": environment_info(seed=cfg.seed),
        }

    def _write_record(self, record: RunRecord) -> None:
        from tunesmith.runs.plots import plot_confusion_matrix, plot_learning_curves, plot_residuals
        from tunesmith.runs.report import render_report

        schema = self.schema_
        assert schema is not None
        info = self._report_info()
        record.write_data(self.data_info_)
        record.write_environment(seed=self.config_.seed)
        record.write_json(
            "metrics.json",
            {
                "test": self.test_metrics_,
                "baselines": self.baseline_metrics_,
                "training": self.training_info_,
            },
        )
        images: dict[str, str] = {}
        if self.history_:
            plot_learning_curves(self.history_, record.path / "learning_curves.png")
            images["learning_curves"] = "learning_curves.png"
        if self.test_metrics_ and "confusion_matrix" in self.test_metrics_:
            plot_confusion_matrix(
                self.test_metrics_["confusion_matrix"],
                list(schema.labels or []),
                record.path / "confusion_matrix.png",
            )
            images["confusion_matrix"] = "confusion_matrix.png"
        elif self.test_metrics_ and getattr(self, "_y_test", None) is not None:
            s = self.target_scaling_ or {"mean": 0.0, "std": 1.0}
            plot_residuals(self._y_test, self._test_outputs[:, 0] * s["std"] + s["mean"], record.path / "residuals.png")
            images["residuals"] = "residuals.png"
        info["images"] = images
        record.write_text("report.md", render_report(info))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model folder: ``model.safetensors``, ``tunesmith.json``, tokenizer files, ``card.md``.

        Full fine-tunes store every weight; head-only and LoRA models store only what was
        trained (head, adapters) plus a fingerprint of the pre-trained weights they need.
        The folder appears whole or not at all.
        """
        self._check_fitted()
        assert self.model_ is not None and self.schema_ is not None
        from tunesmith.runs.report import render_report

        final = Path(path)
        if _is_secondary_process():
            return final  # in a distributed run the main process writes the one copy

        cfg = self.config_
        strategy = cfg.strategy
        tensors: dict[str, torch.Tensor] = {}
        if strategy == "full":
            tensors.update(self.model_.state_dict())
            weights = "full"
        else:
            tensors.update({f"head.{k}": v for k, v in self.model_.head.state_dict().items()})
            if strategy == "lora":
                tensors.update({f"lora.{k}": v for k, v in lora_state_dict(self.backbone_).items()})
            weights = "base"
        meta = {
            "format_version": FORMAT_VERSION,
            "tunesmith_version": _version(),
            "task": self.schema_.task,
            "schema": self.schema_.to_dict(),
            "labels": list(self.schema_.labels or []),
            "label_values": self.label_values_,
            "target_scaling": self.target_scaling_,
            "preprocessing": self.preprocessing_.to_dict(),
            "n_outputs": self.n_outputs_,
            "backbone": {
                "name": self._backbone_origin,
                "fingerprint": self.backbone_.fingerprint,
                "weights": weights,
                "pooling": self.backbone_.pooling,
                "hidden_size": self.backbone_.hidden_size,
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
        with AtomicDirectory(final, overwrite=overwrite) as tmp:
            tmp = Path(tmp)
            save_tensors(tmp / "model.safetensors", tensors, {"format": "tunesmith", "weights": weights})
            self.backbone_.save_files(tmp)
            atomic_write_json(tmp / "tunesmith.json", json_safe(meta))
            (tmp / "config.yaml").write_text(config_to_yaml(cfg))
            (tmp / "card.md").write_text(render_report(self._report_info()))
        return final

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, backbone: str | None = None) -> FineTuner:
        """Load a model folder written by :meth:`save`, treating it as untrusted input.

        The folder is opened through :func:`~tunesmith.runs.trust.open_model`: no code from
        it ever runs, nothing outside it is read, and the sizes its files declare are checked
        against the weights before anything is allocated. A head-only or LoRA model names the
        pre-trained backbone it needs in ``tunesmith.json``; a registered name is used, but a
        local path written there is never opened on the folder's word: give that backbone as
        ``backbone`` (a registered name or a local Hugging Face folder). Its fingerprint must
        match the one the model was trained on. ``backbone`` is ignored for models that store
        every weight.

        Raises:
            ArtifactError: the folder is unsafe, malformed, or needs a backbone it may not
                open itself; the message names the file and the field.
        """
        folder, meta = open_model(path)
        return cls._from_opened(folder, meta, backbone=backbone)

    @classmethod
    def _from_opened(cls, folder: SafeFolder, meta: dict[str, Any], *, backbone: str | None = None) -> FineTuner:
        """:meth:`load` of a folder :func:`~tunesmith.runs.trust.open_model` already opened."""
        meta_file = folder.root / "tunesmith.json"
        kind = field(meta, "kind", str, file=meta_file, default="text")
        if kind != "text":
            raise ArtifactError(
                f"field 'kind' is {kind!r}: this folder holds a {kind} model, not a text model",
                path=meta_file,
                hint="Load it with tunesmith.load(), which picks the loader of each kind",
            )
        check_text_meta(meta, file=meta_file)
        with field_errors(meta_file, "config"):
            cfg = make_config(meta["config"])
        info = meta["backbone"]
        n_outputs = int(meta["n_outputs"])
        weights_file = folder.root / "model.safetensors"
        header = folder.header("model.safetensors")
        origin = str(info["name"])
        if info["weights"] == "full":
            config = saved_encoder_config(folder)
            hidden = int(config.hidden_size)
            shapes = encoder_shapes(config, file=folder.root / "backbone_config.json")
            expected = {f"backbone.model.{k}": v for k, v in shapes.items()}
            expected.update(_head_shapes(n_outputs, hidden))
            # Shapes first, on the meta device: the real model is built only once the weights
            # file is known to hold exactly that architecture.
            check_state_shapes(expected, header, file=weights_file)
            text_backbone = build_from_files(
                folder, name=origin, pooling=info["pooling"], fingerprint=info["fingerprint"], config=config
            )
        else:
            text_backbone, origin = _base_backbone(info, backbone, meta_file=meta_file)
            expected = _head_shapes(n_outputs, text_backbone.hidden_size)
            if cfg.strategy == "lora":
                _check_lora_rank(header, cfg.lora_r, file=weights_file, meta_file=meta_file)
                with field_errors(meta_file, "config.lora_targets"):
                    add_lora(
                        text_backbone,
                        r=cfg.lora_r,
                        alpha=cfg.lora_alpha,
                        dropout=cfg.lora_dropout,
                        targets=cfg.lora_targets,
                    )
                expected.update({f"lora.{k}": tuple(v.shape) for k, v in lora_state_dict(text_backbone).items()})
            check_state_shapes(expected, header, file=weights_file)
        tensors = folder.tensors("model.safetensors", expected=expected)
        model = TextModel(text_backbone, n_outputs, cfg.dropout)
        try:
            if info["weights"] == "full":
                model.load_state_dict(tensors, strict=True)
            else:
                if cfg.strategy == "lora":
                    load_lora_state_dict(text_backbone, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})
                model.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        except (RuntimeError, ConfigError) as exc:  # load_lora_state_dict reports misfits as ConfigError
            raise ArtifactError(
                f"weights do not match the architecture: {(str(exc).splitlines() or [''])[0]}", path=weights_file
            ) from None
        model.eval()
        set_trainable_all(model, False)
        with malformed(meta_file):
            est = cls(**{k: v for k, v in meta["config"].items() if v != FitConfig.model_fields[k].default})
        est.model_ = model
        est.backbone_ = text_backbone
        est.config_ = cfg
        est._backbone_origin = origin
        est.schema_ = saved_schema(meta, file=meta_file)
        labels = list(meta.get("labels") or [])
        est.label_values_ = list(meta.get("label_values") or [])
        with malformed(meta_file, "field 'label_values'"):
            est.classes_ = _restore_label_values(labels, est.label_values_) if meta["task"] != "regression" else None
        est.target_scaling_ = meta.get("target_scaling")
        est.preprocessing_ = saved_preprocessing(meta, file=meta_file)
        est.n_outputs_ = n_outputs
        est.test_metrics_ = field(meta, "metrics", dict, file=meta_file, default=None)
        est.baseline_metrics_ = field(meta, "baselines", dict, file=meta_file, default=None) or {}
        est.training_info_ = field(meta, "training", dict, file=meta_file, default=None) or {}
        est.data_info_ = field(meta, "data", dict, file=meta_file, default=None) or {}
        history = field(meta, "history", list, file=meta_file, default=None) or []
        if not all(isinstance(h, dict) for h in history):
            raise ArtifactError("field 'history' must be a list of JSON objects", path=meta_file)
        est.history_ = history
        best = est.training_info_.get("best_epoch")
        est.best_epoch_ = int(best) if isinstance(best, int) and not isinstance(best, bool) else None
        monitor = est.training_info_.get("monitor")
        est.monitor_ = str(monitor) if isinstance(monitor, str) and monitor else None
        with malformed(meta_file, "field 'training.monitor'"):
            est.monitor_mode_ = metric_direction(est.monitor_, meta["task"]) if est.monitor_ else None
        with malformed(meta_file, "field 'history'"):
            est.best_score_ = _best_score(est.history_, est.monitor_, est.best_epoch_) if est.monitor_ else None
        est.model_path_ = folder.root
        return est


def _head_shapes(n_outputs: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """State dict shapes of the head of a :class:`~tunesmith.model.TextModel` (as saved, ``head.`` prefix)."""
    return {"head.linear.weight": (n_outputs, hidden), "head.linear.bias": (n_outputs,)}


def _base_backbone(info: dict[str, Any], given: str | None, *, meta_file: Path) -> tuple[TextBackbone, str]:
    """The pre-trained backbone a head-only or LoRA model needs, and the name it is recorded under.

    ``given`` (the caller's own choice) may be a registered name or a local folder. Without
    it, only a registered name from the metadata is used: a path there is refused, because
    a model folder may not make tunesmith open other folders.
    """
    name = str(info["name"])
    pooling = str(info["pooling"])
    shown = name if len(name) <= 120 else name[:117] + "..."
    if given is not None:
        backbone = create_backbone(given, pooling=pooling)
        origin = str(Path(given).resolve()) if not is_text_backbone(given) and Path(given).exists() else given
    elif is_text_backbone(name):
        backbone = create_backbone(name, pooling=pooling)
        origin = name
    else:
        looks_like_path = "/" in name or "\\" in name or name.startswith(".") or Path(name).is_absolute()
        why = (
            "is a path; a model folder's metadata may not make tunesmith open another folder"
            if looks_like_path
            else "is not a registered backbone here"
        )
        raise ArtifactError(
            f"field 'backbone.name' ({shown!r}) {why}. This model stores only its head/adapters and needs that "
            "pre-trained backbone",
            path=meta_file,
            hint="Pass the backbone explicitly: tunesmith.load(folder, backbone='/path/to/backbone') or "
            "FineTuner.load(folder, backbone=...); its fingerprint is checked",
        )
    if backbone.fingerprint != info["fingerprint"]:
        raise ArtifactError(
            f"backbone {given or name!r} has different weights from the ones this model was trained on "
            "(field 'backbone.fingerprint')",
            path=meta_file,
            hint="Use the same version of the pre-trained model",
        )
    return backbone, origin


def _check_lora_rank(header: dict[str, Any], rank: int, *, file: Path, meta_file: Path) -> None:
    """The saved adapters' rank must be the configured one before adapters of that rank are allocated."""
    ranks = {
        int(t.shape[0])
        for k, t in header.items()
        if k.startswith("lora.") and ("lora_A" in k or "lora_embedding_A" in k) and t.shape
    }
    if not ranks:
        raise ArtifactError(
            "weights hold no LoRA adapter tensors, but tunesmith.json field 'config.strategy' is 'lora'",
            path=file,
            hint="The folder is damaged or was not written by tunesmith; re-save the model",
        )
    if ranks != {rank}:
        raise ArtifactError(
            f"field 'config.lora_r' is {rank} but the saved adapters have rank {sorted(ranks)[0]}",
            path=meta_file,
            hint="The folder is damaged or was not written by tunesmith; re-save the model",
        )


_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".gz", ".bz2", ".xz", ".txt")


def _looks_like_text(value: str) -> bool:
    """A string that is not an existing path and not shaped like a data file name is one text."""
    if "\n" in value:
        return True
    if Path(value).exists():
        return False
    return not value.lower().endswith(_TABLE_SUFFIXES)


def _best_score(history: Sequence[dict[str, Any]], key: str, best_epoch: int | None) -> float | None:
    """The monitored validation value at the best epoch (1-based), or None without one."""
    if best_epoch is None or not 1 <= best_epoch <= len(history):
        return None
    value = history[best_epoch - 1].get(key)
    if value is None or not np.isfinite(float(value)):
        return None
    return float(value)


def _frame_sha256(df: pd.DataFrame) -> str:
    import hashlib

    hashed = pd.util.hash_pandas_object(df.drop(columns=["__row__"], errors="ignore"), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()


def _version() -> str:
    from tunesmith import __version__

    return __version__


class _NullBar:
    def __enter__(self) -> Any:
        return lambda: None

    def __exit__(self, *exc: object) -> None:
        return None


class _RichBar:
    def __init__(self, description: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            transient=True,
        )
        self.task = self.progress.add_task(description, total=total)

    def __enter__(self) -> Any:
        self.progress.start()
        return lambda: self.progress.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _progress(description: str, total: int, *, enabled: bool) -> Any:
    return _RichBar(description, total) if enabled else _NullBar()


def load(path: str | os.PathLike[str], *, backbone: str | None = None) -> Any:
    """Load a saved model folder of any kind: text (:class:`FineTuner`), image
    (:class:`~tunesmith.vision.ImageFineTuner`), tabular (:class:`~tunesmith.tabular.TabularFineTuner`)
    or recommender (:class:`~tunesmith.recsys.Recommender`).

    The folder is untrusted input: it is opened once through
    :func:`~tunesmith.runs.trust.open_model` (no code runs, nothing outside it is read) and
    its ``kind`` picks the loader. ``backbone`` names the pre-trained backbone of a head-only
    or LoRA text model whose metadata names a local folder (see :meth:`FineTuner.load`).

    Raises:
        ArtifactError: the folder is unsafe or malformed; the message names the file and field.
    """
    folder, meta = open_model(path)
    kind = meta.get("kind", "text")
    if kind == "text" and meta.get("task") == "recommendation":  # recommenders were saved without a kind
        kind = "recommender"
    loader: Any = None
    if kind == "image":
        from tunesmith.vision import ImageFineTuner

        loader = ImageFineTuner.load
    elif kind == "tabular":
        from tunesmith.tabular import TabularFineTuner

        loader = TabularFineTuner.load
    elif kind == "recommender":
        from tunesmith.recsys.recommender import Recommender

        loader = Recommender.load
    if loader is None:
        return FineTuner._from_opened(folder, meta, backbone=backbone)
    import inspect

    if backbone is not None:
        if "backbone" not in inspect.signature(loader).parameters:
            raise ConfigError(
                f"backbone= applies to text models; this folder holds a {kind} model",
                key="backbone",
                hint="Leave backbone out for this model",
            )
        return loader(folder, backbone=backbone)
    return loader(folder)
