"""The settings of a tabular fit: one pydantic model, validated when the estimator is built."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

__all__ = ["MODEL_CHOICES", "TabularConfig"]

MODEL_CHOICES = ("auto", "lightgbm", "neural", "ensemble")
MAX_BAGGING_FOLDS = 50
"""Most folds ``bagging_folds`` may ask for (each fold trains a booster)."""


class TabularConfig(BaseModel):
    """Every setting of :class:`~tunesmith.tabular.TabularFineTuner`, with its default.

    Unknown keys are rejected, so a misspelt setting fails at construction, not halfway
    through a run.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    target: str | None = Field(
        None,
        description="Deprecated: pass fit(..., target=...). The column to predict, used when fit names none.",
    )
    task: Literal["auto", "binary", "multiclass", "regression"] = Field(
        "auto", description="auto: classes for strings and small sets of integers, else regression."
    )
    model: Literal["auto", "lightgbm", "neural", "ensemble"] = Field(
        "auto", description="auto keeps the best of LightGBM, the network and their average on validation."
    )
    selection_metric: Literal["log_loss", "accuracy"] = Field(
        "log_loss", description="What model='auto' compares classifiers on (ties: the other); regression uses MAE."
    )
    numeric_columns: list[str] | tuple[str, ...] | None = Field(None, description="Numeric features; None infers.")
    categorical_columns: list[str] | tuple[str, ...] | None = Field(
        None, description="Categorical features; None infers."
    )
    text_columns: list[str] | tuple[str, ...] | None = Field(None, description="Text features; None infers.")
    ignore_columns: list[str] | tuple[str, ...] = Field((), description="Columns to leave out.")
    text_backbone: str = Field("minilm-l6", description="Frozen encoder for text columns.")
    text_dims: int = Field(32, ge=1, description="PCA components kept per text column.")
    min_count: int = Field(1, ge=0, description="A category seen fewer times in training is 'unknown'.")
    valid_size: float = Field(0.1, gt=0, lt=1, description="Share of rows held out when fit gets no eval_set.")
    seed: int = Field(0, description="Seed of the split, LightGBM and the network.")
    n_estimators: int = Field(2000, ge=1, description="Most LightGBM boosting rounds.")
    learning_rate: float = Field(0.05, gt=0, description="LightGBM learning rate.")
    num_leaves: int = Field(31, ge=2, description="LightGBM leaves per tree.")
    min_child_samples: int = Field(20, ge=1, description="LightGBM rows per leaf at least.")
    early_stopping_rounds: int = Field(100, ge=1, description="Rounds without a better validation loss.")
    rounds_per_step: int = Field(
        10, ge=1, description="Boosting rounds per step reported to callbacks (the pruning step of a search)."
    )
    refit_full: bool = Field(
        True, description="Without bagging: retrain LightGBM on train + validation with the rounds found."
    )
    bagging_folds: int = Field(
        8,
        ge=0,
        le=MAX_BAGGING_FOLDS,
        description="LightGBM boosters trained on k folds of train + validation and averaged; 0 trains one.",
    )
    epochs: int = Field(50, ge=1, description="Most epochs of the network.")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0, description="Network learning rate (AdamW, one-cycle).")
    weight_decay: float = Field(1e-5, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    hidden: list[PositiveInt] | tuple[PositiveInt, ...] = Field(
        (256, 128), description="Widths of the network's hidden layers."
    )
    patience: int = Field(5, ge=1, description="Network epochs without a better validation loss.")
    init_model: str | Path | None = Field(None, description="Folder of an earlier saved model to continue from.")
    progress: bool = Field(True, description="Show progress (a bar on a terminal, plain lines in a log).")
    runs_dir: str | None = Field("runs", description="Where run records are written; null or '' writes none.")
    run_name: str | None = Field(None, description="Name of the run folder (after the timestamp).")
    checkpoints: bool = Field(
        True, description="Write checkpoints into the run folder so a killed fit resumes (fit --resume RUN)."
    )
    checkpoint_every_steps: int = Field(
        200, ge=0, description="Also checkpoint every this many batches (besides epoch ends); 0: epoch ends only."
    )
    keep_checkpoints: bool = Field(False, description="Keep the checkpoints once the fit succeeded (else removed).")

    @field_validator("bagging_folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("bagging_folds is 0 (one booster) or at least 2 folds; one fold has no rows to hold out")
        return value
