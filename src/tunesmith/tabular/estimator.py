"""``TabularFineTuner``: gradient-boosted trees and a neural net on table rows, the scikit-learn way.

The constructor only stores and validates settings (:class:`~tunesmith.tabular.settings.TabularConfig`);
``fit`` learns; learned state ends in ``_``; ``get_params``/``set_params``/``sklearn.base.clone``
work. ``fit`` trains LightGBM and a small neural net on the same features and keeps the one
(or their average) that scores best on validation rows. Continuing from an earlier saved model
(``init_model``) is the tabular form of fine-tuning: the trees grow on from the old booster
and the net starts from its old weights; ``refit`` does the same from the model in memory,
on new rows and a replay of old ones, and returns the refitted copy.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.config import validate_settings
from tunesmith.data.io import data_sha256
from tunesmith.data.schema import Schema, label_values, missing_mask, require_column, restore_label_values
from tunesmith.data.split import split_frame
from tunesmith.data.targets import check_target_classes
from tunesmith.data.validate import encode_target, row_numbers
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.estimators import resume as resume_run
from tunesmith.estimators.base import Estimator, FitArguments, fit_arguments, unsupported
from tunesmith.estimators.registry import Kind, register
from tunesmith.evaluate.metrics import compute_metrics
from tunesmith.runs.record import RunRecord
from tunesmith.runs.trust import SafeFolder, open_model
from tunesmith.tabular.bagging import fit_trees
from tunesmith.tabular.boosting import lgb_outputs, refit_lightgbm
from tunesmith.tabular.columns import check_compatible, infer_schema, labeled_frame, read_frame, with_rows
from tunesmith.tabular.folder import finish_record, open_folder, save_folder
from tunesmith.tabular.lightgbm_check import MAX_LIGHTGBM_BYTES, check_lightgbm_text, load_lightgbm
from tunesmith.tabular.neural import TabularNet, fit_net, predict_outputs
from tunesmith.tabular.preprocess import TabularFeatures, TabularPreprocessor
from tunesmith.tabular.refitting import LORA_HINT, refit_tabular
from tunesmith.tabular.refitting import selection_key as _selection_key
from tunesmith.tabular.settings import MODEL_CHOICES, TabularConfig
from tunesmith.train.callbacks import Callback

__all__ = [
    "FORMAT_VERSION",
    "MAX_LIGHTGBM_BYTES",
    "MODEL_CHOICES",
    "TabularConfig",
    "TabularFineTuner",
    "check_lightgbm_text",
    "load_lightgbm",
]

FORMAT_VERSION = 2
"""The ``format_version`` a tabular model is saved with (the one version of every kind); 1 still loads."""

DataLike = Any  # a file path, a DataFrame or a 2-D array


class TabularFineTuner(Estimator):
    """Fit LightGBM, a neural net, or their average on table rows (numbers, categories, texts).

    Every keyword is a setting of :class:`~tunesmith.tabular.settings.TabularConfig`, checked
    here, at construction (a :class:`~tunesmith.errors.ConfigError` names a wrong one).

    Parameters
    ----------
    task:
        ``"auto"`` (inferred from the target: strings and small sets of integers are classes,
        anything else regression), ``"binary"``, ``"multiclass"`` or ``"regression"``.
    model:
        ``"auto"`` trains both and keeps whichever of LightGBM, the net and their
        probability average scores best on validation (classification: ``selection_metric``,
        ties broken by the other of log loss and accuracy; regression: MAE); ``"lightgbm"``,
        ``"neural"`` or ``"ensemble"`` force one.
    selection_metric:
        ``"log_loss"`` (default) or ``"accuracy"``: what ``model="auto"`` (and a refit with
        ``model="auto"``) compares classifiers on. Log loss scores every probability, so it
        tells candidates apart on a few thousand rows where accuracy turns on a handful.
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
        Share of rows held out (stratified) for validation when ``fit`` gets no ``eval_set``;
        seed of the split, LightGBM and the net.
    n_estimators, learning_rate, num_leaves, min_child_samples, early_stopping_rounds:
        LightGBM settings; trees stop growing after ``early_stopping_rounds`` rounds without a
        better validation loss.
    rounds_per_step:
        Boosting rounds that count as one step for the callbacks (see below).
    bagging_folds:
        ``k >= 2`` (default 8): train ``k`` LightGBM boosters on ``k`` folds of train +
        validation, stopped together on their held-out folds' mean loss, and average them into
        one booster (:mod:`tunesmith.tabular.bagging`); validation rows are scored out of fold.
        ``0`` trains one booster on the training rows.
    refit_full:
        Without bagging: after choosing the number of trees on validation, retrain LightGBM on
        train + validation with that number scaled by the row ratio (AutoGluon's ``refit_full``).
    epochs, batch_size, lr, weight_decay, dropout, hidden, patience:
        Neural net settings (AdamW, one-cycle schedule, early stopping on validation loss).
    init_model:
        Folder of an earlier saved ``TabularFineTuner`` to continue from: its preprocessor is
        reused, LightGBM adds trees to its booster and the net starts from its weights. Its
        task, columns and labels must match the new data.
    progress:
        Show progress: a bar on a terminal, plain lines (one per epoch or step) in a log.
    runs_dir, run_name:
        Where each fit writes its run record (``runs_dir/<time>-<run_name>/``: config, data
        SHA-256 and rows per split, dropped rows, environment, per-epoch metrics, plots,
        ``report.md``); ``None`` or ``""`` writes none.
    target:
        Deprecated: name the target in ``fit(data, target=...)``. Still used when ``fit``
        names none, for one release.

    Callbacks
    ---------
    ``fit(..., callbacks=[...])`` takes :class:`tunesmith.train.callbacks.Callback` objects.
    The network calls their ``on_epoch_end(state, metrics)`` after every epoch with
    ``train_loss``, ``valid_loss`` and (classification) ``valid_accuracy``. LightGBM calls it
    every ``rounds_per_step`` boosting rounds, with ``state.epoch`` the step (0-based) and
    ``metrics`` holding ``valid_loss`` (log loss; for regression the mean squared error of the
    standardised target, as the net reports it; bagged, the mean over the held-out folds) and
    ``round``: the key to prune on is ``"valid_loss"``, and boosting rounds are the pruning
    steps. With ``model="auto"`` or ``"ensemble"`` the callbacks see LightGBM's steps first,
    then the network's epochs, each phase numbered from 0 (``on_fit_start``/``on_fit_end``
    once per phase). A callback raising :class:`~tunesmith.train.callbacks.StopTraining` ends
    that phase with its best model so far (every fold's, when bagged); any other exception
    (``optuna.TrialPruned``) ends the fit.
    """

    kind = "tabular"
    settings_model = TabularConfig
    fitted_attribute = "preprocessor_"

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
    baseline_metrics_: dict[str, dict[str, Any]]
    uncertainty_: dict[str, Any]
    training_info_: dict[str, Any]
    data_info_: dict[str, Any]
    model_path_: Path | None
    run_dir_: Path | None
    refit_info_: dict[str, Any] | None = None
    """What the refit that made this model did (``None`` for a model fit from scratch)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if params.get("target") is not None:
            warnings.warn(
                "TabularFineTuner(target=...) is deprecated and will be removed in the next release; "
                "pass fit(data, target=...)",
                DeprecationWarning,
                stacklevel=2,
            )

    def __getattr__(self, name: str) -> Any:
        # Settings read as attributes (est.lr), as before they lived in a pydantic model.
        if not name.startswith("_") and name in type(self).settings_model.model_fields and "_params" in vars(self):
            return self.get_params()[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def _param_names(cls) -> list[str]:
        """The names of every setting (the command line's list of what it may pass)."""
        return list(cls.settings_model.model_fields)

    def _config(self) -> TabularConfig:
        return validate_settings(TabularConfig, self._params)

    # --- data ----------------------------------------------------------------------------

    # what export and serving call on a loaded estimator
    _read = staticmethod(read_frame)
    _with_rows = staticmethod(with_rows)

    def _drop_missing_target(self, df: pd.DataFrame, target: str, file: str | None, what: str) -> pd.DataFrame:
        require_column(df, target, "target", file)
        missing = missing_mask(df[target]).to_numpy(dtype=bool)
        info = self.data_info_.setdefault(what, {})
        info["rows_in"] = len(df)
        info["dropped_missing_target"] = int(missing.sum())
        info["dropped_example_rows"] = row_numbers(df)[missing][:5].tolist()
        self.data_info_.setdefault("dropped", {})[what] = {"missing_target": int(missing.sum())}
        out = df.loc[~missing]
        if len(out) == 0:
            raise DataError(f"every row of the {what} data has a missing target", file=file, column=target)
        return out

    def _earlier(self, cfg: TabularConfig, target: str | None) -> TabularFineTuner | None:
        """The model ``init_model`` names, loaded (its target must be the one asked for)."""
        if cfg.init_model is None:
            return None
        old = TabularFineTuner.load(cfg.init_model)
        assert old.schema_ is not None
        if target is not None and target != old.schema_.target:
            raise ArtifactError(
                f"target {target!r} differs from the earlier model's {old.schema_.target!r}", path=str(cfg.init_model)
            )
        return old

    # --- fitting ---------------------------------------------------------------------------

    def fit(
        self,
        data: DataLike,
        y: Any = None,
        *,
        target: str | None = None,
        eval_set: DataLike | None = None,
        test_set: DataLike | None = None,
        callbacks: Sequence[Callback] | None = None,
        resume: str | os.PathLike[str] | None = None,
        **deprecated: Any,
    ) -> TabularFineTuner:
        """Train on ``data``: a DataFrame, a CSV/Parquet/JSONL path, or a 2-D array with labels ``y``.

        ``target`` names the column to predict (with ``y``, the name it is stored under;
        default ``"target"``). Rows with a missing target are dropped and counted in
        ``data_info_``. Without ``eval_set`` (data like ``data``, or an ``(X, y)`` pair),
        ``valid_size`` of the rows are held out (stratified for classification). With
        ``test_set``, every candidate is also scored on it (``candidates_[name]["test"]``) and
        ``test_metrics_`` holds the chosen one's scores, each with its 95% bootstrap interval
        (``<metric>_ci``); ``baseline_metrics_`` holds the majority baseline's and
        ``uncertainty_`` whether each gain is larger than the noise. ``valid=``/``test=`` are the deprecated
        spellings of ``eval_set=``/``test_set=``. See the class docstring for ``callbacks``.
        ``resume`` is the run folder of a killed fit to continue: the neural net resumes from its
        newest checkpoint (see :mod:`tunesmith.estimators.resume`); LightGBM trains again.
        """
        args = fit_arguments(
            self, data, y, target=target, eval_set=eval_set, test_set=test_set, callbacks=callbacks,
            deprecated=deprecated, resume=resume,
        )  # fmt: skip
        try:
            return self._fit(args)
        except BaseException:
            # a fit that fails (a pruned trial included) leaves no half-learned state behind
            for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
                delattr(self, name)
            raise

    def _fit(self, args: FitArguments) -> TabularFineTuner:
        """The steps of ``fit``: read, resolve the schema, split, build features, train, choose, evaluate, record."""
        cfg = self._config()
        started = time.perf_counter()
        self.data_info_ = {}
        # a refitted model fit again is no longer the refit its record describes
        vars(self).pop("refit_info_", None)
        wanted = args.target if args.target is not None else cfg.target
        old = self._earlier(cfg, wanted)
        if wanted is None and old is not None and old.schema_ is not None:
            wanted = old.schema_.target
        if wanted is None and args.y is not None:
            wanted = str(getattr(args.y, "name", None) or "target")
        if wanted is None:
            raise ConfigError("no target column given", key="target", hint="Pass fit(data, target='column name')")
        target = wanted

        # read, then resolve the schema once
        df, file = labeled_frame(args.data, args.y, target, "data")
        sha = data_sha256(args.data, df)
        df = with_rows(df)
        require_column(df, target, "target", file)
        if old is not None:
            assert old.schema_ is not None
            schema = check_compatible(cfg, old.schema_, df, file)
        else:
            schema = infer_schema(cfg, df, target, file)
        df = self._drop_missing_target(df, target, file, "train")
        if schema.task != "regression":
            # an id or free-text column picked as the target is refused here, in our words, not sklearn's
            check_target_classes(df[target], column=target, file=file)

        # split
        train_df, valid_df, valid_file, test_df, test_file = self._split(
            cfg, schema, df, file, args.eval_set, args.test_set
        )
        self.data_info_.update(
            file=Path(file).name if file else None,
            sha256=sha,
            target=target,
            rows={"train": len(train_df), "valid": len(valid_df), "test": len(test_df) if test_df is not None else 0},
        )
        stem = Path(file).stem if file else "tabular"
        record = resume_run.open_run(cfg, stem, resume=args.resume, extra={"target": target})

        # build the features
        self.schema_ = schema
        self.label_values_ = label_values(schema.labels or (), df[target]) if schema.labels is not None else []
        self.classes_ = restore_label_values(schema.labels, self.label_values_) if schema.labels is not None else None
        self.n_outputs_ = len(schema.labels) if schema.labels is not None else 1
        if old is not None:
            assert old.preprocessor_ is not None
            pre = old.preprocessor_
        else:
            pre = TabularPreprocessor(
                schema.numeric_columns,
                schema.categorical_columns,
                schema.text_columns,
                text_backbone=cfg.text_backbone,
                text_dims=cfg.text_dims,
                min_count=cfg.min_count,
                progress=cfg.progress,
            ).fit(train_df, file=file)
        self.preprocessor_ = pre
        y_train = encode_target(train_df[target], schema, file=file)
        y_valid = encode_target(valid_df[target], schema, file=valid_file)
        f_train = pre.encode(train_df, file=file)
        f_valid = pre.encode(valid_df, file=valid_file)
        f_test = pre.encode(test_df, file=test_file) if test_df is not None else None
        y_test = encode_target(test_df[target], schema, file=test_file) if test_df is not None else None
        if old is not None:
            self.target_scaling_ = old.target_scaling_
        elif schema.task == "regression":
            std = float(np.std(y_train))
            self.target_scaling_ = {"mean": float(np.mean(y_train)), "std": std if std > 1e-12 else 1.0}
        else:
            self.target_scaling_ = None

        # train each candidate, keep the best on validation
        callbacks_for = self._callbacks(args.callbacks, record)
        want_lgb = cfg.model in ("auto", "lightgbm", "ensemble")
        want_net = cfg.model in ("auto", "neural", "ensemble")
        self.booster_ = None
        self.net_ = None
        self.training_info_ = {"num_threads": torch.get_num_threads()}
        valid_out: dict[str, np.ndarray] = {}
        if want_lgb:
            self.booster_, self.training_info_["lightgbm"], oof = fit_trees(
                cfg, schema.task, self.n_outputs_, pre.raw_categorical_indices, (f_train, y_train), (f_valid, y_valid),
                init_booster=old.booster_ if old is not None else None, target_scaling=self.target_scaling_,
                callbacks=callbacks_for("lightgbm"),
            )  # fmt: skip
            # a bagged booster saw the validation rows: each is scored by the fold booster that did not
            valid_out["lightgbm"] = self._outputs(f_valid, "lightgbm") if oof is None else lgb_outputs(schema.task, oof)
        if want_net:
            features = [f.numeric for f in (f_train, f_valid)] + [f.categorical for f in (f_train, f_valid)]
            ckpt = resume_run.checkpointer(
                record, cfg, lambda: resume_run.fingerprint(cfg.model_dump(mode="json"), [*features, y_train, y_valid]),
                resume=args.resume, part="neural",
            )  # fmt: skip
            self.net_, self.training_info_["neural"] = fit_net(
                cfg, schema.task, self.n_outputs_, pre.cardinalities, (f_train, y_train), (f_valid, y_valid),
                init_net=old.net_ if old is not None else None, target_scaling=self.target_scaling_,
                callbacks=callbacks_for("neural"), checkpointer=ckpt,
            )  # fmt: skip
            valid_out["neural"] = self._outputs(f_valid, "neural")
        if want_lgb and want_net:
            valid_out["ensemble"] = (valid_out["lightgbm"] + valid_out["neural"]) / 2.0
        labels = list(schema.labels or [])
        self.candidates_ = {
            name: {"valid": compute_metrics(schema.task, y_valid, out, labels or None)}
            for name, out in valid_out.items()
        }
        if cfg.model == "auto":
            self.chosen_ = max(
                self.candidates_,
                key=lambda n: _selection_key(schema.task, self.candidates_[n]["valid"], cfg.selection_metric),
            )
        else:
            self.chosen_ = str(cfg.model)
        # The network alone needs no trees: refitting them would be wasted work; bagged trees saw every row.
        if want_lgb and cfg.refit_full and not cfg.bagging_folds and self.chosen_ != "neural":
            self.booster_ = refit_lightgbm(
                cfg, schema.task, self.n_outputs_, pre.raw_categorical_indices, (f_train, y_train), (f_valid, y_valid),
                booster=self.booster_, info=self.training_info_["lightgbm"],
            )  # fmt: skip

        # evaluate
        self.test_metrics_ = None
        test_outputs: dict[str, np.ndarray] = {}
        if f_test is not None and y_test is not None:
            for name in self.candidates_:
                test_outputs[name] = self._outputs(f_test, name)
                self.candidates_[name]["test"] = compute_metrics(
                    schema.task, y_test, test_outputs[name], labels or None
                )
            self.test_metrics_ = self.candidates_[self.chosen_]["test"]
        self.training_info_["seconds"] = round(time.perf_counter() - started, 3)
        self.model_path_ = None

        # record: 95% intervals on the test metrics, and the run record when runs_dir is set
        finish_record(self, record, test_outputs=test_outputs, y_train=y_train, y_test=y_test)
        self.run_dir_ = record.path if record is not None else None
        if want_net:
            resume_run.finish(ckpt, cfg)  # only now: a fit killed before here resumes the trained net
        return self

    def _split(
        self, cfg: TabularConfig, schema: Schema, df: pd.DataFrame, file: str | None, eval_set: Any, test_set: Any
    ) -> tuple[pd.DataFrame, pd.DataFrame, str | None, pd.DataFrame | None, str | None]:
        """Train and validation rows (``valid_size`` held out without ``eval_set``), and test rows."""
        schema_target = schema.target
        if eval_set is None:
            split = split_frame(
                df, target=schema_target, task=schema.task, valid_size=float(cfg.valid_size), test_size=0.0,
                seed=int(cfg.seed), file=file,
            )  # fmt: skip
            train_df, valid_df, valid_file = split.train, split.valid, file
            self.data_info_["split"] = {"strategy": split.strategy, "notes": split.notes}
        else:
            vdf, valid_file = labeled_frame(eval_set, None, schema_target, "eval_set")
            self.data_info_["valid_sha256"] = data_sha256(eval_set, vdf)
            train_df = df
            valid_df = self._drop_missing_target(with_rows(vdf), schema_target, valid_file, "valid")
        test_df: pd.DataFrame | None = None
        test_file: str | None = None
        if test_set is not None:
            tdf, test_file = labeled_frame(test_set, None, schema_target, "test_set")
            self.data_info_["test_sha256"] = data_sha256(test_set, tdf)
            test_df = self._drop_missing_target(with_rows(tdf), schema_target, test_file, "test")
        return train_df, valid_df, valid_file, test_df, test_file

    @staticmethod
    def _callbacks(given: Sequence[Callback], record: RunRecord | None) -> Any:
        """The callbacks of one training phase: the caller's, and the run record's epoch log."""

        def phase(name: str) -> list[Callback]:
            out = list(given)
            if record is not None:
                out.append(resume_run.history_logger(lambda metrics: record.log_epoch({"model": name, **metrics})))
            return out

        return phase

    # --- refitting -------------------------------------------------------------------------

    def refit(
        self,
        data: DataLike,
        y: Any = None,
        *,
        replay: DataLike | None = None,
        target: str | None = None,
        **settings: Any,
    ) -> TabularFineTuner:
        """Continue this fitted model on new labeled ``data``; return the refitted copy (``self`` is unchanged).

        ``data`` and ``replay`` (old labeled rows, sampled beside the new ones) are DataFrames
        or files holding the model's input columns and its target (``target`` names the label
        column when it is called otherwise; ``y`` gives the labels of ``data`` instead). The
        copy keeps the preprocessor, classes and target scaling; LightGBM grows new trees on
        its booster (the old trees stay as they are), stopped early on held-out new rows, and
        the network trains on from its weights for half the fit's epochs unless ``epochs`` is
        given (``lr`` is the network's, too).

        ``settings`` are :class:`~tunesmith.train.continual.RefitSettings` fields (``method``:
        ``"auto"`` replays old rows, pulls the network toward its weights (L2-SP) and
        interpolates each refitted part with the current one (WiSE-FT: network weights, new
        trees' leaf values), the weight chosen on held-out new and old rows; ``"naive"``,
        ``"replay"``, ``"l2sp"``, ``"wise"``; ``"lora"`` is not offered), plus ``model``:
        unset, the copy serves the candidate this model chose (``chosen_``); ``"auto"``
        refits every part this model holds and keeps the candidate best on the mean of the
        held-out new and old rows (``fit``'s rule); a name forces that candidate.

        The copy's ``refit_info_`` records the plan, the rows, the ``alpha`` chosen and its
        trials, the seconds, the data's SHA-256 and the parent model; ``save`` writes it into
        ``tunesmith.json`` (``"refit"``) and ``load`` reads it back. See docs/refit.md.

        Raises:
            DataError: no (labeled) rows, an input column or the target missing, or a label the
                model never saw (a refit keeps the classes; a new class needs a new fit).
            ConfigError: an unknown or invalid setting, or ``model`` naming a part not held.
            NotSupportedError: ``method="lora"``.
        """
        self._check_fitted()
        if settings.get("method") == "lora":
            raise unsupported(self, "refit method 'lora'", LORA_HINT)
        challenger: TabularFineTuner = refit_tabular(self, data, y, replay=replay, target=target, settings=settings)
        return challenger

    # --- prediction ------------------------------------------------------------------------

    def _outputs(self, features: TabularFeatures, name: str) -> np.ndarray:
        """Probabilities ``(n, k)`` or values ``(n,)`` of one candidate, in the target's units."""
        assert self.schema_ is not None
        task = self.schema_.task
        if name == "ensemble":
            return (self._outputs(features, "lightgbm") + self._outputs(features, "neural")) / 2.0
        if name == "lightgbm":
            if self.booster_ is None:
                raise ArtifactError("this model holds no LightGBM booster")
            return lgb_outputs(task, np.asarray(self.booster_.predict(features.raw), dtype=np.float64))
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
        df, file = read_frame(X, "X")
        df = with_rows(df)
        return self.preprocessor_.encode(df, file=file), df, file

    def predict_proba(self, data: DataLike) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, columns in the order of ``classes_``."""
        self._check_fitted()
        assert self.schema_ is not None
        if self.schema_.task == "regression":
            raise unsupported(self, "predict_proba for a regression model", "Use predict() for the predicted values")
        features, _, _ = self._features(data)
        return self._outputs(features, self.chosen_)

    def predict(self, data: DataLike) -> np.ndarray:
        """Predicted labels (in the target's own type), or values for regression.

        ``data`` is a DataFrame, a file path or a 2-D array holding the feature columns (extra
        columns are ignored; a missing one is a :class:`DataError` naming it).
        """
        self._check_fitted()
        assert self.schema_ is not None
        features, _, _ = self._features(data)
        out = self._outputs(features, self.chosen_)
        if self.schema_.task == "regression":
            return out
        assert self.classes_ is not None
        return self.classes_[out.argmax(axis=1)]

    def embed(self, data: DataLike, *, max_rows: int | None = None) -> np.ndarray:
        """Not offered: a table's model has no one learned representation of a row worth comparing."""
        raise unsupported(self, "embed", "Tables are monitored on their input columns")

    def evaluate(self, data: DataLike, y: Any = None, *, target: str | None = None) -> dict[str, Any]:
        """Metrics (:func:`~tunesmith.evaluate.metrics.compute_metrics`) on labeled rows.

        Labels come from ``y`` or else from the target column of ``data`` (``target`` names it
        when it differs from training's); rows with a missing target are dropped and counted in
        ``"dropped"``; a label never seen in training is a :class:`DataError` naming its row.
        """
        self._check_fitted()
        assert self.schema_ is not None and self.preprocessor_ is not None
        schema = self.schema_
        df, file = read_frame(data, "data")
        df = with_rows(df)
        if target is not None and target != schema.target and y is None:
            require_column(df, target, "target", file)
            df[schema.target] = df[target]
        if y is not None:
            if len(y) != len(df):
                raise DataError(f"data has {len(df)} rows but y has {len(y)} values", file=file)
            df[schema.target] = list(y)
        require_column(df, schema.target, "target", file)
        missing = missing_mask(df[schema.target]).to_numpy(dtype=bool)
        df = df.loc[~missing]
        if len(df) == 0:
            raise DataError("every row has a missing target", file=file, column=schema.target)
        y_true = encode_target(df[schema.target], schema, file=file)
        out = self._outputs(self.preprocessor_.encode(df, file=file), self.chosen_)
        metrics = compute_metrics(schema.task, y_true, out, list(schema.labels) if schema.labels else None)
        metrics["dropped"] = {"missing_target": int(missing.sum())}
        return metrics

    def score(self, data: DataLike, y: Any = None, *, target: str | None = None) -> float:
        """Accuracy for classification, R² for regression (the scikit-learn convention)."""
        metrics = self.evaluate(data, y, target=target)
        assert self.schema_ is not None
        value = metrics["r2" if self.schema_.task == "regression" else "accuracy"]
        return float(value) if value is not None else float("nan")

    # --- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model folder atomically: ``model.safetensors``, ``lightgbm.txt``, ``tunesmith.json``, ``card.md``.

        ``model.safetensors`` holds the net's weights and the text PCA (and always a marker
        tensor, so the file exists even for a LightGBM-only model); ``lightgbm.txt`` is
        LightGBM's own text format, which loads without running code; ``tunesmith.json`` is
        the one metadata format of every kind (:func:`tunesmith.runs.meta.model_meta`).
        """
        self._check_fitted()
        final = save_folder(self, path, overwrite=overwrite)
        self.model_path_ = final
        return final

    @classmethod
    def load(cls, path: str | os.PathLike[str] | SafeFolder, *, backbone: str | None = None) -> TabularFineTuner:
        """Load a folder written by :meth:`save` (format version 1 or 2).

        The folder is opened through :func:`tunesmith.runs.trust.open_model` (no pickles, code,
        links or files outside it), every field of ``tunesmith.json`` is checked, the network's
        shapes are compared with the safetensors header before anything is built, and
        ``lightgbm.txt`` is loaded only after a child process loaded it without crashing
        (:func:`~tunesmith.tabular.lightgbm_check.load_lightgbm`). A text backbone is opened
        only by registered name: a model whose metadata names a path needs ``backbone`` (a
        name or a folder you trust); its weights must still be the ones the model was trained with.

        Raises:
            ArtifactError: the folder is unsafe, of another kind or version, malformed, or its
                text backbone's weights differ from the training ones; the message names the
                file and field.
        """
        folder, meta = open_model(path)
        est: TabularFineTuner = open_folder(cls, folder, meta, backbone=backbone)
        if not isinstance(path, SafeFolder):
            est.model_path_ = Path(path)
        return est


def _open(folder: SafeFolder, meta: dict[str, Any] | None, *, backbone: str | None = None) -> TabularFineTuner:
    """The registry's loader: a tabular model from a folder opened through the trust checks."""
    if meta is None:
        return TabularFineTuner.load(folder, backbone=backbone)
    est: TabularFineTuner = open_folder(TabularFineTuner, folder, meta, backbone=backbone)
    return est


KIND = register(
    Kind(
        name="tabular",
        estimator=TabularFineTuner,
        open=_open,
        summary="LightGBM, a neural net or their average on table rows (numbers, categories, texts)",
        options=("backbone",),
        serving="predict",
    )
)
