"""``FineTuner``: fine-tune a pre-trained text backbone on labeled data, the scikit-learn way.

The constructor only stores (and validates) settings; ``fit`` learns; learned state ends
in ``_``; ``get_params``/``set_params``/``sklearn.base.clone`` work, so searches,
cross-validation and per-user copies need nothing special.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

import tunesmith.estimators.text.fewshot as fewshot
import tunesmith.estimators.text.fitting as fitting
import tunesmith.estimators.text.folder as folder
import tunesmith.estimators.text.refitting as refitting
from tunesmith.backbones.cache import FEATURE_CACHE, feature_key
from tunesmith.backbones.embed import run_batches
from tunesmith.backbones.text import TextBackbone
from tunesmith.config import FitConfig, make_config
from tunesmith.data.clean import CleanReport
from tunesmith.data.quality import Preprocessing
from tunesmith.data.schema import Schema, label_values
from tunesmith.data.validate import encode_target, prepare_frame, texts_of
from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators import registry
from tunesmith.estimators import resume as resume_run
from tunesmith.estimators.base import Estimator, FitArguments, NotSupportedError, fit_arguments, row_limit
from tunesmith.estimators.text.inputs import DataLike, prediction_texts, read_frame
from tunesmith.estimators.text.record import write_record
from tunesmith.evaluate.metrics import compute_metrics
from tunesmith.model import TextModel
from tunesmith.runs.trust import SafeFolder, open_model
from tunesmith.train.callbacks import Callback
from tunesmith.train.threads import default_threads


class FineTuner(Estimator):
    """Fine-tune a pre-trained text backbone on a labeled table.

    Every keyword is a setting of :class:`tunesmith.config.FitConfig` (see ``docs/config.md``);
    unknown or conflicting settings raise :class:`tunesmith.errors.ConfigError` here, at
    construction, not halfway through a run.

    Examples
    --------
    >>> ft = FineTuner(backbone="tiny-text", epochs=1, runs_dir="")  # doctest: +SKIP
    >>> ft.fit("reviews.csv", target="label").predict(["great film"])  # doctest: +SKIP
    """

    kind: ClassVar[str] = "text"
    settings_model = FitConfig

    # Learned state: set by fit (the steps in .fitting) or by a load (.folder).
    model_path_: Path | None = None
    model_: TextModel | None = None
    schema_: Schema | None = None
    backbone_: TextBackbone
    config_: FitConfig
    classes_: np.ndarray | None
    label_values_: list[Any]
    target_scaling_: dict[str, float] | None
    preprocessing_: Preprocessing
    cleaning_: CleanReport
    n_outputs_: int
    history_: list[dict[str, Any]]
    best_epoch_: int | None
    best_score_: float | None
    monitor_: str | None
    monitor_mode_: str | None
    stop_reason_: str | None
    train_seconds_: float
    train_examples_: int
    n_parameters_: dict[str, int]
    drop_report_: dict[str, dict[str, Any]]
    split_sizes_: dict[str, int]
    split_info_: dict[str, Any]
    test_metrics_: dict[str, Any] | None
    baseline_metrics_: dict[str, dict[str, Any]]
    data_info_: dict[str, Any]
    training_info_: dict[str, Any]
    run_dir_: Path | None
    refit_info_: dict[str, Any] | None = None
    _backbone_origin: str
    _test_outputs: np.ndarray
    _y_test: np.ndarray

    @property
    def config(self) -> FitConfig:
        """The validated settings."""
        return make_config(self._params)

    # Kept for callers written against the former private API (cross-validation, the
    # personaliser, tabular and image label values); new code uses the functions themselves.
    _frame = staticmethod(read_frame)
    _label_values = staticmethod(label_values)
    _run_batches = staticmethod(run_batches)

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
        resume: str | os.PathLike[str] | None = None,
    ) -> FineTuner:
        """Fine-tune on ``X`` and score the result and the baselines on a held-out test split.

        ``X`` is a file (CSV, TSV, Parquet, JSONL), a DataFrame with a ``target`` column, or a
        list of texts with labels ``y``. ``text_column`` (also a setting) names the text
        column(s). Without ``eval_set``, ``X`` is split into train, validation and test by
        ``valid_size``/``test_size`` (grouped by ``group_column`` or following
        ``split_column`` when set). With ``eval_set`` all of ``X`` trains and ``test_set``
        (optional) is the test split.

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

        ``resume`` is the run folder of a fit that was killed: training continues from its
        newest checkpoint with the same data and settings and ends with the same weights, bit
        for bit on a CPU, as a run never stopped (see :mod:`tunesmith.estimators.resume`).
        """
        args = fit_arguments(
            self, X, y, target=target, eval_set=eval_set, test_set=test_set, callbacks=callbacks, resume=resume
        )
        return self._fit(args, text_column)

    def _fit(
        self, args: FitArguments, text_column: str | list[str] | None, warm: fitting.WarmStart | None = None
    ) -> FineTuner:
        """The steps of :meth:`fit`; a refit passes ``warm`` (the weights and schema to start from)."""
        # A refit that fails halfway must not leave the old model paired with new labels:
        # until this fit completes, the estimator counts as not fitted.
        self.model_ = None
        self.best_score_ = None
        self.monitor_ = None
        self.monitor_mode_ = None
        cfg = fitting.resolved_config(self._params, text_column)
        started = time.perf_counter()
        torch.set_num_threads(cfg.num_threads or default_threads())

        inputs = fitting.read(args)
        data = fitting.resolve(inputs, cfg, warm)  # the schema, inferred once, and the data validated
        self.schema_ = data.schema
        splits = fitting.split(data, inputs, cfg)  # cleaning before the split, then the split
        built = fitting.build(self, cfg, data, splits, warm)
        cfg = fewshot.resolve_strategy(cfg, data.schema.task, splits.train.y, warm=warm is not None)
        record = resume_run.open_run(
            cfg,
            Path(inputs.file).stem if inputs.file else "fit",
            resume=args.resume,
            main_process=built.accelerator.is_main_process,
        )
        built.checkpointer = resume_run.checkpointer(
            record,
            cfg,
            lambda: resume_run.fingerprint(
                cfg.model_dump(mode="json"),
                [built.ids["train"], splits.train.y, built.ids["valid"], splits.valid.y],
            ),
            resume=args.resume,
        )
        found_baselines = fitting.baselines(self, cfg, data.schema, splits, built)
        train = fewshot.train_fewshot if cfg.strategy == "fewshot" else fitting.train_model
        trained = train(self, cfg, data.schema, splits, built, record, args.callbacks, warm)
        fitting.keep(self, cfg, built, trained, splits)
        fitting.evaluate(self, cfg, data.schema, splits, built)
        fitting.describe(self, data, splits, trained, found_baselines, started)
        write_record(self, record)
        resume_run.finish(built.checkpointer, cfg)
        self.run_dir_ = record.path if record is not None else None
        built.accelerator.wait_for_everyone()
        return self

    # --- refitting ---------------------------------------------------------------------------

    def refit(
        self,
        data: DataLike,
        y: Any = None,
        *,
        replay: DataLike | None = None,
        target: str | None = None,
        eval_set: DataLike | None = None,
        callbacks: Sequence[Callback] | None = None,
        **settings: Any,
    ) -> FineTuner:
        """Continue this model on new labeled ``data``; return the refitted copy, leaving ``self`` as it was.

        The copy starts from this model's weights and keeps its classes, input columns and
        target scaling. ``replay`` (old labeled rows) is sampled beside the new rows;
        ``settings`` are :class:`~tunesmith.train.continual.RefitSettings` fields. The
        default (``method="auto"``) replays as many old rows as there are new training rows,
        pulls the weights toward the current ones (L2-SP) and interpolates the result with
        them (WiSE-FT), choosing the weight on held-out new and old rows. ``method="lora"``
        trains LoRA adapters on the frozen current model and merges them. ``epochs`` defaults
        to half the fit's (at least one); ``valid_size`` of the new rows are held out unless
        ``eval_set`` is given. The copy's ``refit_info_`` records the plan, the rows, the
        alpha chosen, the seconds and the data fingerprints; its run folder (``runs_dir``)
        gets a ``refit.json``; its saved folder keeps it in ``tunesmith.json`` (``refit``).

        Raises:
            DataError: no new rows, a text column or the target missing, or a label the model
                never saw (refit keeps the classes; a new class needs a new fit).
            ConfigError: an unknown setting, or ``method="lora"`` on a head-only model.
        """
        return refitting.refit(
            self, data, y, replay=replay, target=target, eval_set=eval_set, callbacks=callbacks, settings=settings
        )

    # --- model outputs -----------------------------------------------------------------------

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
            run_batches(backbone, ids, cfg.eval_batch_size, backbone.pad_id, progress=cfg.progress, description=what)
        )
        if key is not None:
            FEATURE_CACHE.put(key, out)
        return out

    def _outputs_from_ids(self, ids: list[list[int]], *, progress: bool) -> np.ndarray:
        assert self.model_ is not None
        return run_batches(
            self.model_,
            ids,
            self.config_.eval_batch_size,
            self.backbone_.pad_id,
            progress=progress,
            description="predicting",
        )

    def _outputs_from_features(self, features: torch.Tensor) -> np.ndarray:
        assert self.model_ is not None
        with torch.inference_mode():
            device = next(self.model_.parameters()).device
            return self.model_.head(features.to(device)).float().cpu().numpy()

    def _preprocessing(self) -> Preprocessing:
        return getattr(self, "preprocessing_", None) or Preprocessing()

    def _texts_for_prediction(self, X: DataLike) -> tuple[list[str], pd.DataFrame, str | None]:
        """Former private API (the personaliser uses it): model input texts of rows to predict."""
        assert self.schema_ is not None
        df, _, file = read_frame(X, None, None, role="data")
        return prediction_texts(df, self.schema_, self._preprocessing()), df, file

    def _predict_outputs(self, X: DataLike) -> np.ndarray:
        self._check_fitted()
        assert self.schema_ is not None
        texts = prediction_texts(X, self.schema_, self._preprocessing())
        ids = self.backbone_.tokenize(texts, self.config_.max_length)
        return self._outputs_from_ids(ids, progress=self.config_.progress and len(ids) >= 2048)

    # --- prediction ------------------------------------------------------------------------

    def predict_proba(self, X: DataLike) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, columns in the order of ``classes_``."""
        self._check_fitted()
        if self.schema_ is not None and self.schema_.task == "regression":
            raise NotSupportedError(
                "predict_proba is for classification; this model does regression", hint="Use predict()"
            )
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

    def embed(self, data: DataLike, *, max_rows: int | None = None) -> np.ndarray:
        """The fine-tuned encoder's pooled vector of each row, ``(n, hidden_size)`` float32, in input order.

        What the head sees: the texts are built and tokenized as :meth:`predict` builds them
        and run through this model's own backbone (its fine-tuned weights, LoRA adapters
        included), never a fresh pre-trained one. Drift monitoring compares these between
        reference and current data. ``max_rows`` embeds only the first ``max_rows`` rows
        (``None``: every row).
        """
        self._check_fitted()
        assert self.model_ is not None and self.schema_ is not None
        limit = row_limit(max_rows)
        texts = prediction_texts(data, self.schema_, self._preprocessing())[:limit]
        backbone = self.model_.backbone
        if not texts:
            return np.zeros((0, backbone.hidden_size), dtype=np.float32)
        # The frozen-feature cache is not consulted: it holds pre-trained vectors, which are
        # this model's only when training left the backbone untouched.
        ids = backbone.tokenize(texts, self.config_.max_length)
        vectors = run_batches(
            backbone,
            ids,
            self.config_.eval_batch_size,
            backbone.pad_id,
            progress=self.config_.progress and len(ids) >= 2048,
            description="embedding",
        )
        return vectors.astype(np.float32, copy=False)

    def evaluate(self, X: DataLike, y: Any = None, *, target: str | None = None) -> dict[str, Any]:
        """Metrics on labeled data; a label never seen in training is an error naming its row."""
        self._check_fitted()
        schema = self.schema_
        assert schema is not None
        df, target_col, file = read_frame(X, y, target or (schema.target if y is None else None))
        if list(df.columns)[:1] == ["text"] and "text" not in schema.text_columns:
            df = df.rename(columns={"text": schema.text_columns[0]})
        if target_col not in df.columns:
            raise DataError(
                f"target column {target_col!r} is missing",
                file=file,
                column=target_col,
                hint="Pass --target with the column holding the labels",
            )
        if target_col != schema.target:
            df = df.rename(columns={target_col: schema.target})
        df, drops = prepare_frame(df, schema, file=file)
        y_true = encode_target(df[schema.target], schema, file=file)
        texts = texts_of(self._preprocessing().apply(df), schema)
        ids = self.backbone_.tokenize(texts, self.config_.max_length)
        outputs = self._outputs_from_ids(ids, progress=self.config_.progress and len(ids) >= 2048)
        s = self.target_scaling_ or {"mean": 0.0, "std": 1.0}
        y_scaled = (y_true - s["mean"]) / s["std"] if schema.task == "regression" else y_true
        labels = list(schema.labels or [])
        metrics = self._metrics_from_outputs(schema.task, y_scaled, outputs, labels, s["mean"], s["std"])
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
        # Search works over estimators, a layer above them: it hands its entry point to the
        # registry when it is imported (``registry.get("text").extras["tune"]``), so this door
        # needs no import of its own and no cycle forms.
        run_search = registry.get(self.kind).extras.get("tune")
        if run_search is None:
            raise NotSupportedError(
                "FineTuner.tune needs tunesmith.search, which is not loaded",
                hint="import tunesmith.search first, or call tunesmith.search.tune(data, target, ...)",
            )
        df, target_col, _ = read_frame(X, y, target)
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

    # --- the model folder --------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model folder: ``model.safetensors``, ``tunesmith.json``, tokenizer files, ``card.md``.

        Full fine-tunes store every weight; head-only and LoRA models store only what was
        trained (head, adapters) plus a fingerprint of the pre-trained weights they need.
        ``tunesmith.json`` is the one model metadata format (version 2, kind ``text``).
        The folder appears whole or not at all.
        """
        return folder.save(self, path, overwrite=overwrite)

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
        every weight. Folders of metadata version 1 and 2 load.

        Raises:
            ArtifactError: the folder is unsafe, malformed, or needs a backbone it may not
                open itself; the message names the file and the field.
        """
        opened, meta = open_model(path)
        return cls._from_opened(opened, meta, backbone=backbone)

    @classmethod
    def _from_opened(cls, opened: SafeFolder, meta: dict[str, Any] | None, *, backbone: str | None = None) -> FineTuner:
        """:meth:`load` of a folder :func:`~tunesmith.runs.trust.open_model` already opened."""
        return folder.from_opened(cls, opened, meta, backbone=backbone)
