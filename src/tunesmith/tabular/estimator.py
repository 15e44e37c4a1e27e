"""``TabularFineTuner``: gradient-boosted trees and a neural net on table rows, the scikit-learn way.

The constructor only stores settings; ``fit`` learns; learned state ends in ``_``;
``get_params``/``set_params``/``sklearn.base.clone`` work. ``fit`` trains LightGBM and a
small neural net on the same features and keeps the one (or their average) that scores best
on validation rows. Continuing from an earlier saved model (``init_model``) is the tabular form
of fine-tuning: the trees grow on from the old booster and the net starts from its old weights.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from tunesmith.data.io import read_table
from tunesmith.data.schema import (
    ROW_COLUMN,
    TASKS,
    Schema,
    Task,
    _infer_task,
    column_role,
    did_you_mean,
    missing_mask,
    require_column,
    sorted_labels,
)
from tunesmith.data.split import split_frame
from tunesmith.data.validate import ROW_INDEX, encode_target, row_numbers
from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError
from tunesmith.evaluate.metrics import compute_metrics
from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json, atomic_write_text, json_safe, save_tensors
from tunesmith.runs.trust import SafeFolder, run_isolated, signal_name
from tunesmith.tabular.neural import TabularNet, net_spec, predict_outputs, train_tabular_net
from tunesmith.tabular.preprocess import TabularFeatures, TabularPreprocessor

__all__ = [
    "FORMAT_VERSION",
    "MAX_LIGHTGBM_BYTES",
    "MODEL_CHOICES",
    "TabularFineTuner",
    "check_lightgbm_text",
    "load_lightgbm",
]

FORMAT_VERSION = 1
KIND = "tabular"
MODEL_CHOICES = ("auto", "lightgbm", "neural", "ensemble")
LIGHTGBM_FILE = "lightgbm.txt"
_MARKER = "tunesmith.tabular.marker"
DataLike = Any  # a file path or a DataFrame


def _restore_labels(labels: Sequence[str], values: Sequence[Any]) -> np.ndarray:
    from tunesmith.estimator import _restore_label_values

    return _restore_label_values(labels, values)


def _label_values(labels: Sequence[str], original: pd.Series) -> list[Any]:
    from tunesmith.estimator import FineTuner

    return FineTuner._label_values(labels, original)


def _selection_key(task: str, metrics: dict[str, Any]) -> tuple[float, float]:
    """Larger is better: (accuracy, -log loss) for classification, (-MAE, 0) for regression."""
    if task == "regression":
        mae = metrics.get("mae")
        return (-float(mae) if mae is not None else -math.inf, 0.0)
    acc = metrics.get("accuracy")
    loss = metrics.get("log_loss")
    return (
        float(acc) if acc is not None else -math.inf,
        -float(loss) if loss is not None else -math.inf,
    )


class TabularFineTuner:
    """Fit LightGBM, a neural net, or their average on table rows (numbers, categories, texts).

    Parameters
    ----------
    target:
        The column to predict (required by ``fit``, unless ``init_model`` gives one).
    task:
        ``"auto"`` (inferred from the target: strings and small sets of integers are classes,
        anything else regression), ``"binary"``, ``"multiclass"`` or ``"regression"``.
    model:
        ``"auto"`` trains both and keeps whichever of LightGBM, the net and their
        probability average scores best on validation (classification: accuracy, ties broken
        by log loss; regression: MAE); ``"lightgbm"``, ``"neural"`` or ``"ensemble"`` force one.
    numeric_columns, categorical_columns, text_columns:
        The feature columns of each role; ``None`` infers them
        (:func:`~tunesmith.data.schema.column_role`; ID-like, date and empty columns are ignored).
    ignore_columns:
        Columns to leave out.
    text_backbone, text_dims:
        Frozen encoder for text columns and the PCA components kept per text column.
    min_count:
        A category seen fewer times in training joins "unknown" (one shared code).
    valid_size, seed:
        Share of rows held out (stratified) for validation when ``fit`` gets no ``valid``; seed
        of the split, LightGBM and the net.
    n_estimators, learning_rate, num_leaves, min_child_samples, early_stopping_rounds:
        LightGBM settings; trees stop growing after ``early_stopping_rounds`` rounds without a
        better validation loss.
    refit_full:
        After choosing the number of trees on validation, retrain LightGBM on train +
        validation with that number scaled by the row ratio (AutoGluon's ``refit_full``).
    epochs, batch_size, lr, weight_decay, dropout, hidden, patience:
        Neural net settings (AdamW, one-cycle schedule, early stopping on validation loss).
    init_model:
        Folder of an earlier saved ``TabularFineTuner`` to continue from: its preprocessor is
        reused, LightGBM adds trees to its booster and the net starts from its weights. Its
        task, columns and labels must match the new data.
    progress:
        Show progress bars while embedding many texts.
    """

    # learned state, set by fit or load (declared here for type checkers; absent until then)
    schema_: Schema | None
    preprocessor_: TabularPreprocessor | None
    booster_: Any
    net_: TabularNet | None
    classes_: np.ndarray | None
    label_values_: list[Any]
    n_outputs_: int
    target_scaling_: dict[str, float] | None
    candidates_: dict[str, dict[str, Any]]
    chosen_: str
    test_metrics_: dict[str, Any] | None
    training_info_: dict[str, Any]
    data_info_: dict[str, Any]
    model_path_: Path | None

    def __init__(
        self,
        *,
        target: str | None = None,
        task: str = "auto",
        model: str = "auto",
        numeric_columns: Sequence[str] | None = None,
        categorical_columns: Sequence[str] | None = None,
        text_columns: Sequence[str] | None = None,
        ignore_columns: Sequence[str] = (),
        text_backbone: str = "minilm-l6",
        text_dims: int = 32,
        min_count: int = 1,
        valid_size: float = 0.1,
        seed: int = 0,
        n_estimators: int = 2000,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        early_stopping_rounds: int = 100,
        refit_full: bool = True,
        epochs: int = 50,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        dropout: float = 0.1,
        hidden: Sequence[int] = (256, 128),
        patience: int = 5,
        init_model: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.target = target
        self.task = task
        self.model = model
        self.numeric_columns = numeric_columns
        self.categorical_columns = categorical_columns
        self.text_columns = text_columns
        self.ignore_columns = ignore_columns
        self.text_backbone = text_backbone
        self.text_dims = text_dims
        self.valid_size = valid_size
        self.seed = seed
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.early_stopping_rounds = early_stopping_rounds
        self.refit_full = refit_full
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.hidden = hidden
        self.patience = patience
        self.init_model = init_model
        self.progress = progress
        self.min_count = min_count

    # --- scikit-learn estimator protocol -----------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every setting, as passed or defaulted (the estimator protocol)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> TabularFineTuner:
        """Change settings; an unknown name is a :class:`ConfigError`."""
        names = self._param_names()
        for key in params:
            if key not in names:
                raise ConfigError(f"unknown setting {key!r}", key=key, hint=did_you_mean(key, names))
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        shown = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k))
        return f"TabularFineTuner({shown})"

    def _check_params(self) -> None:
        if self.model not in MODEL_CHOICES:
            raise ConfigError(
                f"unknown model {self.model!r}", key="model", hint=f"Use one of: {', '.join(MODEL_CHOICES)}"
            )
        if self.task != "auto" and self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}", key="task", hint=f"Use one of: auto, {', '.join(TASKS)}")
        if not 0.0 < float(self.valid_size) < 1.0:
            raise ConfigError(f"valid_size must be above 0 and below 1, got {self.valid_size}", key="valid_size")
        for key in ("n_estimators", "num_leaves", "min_child_samples", "early_stopping_rounds", "epochs"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}", key=key)
        if int(self.batch_size) < 1 or int(self.patience) < 1 or int(self.text_dims) < 1:
            raise ConfigError("batch_size, patience and text_dims must be at least 1", key="batch_size")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}", key="dropout")

    # --- data ----------------------------------------------------------------------------

    @staticmethod
    def _read(X: DataLike, role: str) -> tuple[pd.DataFrame, str | None]:
        if isinstance(X, (str, os.PathLike)):
            return read_table(X), str(X)
        if isinstance(X, pd.DataFrame):
            return X, None
        raise DataError(f"{role} must be a file path or a pandas DataFrame, got {type(X).__name__}")

    @staticmethod
    def _with_rows(df: pd.DataFrame) -> pd.DataFrame:
        """A copy carrying 1-based data rows, so errors name the user's row after any filtering."""
        out = df.copy()
        rows = row_numbers(out)
        out[ROW_COLUMN] = rows
        out.index = pd.Index(rows, name=ROW_INDEX)
        return out

    def _drop_missing_target(self, df: pd.DataFrame, target: str, file: str | None, what: str) -> pd.DataFrame:
        require_column(df, target, "target", file)
        missing = missing_mask(df[target]).to_numpy(dtype=bool)
        info = self.data_info_.setdefault(what, {})
        info["rows_in"] = len(df)
        info["dropped_missing_target"] = int(missing.sum())
        info["dropped_example_rows"] = row_numbers(df)[missing][:5].tolist()
        out = df.loc[~missing]
        if len(out) == 0:
            raise DataError(f"every row of the {what} data has a missing target", file=file, column=target)
        return out

    def _infer_schema(self, df: pd.DataFrame, target: str, file: str | None, *, task: str | None = None) -> Schema:
        """Roles of the columns and the task (``task`` overrides the setting); explicit column lists win."""
        for col in self.ignore_columns:
            require_column(df, col, "ignored", file)
        given = {
            "numeric": self.numeric_columns,
            "categorical": self.categorical_columns,
            "text": self.text_columns,
        }
        roles: dict[str, list[str]] = {k: [str(c) for c in v] if v is not None else [] for k, v in given.items()}
        claimed = {c for cols in roles.values() for c in cols}
        for col in claimed:
            require_column(df, col, "feature", file)
            if col == target:
                raise DataError("the target column cannot also be a feature", file=file, column=col)
        skip = {target, ROW_COLUMN, *map(str, self.ignore_columns), *claimed}
        ignored = [str(c) for c in self.ignore_columns]
        for col in df.columns:
            name = str(col)
            if name in skip:
                continue
            role = column_role(df[col], name)
            if role == "ignore" or given[role] is not None:
                ignored.append(name)
            else:
                roles[role].append(name)
        if not any(roles.values()):
            raise DataError("no feature columns found", file=file, hint="Name them with numeric_columns=... etc.")

        y = df[target]
        present = y[~missing_mask(y)]
        wanted = task if task is not None else self.task
        resolved = cast(Task, wanted) if wanted != "auto" else _infer_task(y)
        labels: tuple[str, ...] | None = None
        if resolved != "regression":
            labels = sorted_labels(present.tolist())
            if len(labels) < 2 or (resolved == "binary" and len(labels) != 2):
                raise DataError(
                    f"target column {target!r} has {len(labels)} class(es); task {resolved!r} needs "
                    + ("exactly 2" if resolved == "binary" else "2 or more"),
                    file=file,
                    column=target,
                )
        return Schema(
            target=target,
            task=resolved,
            text_columns=tuple(roles["text"]),
            numeric_columns=tuple(roles["numeric"]),
            categorical_columns=tuple(roles["categorical"]),
            labels=labels,
            ignored_columns=tuple(ignored),
        )

    def _check_compatible(self, old: TabularFineTuner, df: pd.DataFrame, file: str | None) -> Schema:
        """The earlier model's schema, after checking that the new data fits it."""
        assert old.schema_ is not None
        where = str(self.init_model)
        schema = old.schema_
        missing = [c for c in (schema.target, *schema.feature_columns) if c not in df.columns]
        if missing:
            raise ArtifactError(
                f"the new data lacks column(s) {', '.join(map(repr, missing))} of the earlier model",
                path=where,
                hint="Continue training only on data with the same columns",
            )
        if self.task != "auto" and self.task != schema.task:
            raise ArtifactError(
                f"task {self.task!r} differs from the earlier model's {schema.task!r}",
                path=where,
                hint="Leave task on auto to continue the earlier model's task",
            )
        # the earlier task, not one inferred afresh: a small new sample can look like another task;
        # binary is read as multiclass here so that a third label is reported as an unknown label
        fresh = self._infer_schema(
            df, schema.target, file, task="multiclass" if schema.task == "binary" else schema.task
        )
        for role in ("text_columns", "numeric_columns", "categorical_columns"):
            mine, theirs = set(getattr(fresh, role)), set(getattr(schema, role))
            # inference on a small new sample may see roles differently; only new columns matter
            extra = mine - set(schema.feature_columns) - set(schema.ignored_columns)
            if (self.text_columns, self.numeric_columns, self.categorical_columns) != (None, None, None):
                extra |= mine ^ theirs
            if extra:
                raise ArtifactError(
                    f"column(s) {', '.join(map(repr, sorted(extra)))} differ from the earlier model's "
                    f"{role.replace('_', ' ')}",
                    path=where,
                    hint="Continue training only on data with the same columns, or drop the extras (ignore_columns)",
                )
        if schema.labels is not None:
            new = set(fresh.labels or ())
            unknown = sorted(new - set(schema.labels))
            if unknown:
                raise ArtifactError(
                    f"the new data has label(s) {', '.join(map(repr, unknown))} the earlier model never saw",
                    path=where,
                    hint="Continuing training cannot add classes; train a new model",
                )
        return schema

    # --- fitting ---------------------------------------------------------------------------

    def fit(self, data: DataLike, *, valid: DataLike | None = None, test: DataLike | None = None) -> TabularFineTuner:
        """Train on ``data`` (a DataFrame or a CSV/Parquet/JSONL path).

        Rows with a missing target are dropped and counted in ``data_info_``. Without
        ``valid``, ``valid_size`` of the rows are held out (stratified for classification).
        With ``test``, every candidate is also scored on it (``candidates_[name]["test"]``)
        and ``test_metrics_`` holds the chosen one's scores.
        """
        self._check_params()
        started = time.perf_counter()
        df, file = self._read(data, "data")
        self.data_info_ = {}
        old: TabularFineTuner | None = None
        if self.init_model is not None:
            old = TabularFineTuner.load(self.init_model)
            assert old.schema_ is not None
            if self.target is not None and self.target != old.schema_.target:
                raise ArtifactError(
                    f"target {self.target!r} differs from the earlier model's {old.schema_.target!r}",
                    path=str(self.init_model),
                )
        target = self.target if self.target is not None else (old.schema_.target if old and old.schema_ else None)
        if target is None:
            raise ConfigError("no target column given", key="target", hint="Pass target='column name'")
        df = self._with_rows(df)
        require_column(df, target, "target", file)
        schema = self._check_compatible(old, df, file) if old is not None else self._infer_schema(df, target, file)
        df = self._drop_missing_target(df, target, file, "train")

        if valid is None:
            split = split_frame(
                df, target=target, task=schema.task, valid_size=float(self.valid_size), test_size=0.0,
                seed=int(self.seed), file=file,
            )  # fmt: skip
            train_df, valid_df = split.train, split.valid
            valid_file = file
            self.data_info_["split"] = {"strategy": split.strategy, "notes": split.notes}
        else:
            vdf, vfile = self._read(valid, "valid")
            train_df, valid_df = df, self._drop_missing_target(self._with_rows(vdf), target, vfile, "valid")
            valid_file = vfile
        test_df: pd.DataFrame | None = None
        test_file: str | None = None
        if test is not None:
            tdf, test_file = self._read(test, "test")
            test_df = self._drop_missing_target(self._with_rows(tdf), target, test_file, "test")
        self.data_info_["rows"] = {
            "train": len(train_df),
            "valid": len(valid_df),
            "test": len(test_df) if test_df is not None else 0,
        }

        self.schema_ = schema
        self.label_values_ = _label_values(schema.labels or (), df[target]) if schema.labels is not None else []
        self.classes_ = _restore_labels(schema.labels, self.label_values_) if schema.labels is not None else None
        self.n_outputs_ = len(schema.labels) if schema.labels is not None else 1

        if old is not None:
            assert old.preprocessor_ is not None
            pre = old.preprocessor_
        else:
            pre = TabularPreprocessor(
                schema.numeric_columns,
                schema.categorical_columns,
                schema.text_columns,
                text_backbone=self.text_backbone,
                text_dims=int(self.text_dims),
                min_count=int(self.min_count),
                progress=bool(self.progress),
            ).fit(train_df, file=file)
        self.preprocessor_ = pre
        y_train = encode_target(train_df[target], schema, file=file)
        y_valid = encode_target(valid_df[target], schema, file=valid_file)
        f_train = pre.encode(train_df, file=file)
        f_valid = pre.encode(valid_df, file=valid_file)
        f_test = pre.encode(test_df, file=test_file) if test_df is not None else None
        y_test = encode_target(test_df[target], schema, file=test_file) if test_df is not None else None

        want_lgb = self.model in ("auto", "lightgbm", "ensemble")
        want_net = self.model in ("auto", "neural", "ensemble")
        self.booster_ = None
        self.net_ = None
        self.training_info_ = {"num_threads": torch.get_num_threads()}
        valid_out: dict[str, np.ndarray] = {}

        if old is not None:
            self.target_scaling_ = old.target_scaling_
        elif schema.task == "regression":
            std = float(np.std(y_train))
            self.target_scaling_ = {"mean": float(np.mean(y_train)), "std": std if std > 1e-12 else 1.0}
        else:
            self.target_scaling_ = None

        if want_lgb:
            init_booster = old.booster_ if old is not None else None
            valid_out["lightgbm"] = self._fit_lightgbm(f_train, y_train, f_valid, y_valid, init_booster)
        if want_net:
            init_net = old.net_ if old is not None else None
            valid_out["neural"] = self._fit_net(f_train, y_train, f_valid, y_valid, init_net)
        if want_lgb and want_net:
            valid_out["ensemble"] = (valid_out["lightgbm"] + valid_out["neural"]) / 2.0

        labels = list(schema.labels or [])
        self.candidates_ = {
            name: {"valid": compute_metrics(schema.task, y_valid, out, labels or None)}
            for name, out in valid_out.items()
        }
        if self.model == "auto":
            self.chosen_ = max(
                self.candidates_, key=lambda n: _selection_key(schema.task, self.candidates_[n]["valid"])
            )
        else:
            self.chosen_ = str(self.model)

        # The network alone needs no trees: refitting them would be wasted work.
        if want_lgb and self.refit_full and self.chosen_ != "neural":
            self._refit_lightgbm(f_train, y_train, f_valid, y_valid)

        self.test_metrics_ = None
        if f_test is not None and y_test is not None:
            for name in self.candidates_:
                out = self._outputs(f_test, name)
                self.candidates_[name]["test"] = compute_metrics(schema.task, y_test, out, labels or None)
            self.test_metrics_ = self.candidates_[self.chosen_]["test"]
        self.training_info_["seconds"] = round(time.perf_counter() - started, 3)
        self.model_path_ = None
        return self

    def _lgb_params(self) -> dict[str, Any]:
        assert self.schema_ is not None
        task = self.schema_.task
        params: dict[str, Any] = {
            "learning_rate": float(self.learning_rate),
            "num_leaves": int(self.num_leaves),
            "min_child_samples": int(self.min_child_samples),
            "seed": int(self.seed),
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
            params.update(objective="multiclass", metric="multi_logloss", num_class=self.n_outputs_)
        return params

    def _lgb_dataset(self, features: TabularFeatures, y: np.ndarray, reference: Any = None) -> Any:
        import lightgbm as lgb

        assert self.preprocessor_ is not None
        # generic names: LightGBM rejects some characters that user column names may hold
        names = [f"f{i}" for i in range(features.raw.shape[1])]
        return lgb.Dataset(
            features.raw,
            label=y,
            feature_name=names,
            categorical_feature=self.preprocessor_.raw_categorical_indices,
            reference=reference,
            params={"verbose": -1, "max_bin": 255},
            free_raw_data=False,
        )

    def _fit_lightgbm(
        self,
        f_train: TabularFeatures,
        y_train: np.ndarray,
        f_valid: TabularFeatures,
        y_valid: np.ndarray,
        init_booster: Any,
    ) -> np.ndarray:
        import lightgbm as lgb

        dtrain = self._lgb_dataset(f_train, y_train)
        dvalid = self._lgb_dataset(f_valid, y_valid, reference=dtrain)
        start = int(init_booster.current_iteration()) if init_booster is not None else 0
        booster = lgb.train(
            self._lgb_params(),
            dtrain,
            num_boost_round=int(self.n_estimators),
            valid_sets=[dvalid],
            valid_names=["valid"],
            init_model=init_booster,
            callbacks=[lgb.early_stopping(int(self.early_stopping_rounds), verbose=False)],
        )
        # best_iteration counts the trees of init_model too
        best_total = int(booster.best_iteration) or int(booster.current_iteration())
        # keep only the best trees, so the saved text and predictions need no iteration argument
        self.booster_ = lgb.Booster(model_str=booster.model_to_string(num_iteration=best_total))
        self.training_info_["lightgbm"] = {
            "init_trees": start,
            "best_iteration": best_total,
            "new_trees": best_total - start,
        }
        return self._outputs(f_valid, "lightgbm")

    def _refit_lightgbm(
        self, f_train: TabularFeatures, y_train: np.ndarray, f_valid: TabularFeatures, y_valid: np.ndarray
    ) -> None:
        import lightgbm as lgb

        info = self.training_info_["lightgbm"]
        n_train, n_valid = len(y_train), len(y_valid)
        rounds = max(1, round(info["new_trees"] * (n_train + n_valid) / n_train))
        full = TabularFeatures(
            numeric=np.concatenate([f_train.numeric, f_valid.numeric]),
            categorical=np.concatenate([f_train.categorical, f_valid.categorical]),
            raw=np.concatenate([f_train.raw, f_valid.raw]),
        )
        init = None
        if info["init_trees"]:
            init = lgb.Booster(model_str=self.booster_.model_to_string(num_iteration=info["init_trees"]))
        booster = lgb.train(
            self._lgb_params(),
            self._lgb_dataset(full, np.concatenate([y_train, y_valid])),
            num_boost_round=rounds,
            init_model=init,
        )
        self.booster_ = lgb.Booster(model_str=booster.model_to_string())
        info["refit_full_rounds"] = rounds

    def _fit_net(
        self,
        f_train: TabularFeatures,
        y_train: np.ndarray,
        f_valid: TabularFeatures,
        y_valid: np.ndarray,
        init_net: TabularNet | None,
    ) -> np.ndarray:
        assert self.preprocessor_ is not None
        pre = self.preprocessor_
        if init_net is not None:
            net = copy.deepcopy(init_net)
        else:
            # seed initialisation without disturbing the caller's global RNG stream
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.seed))
                net = TabularNet(
                    f_train.numeric.shape[1],
                    pre.cardinalities,
                    self.n_outputs_,
                    hidden=tuple(int(h) for h in self.hidden),
                    dropout=float(self.dropout),
                )
        s = self.target_scaling_
        ytr: np.ndarray = y_train
        yva: np.ndarray = y_valid
        if s is not None:
            ytr = (y_train - s["mean"]) / s["std"]
            yva = (y_valid - s["mean"]) / s["std"]
        assert self.schema_ is not None
        result = train_tabular_net(
            net,
            (f_train.numeric, f_train.categorical, ytr),
            (f_valid.numeric, f_valid.categorical, yva),
            task=self.schema_.task,
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            patience=int(self.patience),
            seed=int(self.seed),
        )
        self.net_ = net
        self.training_info_["neural"] = {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "history": result.history,
        }
        return self._outputs(f_valid, "neural")

    # --- prediction ------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if getattr(self, "schema_", None) is None or getattr(self, "preprocessor_", None) is None:
            raise NotFittedError(
                "this TabularFineTuner is not fitted yet", hint="Call fit(...) or TabularFineTuner.load(...) first"
            )

    def _outputs(self, features: TabularFeatures, name: str) -> np.ndarray:
        """Probabilities ``(n, k)`` or values ``(n,)`` of one candidate, in the target's units."""
        assert self.schema_ is not None
        task = self.schema_.task
        if name == "ensemble":
            return (self._outputs(features, "lightgbm") + self._outputs(features, "neural")) / 2.0
        if name == "lightgbm":
            if self.booster_ is None:
                raise ArtifactError("this model holds no LightGBM booster")
            raw = np.asarray(self.booster_.predict(features.raw), dtype=np.float64)
            if task == "binary":
                return np.column_stack([1.0 - raw, raw])
            return raw
        if self.net_ is None:
            raise ArtifactError("this model holds no neural net")
        out = predict_outputs(self.net_, features.numeric, features.categorical).astype(np.float64)
        if task == "regression":
            s = self.target_scaling_ or {"mean": 0.0, "std": 1.0}
            return out[:, 0] * s["std"] + s["mean"]
        return np.asarray(torch.softmax(torch.as_tensor(out), dim=-1).numpy(), dtype=np.float64)

    def _features(self, X: DataLike) -> tuple[TabularFeatures, pd.DataFrame, str | None]:
        self._check_fitted()
        assert self.preprocessor_ is not None
        df, file = self._read(X, "X")
        df = self._with_rows(df)
        return self.preprocessor_.encode(df, file=file), df, file

    def predict_proba(self, X: DataLike) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, columns in the order of ``classes_``."""
        self._check_fitted()
        assert self.schema_ is not None
        if self.schema_.task == "regression":
            raise ConfigError("predict_proba is for classification; this model does regression", key="task")
        features, _, _ = self._features(X)
        return self._outputs(features, self.chosen_)

    def predict(self, X: DataLike) -> np.ndarray:
        """Predicted labels (in the target's own type), or values for regression.

        ``X`` is a DataFrame or a file path holding the feature columns (extra columns are
        ignored; a missing one is a :class:`DataError` naming it).
        """
        self._check_fitted()
        assert self.schema_ is not None
        features, _, _ = self._features(X)
        out = self._outputs(features, self.chosen_)
        if self.schema_.task == "regression":
            return out
        assert self.classes_ is not None
        return self.classes_[out.argmax(axis=1)]

    def evaluate(self, X: DataLike, y: Any = None, *, target: str | None = None) -> dict[str, Any]:
        """Metrics (:func:`~tunesmith.evaluate.metrics.compute_metrics`) on labeled rows.

        Labels come from ``y`` or else from the target column of ``X`` (``target`` names it when
        it differs from training's); rows with a missing
        target are dropped and counted in ``"dropped"``; a label never seen in training is a
        :class:`DataError` naming its row.
        """
        self._check_fitted()
        assert self.schema_ is not None
        schema = self.schema_
        df, file = self._read(X, "X")
        df = self._with_rows(df)
        if target is not None and target != schema.target and y is None:
            require_column(df, target, "target", file)
            df[schema.target] = df[target]
        if y is not None:
            if len(y) != len(df):
                raise DataError(f"X has {len(df)} rows but y has {len(y)} values", file=file)
            df[schema.target] = list(y)
        require_column(df, schema.target, "target", file)
        missing = missing_mask(df[schema.target]).to_numpy(dtype=bool)
        df = df.loc[~missing]
        if len(df) == 0:
            raise DataError("every row has a missing target", file=file, column=schema.target)
        y_true = encode_target(df[schema.target], schema, file=file)
        assert self.preprocessor_ is not None
        out = self._outputs(self.preprocessor_.encode(df, file=file), self.chosen_)
        metrics = compute_metrics(schema.task, y_true, out, list(schema.labels) if schema.labels else None)
        metrics["dropped"] = {"missing_target": int(missing.sum())}
        return metrics

    def score(self, X: DataLike, y: Any = None) -> float:
        """Accuracy for classification, R² for regression (the scikit-learn convention)."""
        metrics = self.evaluate(X, y)
        assert self.schema_ is not None
        value = metrics["r2" if self.schema_.task == "regression" else "accuracy"]
        return float(value) if value is not None else float("nan")

    # --- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model folder atomically: ``model.safetensors``, ``lightgbm.txt``, ``tunesmith.json``.

        ``model.safetensors`` holds the net's weights and the text PCA (and always a marker
        tensor, so the file exists even for a LightGBM-only model); ``lightgbm.txt`` is
        LightGBM's own text format, which loads without running code.
        """
        self._check_fitted()
        assert self.schema_ is not None and self.preprocessor_ is not None
        pre = self.preprocessor_
        tensors: dict[str, torch.Tensor] = {_MARKER: torch.zeros(1)}
        tensors.update(pre.tensors())
        net_info: dict[str, Any] | None = None
        if self.net_ is not None:
            tensors.update({f"net.{k}": v for k, v in self.net_.state_dict().items()})
            net_info = {
                "n_numeric": self.net_.n_numeric,
                "cardinalities": self.net_.cardinalities,
                "n_outputs": self.n_outputs_,
                "hidden": [m.out_features for m in self.net_.mlp if isinstance(m, torch.nn.Linear)][:-1],
                "dropout": next((m.p for m in self.net_.mlp if isinstance(m, torch.nn.Dropout)), 0.0),
                "norm": self._net_norm(self.net_),
            }
        schema = self.schema_
        meta = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "tunesmith_version": _version(),
            "task": schema.task,
            "target": schema.target,
            "labels": list(schema.labels) if schema.labels is not None else None,
            "label_values": self.label_values_,
            "schema": schema.to_dict(),
            "columns": {
                "text": list(schema.text_columns),
                "numeric": list(schema.numeric_columns),
                "categorical": list(schema.categorical_columns),
                "ignored": list(schema.ignored_columns),
            },
            "preprocessor": pre.to_dict(),
            "text_backbone": (
                {"name": pre.text_backbone, "fingerprint": pre.backbone_fingerprint} if pre.text_columns else None
            ),
            "chosen": self.chosen_,
            "candidates": self.candidates_,
            "metrics": self.test_metrics_,
            "lightgbm": LIGHTGBM_FILE if self.booster_ is not None else None,
            "net": net_info,
            "target_scaling": self.target_scaling_,
            "n_outputs": self.n_outputs_,
            "training": self.training_info_,
            "data": self.data_info_,
            "config": self.get_params(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        final = Path(path)
        with AtomicDirectory(final, overwrite=overwrite) as tmp:
            save_tensors(Path(tmp) / "model.safetensors", tensors, {"format": "tunesmith", "kind": KIND})
            if self.booster_ is not None:
                atomic_write_text(Path(tmp) / LIGHTGBM_FILE, self.booster_.model_to_string())
            atomic_write_json(Path(tmp) / "tunesmith.json", json_safe(meta))
            (Path(tmp) / "card.md").write_text(self._card())
        self.model_path_ = final
        return final

    def _card(self) -> str:
        """The model card: the chosen model's test metrics beside every other candidate's."""
        from tunesmith.runs.report import render_report

        assert self.schema_ is not None
        split = "test" if any(c.get("test") for c in self.candidates_.values()) else "valid"
        others = {
            name: {**(c.get(split) or {}), "model": f"{name} (candidate, {split} split)"}
            for name, c in self.candidates_.items()
            if name != self.chosen_
        }
        mine = self.test_metrics_ or (self.candidates_.get(self.chosen_) or {}).get("valid")
        return render_report(
            {
                "title": f"Tabular model ({self.chosen_}, chosen on validation)",
                "task": self.schema_.task,
                "backbone": self.preprocessor_.text_backbone
                if self.preprocessor_ and self.preprocessor_.text_columns
                else None,
                "strategy": self.chosen_,
                "labels": list(self.schema_.labels or []),
                "metrics": mine,
                "baselines": others,
                "config": self.get_params(),
                "data": {"rows": (self.data_info_ or {}).get("rows")},
            }
        )

    @staticmethod
    def _net_norm(net: TabularNet) -> str | None:
        for m in net.mlp:
            if isinstance(m, torch.nn.BatchNorm1d):
                return "batch"
            if isinstance(m, torch.nn.LayerNorm):
                return "layer"
        return None

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, backbone: str | None = None) -> TabularFineTuner:
        """Load a folder written by :meth:`save`.

        The folder is opened through :func:`tunesmith.runs.trust.open_model` (no pickles, code,
        links or files outside it), every field of ``tunesmith.json`` is checked, the network's
        shapes are compared with the safetensors header before anything is built, and
        ``lightgbm.txt`` is loaded only after a child process loaded it without crashing
        (:func:`load_lightgbm`). A text backbone is opened only by registered name: a model
        whose metadata names a path needs ``backbone`` (a name or a folder you trust); its
        weights must still be the ones the model was trained with.

        Raises:
            ArtifactError: the folder is unsafe, of another kind or version, malformed, or its
                text backbone's weights differ from the training ones; the message names the
                file and field.
        """
        from tunesmith.runs.trust import malformed, open_model

        folder, meta = open_model(path)
        file = folder.root / "tunesmith.json"
        kind = meta.get("kind", "text")
        if kind != KIND:
            raise ArtifactError(
                f"this is not a tabular model (kind {kind!r})",
                path=folder.root,
                hint="Load text models with tunesmith.FineTuner.load",
            )
        version = meta.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ArtifactError(
                f"model format version {version!r:.40} is not supported (expected {FORMAT_VERSION})",
                path=file,
                hint="Re-save the model with this tunesmith version",
            )
        with malformed(file):
            est = cls._from_folder(folder, meta, backbone)
        # Outside the net above: a backbone the caller named and cannot be found is the caller's
        # ConfigError, not a malformed file.
        assert est.preprocessor_ is not None
        est.preprocessor_.check_backbone(folder.root)
        est.model_path_ = Path(path)
        return est

    @classmethod
    def _from_folder(cls, folder: SafeFolder, meta: dict[str, Any], backbone: str | None) -> TabularFineTuner:
        """The estimator of an opened folder; every field is checked before it is used."""
        from tunesmith.backbones import is_registered
        from tunesmith.runs.trust import check_state_shapes, field, meta_shapes

        file = folder.root / "tunesmith.json"
        weights = folder.root / "model.safetensors"
        schema = _schema_from_meta(meta, file)
        chosen = field(meta, "chosen", str, file=file, choices=("lightgbm", "neural", "ensemble"))
        n_outputs = field(meta, "n_outputs", int, file=file, low=1, high=MAX_OUTPUTS)
        labels = schema.labels
        if n_outputs != (len(labels) if labels is not None else 1):
            raise ArtifactError(
                f"field 'n_outputs' is {n_outputs} but the schema has {len(labels) if labels else 1} output(s)",
                path=file,
            )
        # Regression has no labels, so no label values either.
        values = field(meta, "label_values", list, file=file, default=[]) if labels is not None else []
        if (
            labels is not None
            and values
            and (len(values) != len(labels) or not all(isinstance(v, (str, int, float, bool)) for v in values))
        ):
            raise ArtifactError(
                f"field 'label_values' must hold one string, number or boolean per label ({len(labels)})", path=file
            )
        scaling = field(meta, "target_scaling", dict, file=file, default=None)
        if scaling is not None:
            scaling = {
                "mean": float(field(meta, "target_scaling.mean", float, file=file)),
                "std": float(field(meta, "target_scaling.std", float, file=file, low=1e-300)),
            }
            if not all(math.isfinite(v) for v in scaling.values()):
                raise ArtifactError("field 'target_scaling' must hold finite numbers", path=file)

        pre = TabularPreprocessor._from_json(
            field(meta, "preprocessor", dict, file=file), file=file, name="preprocessor"
        )
        if (pre.numeric_columns, pre.categorical_columns, pre.text_columns) != (
            schema.numeric_columns,
            schema.categorical_columns,
            schema.text_columns,
        ):
            raise ArtifactError("fields 'schema' and 'preprocessor' name different columns", path=file)
        if pre.text_columns:
            if backbone is not None:
                pre.text_backbone = backbone
            elif not is_registered(pre.text_backbone):
                # A path in a loaded folder's metadata would make tunesmith open whatever it names.
                raise ArtifactError(
                    f"field 'preprocessor.text_backbone' names {pre.text_backbone!r:.80}, which is not a "
                    "registered backbone; tunesmith never opens a path named by a loaded folder",
                    path=file,
                    hint="Pass the text backbone yourself: TabularFineTuner.load(folder, backbone=...)",
                )

        header = folder.header("model.safetensors")
        expected: dict[str, tuple[int, ...]] = {_MARKER: tuple(header[_MARKER].shape) if _MARKER in header else (1,)}
        expected.update(pre.pca_shapes(header, file=weights))
        net_info = field(meta, "net", dict, file=file, default=None)
        spec: dict[str, Any] | None = None
        if net_info is not None:
            spec = net_spec(net_info, file=file)
            width = len(pre.numeric_columns) + len(pre.indicator_columns)
            width += sum(expected[f"preprocess.pca.{i}.components"][0] for i in range(len(pre.text_columns)))
            if spec["n_numeric"] != width or spec["cardinalities"] != pre.cardinalities:
                raise ArtifactError(
                    "field 'net' describes inputs that differ from the preprocessor's features", path=file
                )
            if spec["n_outputs"] != n_outputs:
                raise ArtifactError(f"field 'net.n_outputs' is {spec['n_outputs']}, expected {n_outputs}", path=file)
            built = spec
            # Built on the meta device first: shapes only, compared with the header below.
            expected.update({f"net.{k}": v for k, v in meta_shapes(lambda: _build_net(built)).items()})
        check_state_shapes(expected, header, file=weights)
        tensors = folder.tensors("model.safetensors", expected=expected)
        pre.attach_pca(tensors, file=weights)
        pre.check_widths(file=file)

        config = field(meta, "config", dict, file=file, default={})
        params = {k: v for k, v in config.items() if k in cls._param_names()}
        for key in ("hidden", "ignore_columns"):
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        if pre.text_columns:
            params["text_backbone"] = pre.text_backbone
        est = cls(**params)
        est.schema_ = schema
        est.preprocessor_ = pre
        est.label_values_ = list(values)
        est.classes_ = _restore_labels(labels, est.label_values_) if labels is not None else None
        est.n_outputs_ = n_outputs
        est.target_scaling_ = scaling
        est.chosen_ = chosen
        # Reports only: shown, never computed on; a value of the wrong shape is dropped.
        est.candidates_ = _dict_or(meta.get("candidates"), {})
        est.test_metrics_ = _dict_or(meta.get("metrics"), None)
        est.training_info_ = _dict_or(meta.get("training"), {})
        est.data_info_ = _dict_or(meta.get("data"), {})
        est.booster_ = None
        est.net_ = None
        lgb_file = field(meta, "lightgbm", (str, type(None)), file=file, default=None)
        if lgb_file:
            est.booster_ = load_lightgbm(
                folder,
                lgb_file,
                n_features=len(pre.raw_feature_names),
                n_classes=n_outputs,
                task=schema.task,
            )
        if spec is not None:
            net = _build_net(spec)
            net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
            net.eval()
            est.net_ = net
        needed = {"lightgbm": est.booster_, "neural": est.net_}
        for part in ("lightgbm", "neural") if chosen == "ensemble" else (chosen,):
            if needed.get(part) is None:
                raise ArtifactError(f"the chosen model {chosen!r} is missing from the folder", path=folder.root)
        return est


MAX_OUTPUTS = 100_000
"""Most classes a loaded tabular model may declare."""


def _build_net(spec: dict[str, Any]) -> TabularNet:
    return TabularNet(
        spec["n_numeric"],
        spec["cardinalities"],
        spec["n_outputs"],
        hidden=spec["hidden"],
        dropout=spec["dropout"],
        norm=spec["norm"],
    )


def _dict_or(value: Any, default: Any) -> Any:
    return value if isinstance(value, dict) else default


def _schema_from_meta(meta: dict[str, Any], file: Path) -> Schema:
    """The saved schema, every field checked (names are distinct strings, labels fit the task)."""
    from tunesmith.runs.trust import field

    task = field(meta, "schema.task", str, file=file, choices=TASKS)
    if field(meta, "task", str, file=file, default=task) != task:
        raise ArtifactError("fields 'task' and 'schema.task' disagree", path=file)

    def names(key: str, default: Any = None) -> tuple[str, ...]:
        value = field(meta, f"schema.{key}", list, file=file, **({} if default is None else {"default": default}))
        if not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
            raise ArtifactError(f"field 'schema.{key}' must be a list of distinct strings", path=file)
        return tuple(value)

    labels = field(meta, "schema.labels", (list, type(None)), file=file, default=None)
    if labels is not None:
        if not all(isinstance(v, str) for v in labels) or len(set(labels)) != len(labels):
            raise ArtifactError("field 'schema.labels' must be a list of distinct strings", path=file)
        if len(labels) < 2 or (task == "binary" and len(labels) != 2) or task == "regression":
            raise ArtifactError(f"field 'schema.labels' holds {len(labels)} labels for a {task} model", path=file)
    elif task != "regression":
        raise ArtifactError(f"field 'schema.labels' is missing for a {task} model", path=file)
    return Schema(
        target=field(meta, "schema.target", str, file=file),
        task=cast(Task, task),
        text_columns=names("text_columns"),
        numeric_columns=names("numeric_columns", []),
        categorical_columns=names("categorical_columns", []),
        labels=tuple(labels) if labels is not None else None,
        ignored_columns=names("ignored_columns", []),
    )


# --- LightGBM model files from loaded folders ---------------------------------------------------

MAX_LIGHTGBM_BYTES = 256 * 1024 * 1024
"""Largest ``lightgbm.txt`` loaded (thousands of trees of hundreds of leaves fit well within it)."""

_MAX_LEAVES = 131_072  # LightGBM's own upper limit on num_leaves
_TREE_KEYS = frozenset(
    {
        "num_leaves", "num_cat", "split_feature", "split_gain", "threshold", "decision_type", "left_child",
        "right_child", "leaf_value", "leaf_weight", "leaf_count", "internal_value", "internal_weight",
        "internal_count", "cat_boundaries", "cat_threshold", "is_linear", "shrinkage",
    }
)  # fmt: skip
_OBJECTIVES = {"binary": ("binary",), "multiclass": ("multiclass", "multiclassova"), "regression": ("regression",)}

# Loads the model text from stdin through LightGBM's C library and predicts a few extreme and
# random rows: run in a child process, because LightGBM aborts or crashes the whole process on
# some malformed files. It calls what the Python package calls (load, loaded parameters,
# predict), through ctypes: importing the package would import scikit-learn and pandas, ten
# times the cost of the check itself.
_LGB_CHILD = """
import ctypes, json, random, sys
lib = ctypes.CDLL(sys.argv[1])
lib.LGBM_GetLastError.restype = ctypes.c_char_p
def fail(what):
    said = (lib.LGBM_GetLastError() or b"").decode("utf-8", "replace").splitlines() or [what]
    print("[Fatal] " + said[0], file=sys.stderr)
    sys.exit(3)
text = sys.stdin.buffer.read()
handle, iterations = ctypes.c_void_p(), ctypes.c_int(0)
if lib.LGBM_BoosterLoadModelFromString(ctypes.c_char_p(text), ctypes.byref(iterations), ctypes.byref(handle)):
    fail("cannot load")
n_features, n_classes = ctypes.c_int(0), ctypes.c_int(0)
if lib.LGBM_BoosterGetNumFeature(handle, ctypes.byref(n_features)):
    fail("no feature count")
if lib.LGBM_BoosterGetNumClasses(handle, ctypes.byref(n_classes)):
    fail("no class count")
if hasattr(lib, "LGBM_BoosterGetLoadedParam"):
    size = ctypes.c_int64(0)
    buffer = ctypes.create_string_buffer(1 << 16)
    for _ in range(2):
        if lib.LGBM_BoosterGetLoadedParam(handle, ctypes.c_int64(len(buffer)), ctypes.byref(size), buffer):
            fail("no parameters")
        if size.value <= len(buffer):
            break
        buffer = ctypes.create_string_buffer(size.value)
    try:
        json.loads(buffer.value.decode("utf-8"))
    except ValueError:
        fail("its parameters do not read back as JSON")
f = n_features.value
rng = random.Random(0)
rows = [[0.0] * f, [float("nan")] * f, [1e30] * f, [-1e30] * f]
if f <= 10000:
    rows += [[rng.gauss(0.0, 10.0) for _ in range(f)] for _ in range(32)]
    rows += [[float(rng.randint(-1, 63)) for _ in range(f)] for _ in range(32)]
flat = [x for row in rows for x in row]
data = (ctypes.c_double * max(1, len(flat)))(*flat)
out = (ctypes.c_double * (len(rows) * max(1, n_classes.value)))()
out_len = ctypes.c_int64(0)
if lib.LGBM_BoosterPredictForMat(
    handle, data, ctypes.c_int(1), ctypes.c_int32(len(rows)), ctypes.c_int32(f), ctypes.c_int(1), ctypes.c_int(0),
    ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_char_p(b"num_threads=1"), ctypes.byref(out_len), out,
):
    fail("cannot predict")
lib.LGBM_BoosterFree(handle)
"""


def _lightgbm_library() -> str:
    """Path of LightGBM's shared library, the one this process's ``lightgbm`` package uses."""
    import lightgbm as lgb

    name = getattr(getattr(lgb.basic, "_LIB", None), "_name", None)
    if isinstance(name, str) and os.path.isfile(name):
        return name
    found = sorted((Path(lgb.__file__).parent / "lib").glob("lib_lightgbm.*"))
    if not found:
        raise ArtifactError("cannot find LightGBM's library to check the model with", hint="Reinstall lightgbm")
    return str(found[0])


_verdicts: dict[str, str | None] = {}
_verdict_lock = threading.Lock()


def _lgb_refusal(path: Path, why: str) -> ArtifactError:
    return ArtifactError(
        f"not a usable LightGBM model: {why}",
        path=path,
        hint="The file is damaged or was not written by tunesmith; re-save the model",
    )


def _ints(text: str, count: int, low: int, high: int, what: str, path: Path) -> list[int]:
    parts = text.split()
    if len(parts) != count:
        raise _lgb_refusal(path, f"{what} holds {len(parts)} values, expected {count}")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise _lgb_refusal(path, f"{what} holds a value that is not a whole number") from None
    if values and (min(values) < low or max(values) > high):
        raise _lgb_refusal(path, f"{what} holds a value outside [{low}, {high}]")
    return values


def _count(text: str, count: int, what: str, path: Path) -> None:
    if len(text.split()) != count:
        raise _lgb_refusal(path, f"{what} holds {len(text.split())} values, expected {count}")


def check_lightgbm_text(text: str, *, path: Path, n_features: int, n_classes: int, task: str) -> None:
    """Refuse LightGBM model text that LightGBM itself could not parse safely.

    LightGBM's parser trusts the file: counts, child indices, feature indices and tree offsets
    are used as given, so a damaged or crafted file aborts the process (a ``Log::Fatal`` inside
    its parallel parser) or reads out of bounds. This checks, in Python, everything those
    depend on: the header agrees with the model (``n_features`` inputs, ``n_classes`` trees per
    iteration, the objective of ``task``), ``tree_sizes`` matches the tree blocks byte for
    byte, and every tree has arrays of the lengths its ``num_leaves`` and ``num_cat`` imply,
    feature indices below ``n_features``, children that form one tree, and categorical splits
    within its bitsets. Any failure is an :class:`ArtifactError` naming ``path``.
    """
    if "\x00" in text or "\r" in text:
        raise _lgb_refusal(path, "it holds NUL or carriage-return characters, which LightGBM never writes")
    lines = text.split("\n")
    if not lines or lines[0] != "tree":
        raise _lgb_refusal(path, "it does not start with LightGBM's 'tree' line")
    header: dict[str, str] = {}
    i = 1
    while i < len(lines) and not lines[i].startswith("Tree="):
        line = lines[i]
        if line == "end of trees":
            break
        if "=" in line:
            key, value = line.split("=", 1)
            if key in header:
                raise _lgb_refusal(path, f"the header repeats {key!r}")
            header[key] = value
        elif line not in ("", "average_output"):
            raise _lgb_refusal(path, f"line {i + 1} of the header is not key=value")
        i += 1
    for key in ("version", "num_class", "num_tree_per_iteration", "max_feature_idx", "objective", "feature_names"):
        if key not in header:
            raise _lgb_refusal(path, f"the header lacks {key!r}")
    per_iteration = n_classes if task == "multiclass" else 1
    for key, want in (
        ("num_class", per_iteration),
        ("num_tree_per_iteration", per_iteration),
        ("max_feature_idx", n_features - 1),
    ):
        got = _ints(header[key], 1, -1, 1 << 31, key, path)[0]
        if got != want:
            raise _lgb_refusal(path, f"{key} is {got}, but this model needs {want}")
    if "label_index" in header:
        _ints(header["label_index"], 1, 0, 1 << 31, "label_index", path)
    objective = header["objective"].split(" ")[0]
    if objective not in _OBJECTIVES.get(task, ()):
        raise _lgb_refusal(path, f"its objective {objective!r:.40} does not fit a {task} model")
    _count(header["feature_names"], n_features, "feature_names", path)
    if "feature_infos" in header:
        _count(header["feature_infos"], n_features, "feature_infos", path)

    # Tree blocks: "Tree=k", its key=value lines, blank lines; then "end of trees".
    # Byte offset of each line's start (ASCII, as LightGBM writes it: characters are bytes).
    widths = map(len, lines) if text.isascii() else (len(line.encode("utf-8")) for line in lines)
    offsets = [0, *itertools.accumulate(w + 1 for w in widths)]
    starts: list[int] = []
    while i < len(lines) and lines[i] != "end of trees":
        if lines[i] == "":
            i += 1
            continue
        if lines[i] != f"Tree={len(starts)}":
            raise _lgb_refusal(path, f"line {i + 1} should be 'Tree={len(starts)}'")
        starts.append(i)
        i += 1
        fields: dict[str, str] = {}
        while i < len(lines) and lines[i] != "":
            if "=" not in lines[i]:
                raise _lgb_refusal(path, f"line {i + 1} (tree {len(starts) - 1}) is not key=value")
            key, value = lines[i].split("=", 1)
            if key not in _TREE_KEYS or key in fields:
                raise _lgb_refusal(path, f"tree {len(starts) - 1} has an unknown or repeated field {key!r:.40}")
            fields[key] = value
            i += 1
        _check_tree(fields, len(starts) - 1, n_features, path)
    if i >= len(lines):
        raise _lgb_refusal(path, "it lacks the 'end of trees' line (the file is truncated)")
    if len(starts) % per_iteration:
        raise _lgb_refusal(path, f"it holds {len(starts)} trees, not a multiple of {per_iteration}")
    if "tree_sizes" in header:
        # LightGBM parses trees in parallel at these byte offsets: each must be exact.
        sizes = _ints(header["tree_sizes"], len(starts), 0, 1 << 40, "tree_sizes", path)
        ends = [*starts[1:], i]
        for k, (begin, end) in enumerate(zip(starts, ends, strict=True)):
            if offsets[end] - offsets[begin] != sizes[k]:
                raise _lgb_refusal(
                    path, f"tree_sizes gives tree {k} {sizes[k]} bytes but it has {offsets[end] - offsets[begin]}"
                )
    tail = text.rstrip("\n").rsplit("\n", 1)[-1]
    if tail.startswith("pandas_categorical:"):
        try:
            json.loads(tail[len("pandas_categorical:") :])
        except ValueError:
            raise _lgb_refusal(path, "its pandas_categorical line is not JSON") from None


def _check_tree(fields: dict[str, str], k: int, n_features: int, path: Path) -> None:
    """One tree's arrays: lengths, index ranges, a proper binary tree, categorical bitsets in range."""
    where = f"tree {k}"
    for key in ("num_leaves", "num_cat", "leaf_value"):
        if key not in fields:
            raise _lgb_refusal(path, f"{where} lacks {key}")
    n = _ints(fields["num_leaves"], 1, 1, _MAX_LEAVES, f"{where} num_leaves", path)[0]
    num_cat = _ints(fields["num_cat"], 1, 0, max(0, n - 1), f"{where} num_cat", path)[0]
    if fields.get("is_linear", "0") != "0":
        raise _lgb_refusal(path, f"{where} is a linear tree, which tunesmith never trains")
    _count(fields["leaf_value"], n, f"{where} leaf_value", path)
    if n == 1:
        return
    for key in ("split_feature", "threshold", "decision_type", "left_child", "right_child"):
        if key not in fields:
            raise _lgb_refusal(path, f"{where} lacks {key}")
    inner = n - 1
    _ints(fields["split_feature"], inner, 0, n_features - 1, f"{where} split_feature", path)
    decision = _ints(fields["decision_type"], inner, 0, 11, f"{where} decision_type", path)
    left = _ints(fields["left_child"], inner, -n, n - 2, f"{where} left_child", path)
    right = _ints(fields["right_child"], inner, -n, n - 2, f"{where} right_child", path)
    for key, count in (
        ("split_gain", inner), ("leaf_weight", n), ("leaf_count", n),
        ("internal_value", inner), ("internal_weight", inner), ("internal_count", inner),
    ):  # fmt: skip
        if key in fields:
            _count(fields[key], count, f"{where} {key}", path)
    # Every node but the root, and every leaf, is the child of exactly one node, and every child
    # has a higher index than its parent (LightGBM numbers nodes in the order it splits): so
    # the arrays form one tree and prediction always walks down to a leaf.
    children = left + right
    if sorted(children) != [*range(-n, 0), *range(1, inner)] or any(
        (a >= 0 and a <= j) or (b >= 0 and b <= j) for j, (a, b) in enumerate(zip(left, right, strict=True))
    ):
        raise _lgb_refusal(path, f"{where}: its child indices do not form a tree")
    thresholds = fields["threshold"].split()
    if len(thresholds) != inner:
        raise _lgb_refusal(path, f"{where} threshold holds {len(thresholds)} values, expected {inner}")
    categorical = [j for j, d in enumerate(decision) if d & 1]
    if not num_cat:
        if categorical:
            raise _lgb_refusal(path, f"{where} has categorical splits but num_cat=0")
        return
    for key in ("cat_boundaries", "cat_threshold"):
        if key not in fields:
            raise _lgb_refusal(path, f"{where} lacks {key}")
    n_words = len(fields["cat_threshold"].split())
    bounds = _ints(fields["cat_boundaries"], num_cat + 1, 0, n_words, f"{where} cat_boundaries", path)
    if bounds[0] != 0 or bounds[-1] != n_words or any(a > b for a, b in itertools.pairwise(bounds)):
        raise _lgb_refusal(path, f"{where}: cat_boundaries do not split cat_threshold")
    _ints(fields["cat_threshold"], n_words, 0, (1 << 32) - 1, f"{where} cat_threshold", path)
    for j in categorical:
        try:
            index = float(thresholds[j])
        except ValueError:
            raise _lgb_refusal(path, f"{where}: a categorical threshold is not a number") from None
        if not (index.is_integer() and 0 <= index < num_cat):
            raise _lgb_refusal(path, f"{where}: a categorical split points outside its {num_cat} bitsets")


def _child_verdict(text: str, digest: str) -> str | None:
    """Why loading ``text`` and predicting with it fails in a child process, or None when it works.

    Cached by the text's SHA-256 for the life of the process, so the same file is checked once.
    """
    with _verdict_lock:
        if digest in _verdicts:
            return _verdicts[digest]
    # The child imports only the standard library and loads the very library file this process uses.
    library = _lightgbm_library()
    timeout = 60.0 + 10.0 * len(text) / (1 << 20)
    run = run_isolated(_LGB_CHILD, [library], text.encode("utf-8"), timeout=timeout, what="loading it")
    verdict = run.failure
    if run.returncode:
        said = [ln for ln in run.stderr.splitlines() if "[Fatal]" in ln]
        detail = said[-1].split("[Fatal]", 1)[1].strip()[:160] if said else ""
        if run.returncode < 0:
            how = f"LightGBM crashed the process that loaded it ({signal_name(run.returncode)})"
        else:
            how = f"LightGBM refused it (exit status {run.returncode})"
        verdict = f"{how}{': ' + detail if detail else ''}"
    with _verdict_lock:
        _verdicts[digest] = verdict
    return verdict


def load_lightgbm(
    folder: SafeFolder, rel: str, *, n_features: int, n_classes: int, task: str, source: str = "tunesmith.json"
) -> Any:
    """A LightGBM booster from the folder's ``rel``, loaded only after it proved harmless.

    The text (at most :data:`MAX_LIGHTGBM_BYTES`) is checked in Python
    (:func:`check_lightgbm_text`), then loaded and run on a few rows in a child process; only
    when that process exits cleanly is it loaded here. A malformed file is an
    :class:`ArtifactError` naming it, never a crashed process.
    """
    import lightgbm as lgb

    path = folder.file(rel, source=source, field_name="lightgbm")
    assert path is not None
    data = folder.read_bytes(rel, limit=MAX_LIGHTGBM_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _lgb_refusal(path, f"it is not UTF-8 text (byte {exc.start})") from None
    check_lightgbm_text(text, path=path, n_features=n_features, n_classes=n_classes, task=task)
    verdict = _child_verdict(text, hashlib.sha256(data).hexdigest())
    if verdict is not None:
        raise _lgb_refusal(path, verdict)
    try:
        booster = lgb.Booster(model_str=text)
    except (lgb.basic.LightGBMError, ValueError, TypeError) as exc:
        raise _lgb_refusal(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if booster.num_feature() != n_features:
        raise _lgb_refusal(path, f"it reads {booster.num_feature()} features, this model has {n_features}")
    return booster


def _version() -> str:
    from tunesmith import __version__

    return __version__
