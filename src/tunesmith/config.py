"""Typed, strict settings for a fine-tuning run.

All defaults live here, in :class:`FitConfig`. The estimator, the YAML config files and
the ``key=value`` overrides of the command line are three views of the same fields, so a
setting has one name, one type and one documented default everywhere.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.errors import ConfigError

Strategy = Literal["auto", "full", "head_only", "lora", "fewshot"]
TaskName = Literal["auto", "binary", "multiclass", "regression"]
LossName = Literal["auto", "cross_entropy", "focal", "mse", "huber"]
OptimizerName = Literal["adamw", "adam", "sgd", "rmsprop"]
SchedulerName = Literal["constant", "linear", "cosine"]
Pooling = Literal["mean", "cls"]


class FitConfig(BaseModel):
    """Every setting of a fine-tuning run, with its default.

    Unknown keys are rejected; conflicting settings are rejected with a sentence that
    names both.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # --- model -------------------------------------------------------------------------
    backbone: str = Field("minilm-l6", description="Registered backbone name or a local Hugging Face folder.")
    task: TaskName = Field("auto", description="binary, multiclass or regression; auto infers it from the target.")
    text_column: str | list[str] | None = Field(None, description="Text column(s); inferred when not given.")
    max_length: int = Field(128, gt=0, le=8192, description="Tokens kept per example (longer is truncated).")
    pooling: Pooling = Field("mean", description="How token vectors become one vector: mean or cls.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout before the classification head.")

    # --- optimisation ------------------------------------------------------------------
    epochs: int = Field(3, gt=0, description="Maximum passes over the training split.")
    batch_size: int = Field(32, gt=0, description="Examples per optimizer step (before accumulation).")
    eval_batch_size: int = Field(128, gt=0, description="Examples per forward pass when evaluating.")
    lr: float = Field(5e-5, gt=0.0, description="Peak learning rate of the backbone.")
    head_lr: float | None = Field(None, gt=0.0, description="Learning rate of the new head; defaults to lr.")
    weight_decay: float = Field(0.01, ge=0.0, description="Decoupled weight decay (not applied to biases/norms).")
    optimizer: OptimizerName = Field("adamw", description="adamw, adam, sgd (with momentum) or rmsprop.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum for sgd and rmsprop.")
    scheduler: SchedulerName = Field("linear", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of steps spent warming up.")
    grad_clip: float | None = Field(1.0, gt=0.0, description="Clip the gradient norm to this; null disables.")
    grad_accum_steps: int = Field(1, ge=1, description="Batches accumulated before each optimizer step.")
    ema_decay: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Moving average of the weights, used for validation and the final model; 0 turns it off.",
    )

    # --- loss --------------------------------------------------------------------------
    loss: LossName = Field("auto", description="auto: cross_entropy for classes, mse for regression.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing for cross_entropy.")
    focal_gamma: float = Field(2.0, ge=0.0, description="Focusing parameter of the focal loss.")
    huber_delta: float = Field(1.0, gt=0.0, description="Threshold of the Huber loss.")
    class_weight: Literal["balanced"] | dict[str | int | bool, float] | None = Field(
        None, description="'balanced' or {label: weight}; weights the classification loss."
    )

    # --- early stopping ----------------------------------------------------------------
    early_stopping: bool = Field(True, description="Stop when the monitored metric stops improving.")
    monitor: str = Field("auto", description="Validation metric to monitor: auto, loss, accuracy, f1_macro, ...")
    patience: int = Field(2, ge=1, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest change that counts as an improvement.")
    restore_best: bool = Field(True, description="Restore the weights of the best validation epoch.")

    # --- transfer learning -------------------------------------------------------------
    strategy: Strategy = Field(
        "auto",
        description="auto (fewshot with few labels per class, else full), full (all layers), head_only, lora, "
        "or fewshot (contrastive pairs, then a head).",
    )
    freeze_embeddings: bool = Field(False, description="Keep the embedding layer frozen (full strategy).")
    freeze_layers: int = Field(0, ge=0, description="Keep the first N encoder layers frozen (full strategy).")
    gradual_unfreeze: bool = Field(
        False, description="Train the head first, then unfreeze one layer per epoch from the top."
    )
    layer_lr_decay: float = Field(1.0, gt=0.0, le=1.0, description="Each lower layer's lr is multiplied by it.")
    fewshot_steps: int = Field(
        0, ge=0, description="Contrastive steps of the fewshot strategy; 0: from the number of labeled rows."
    )
    fewshot_batch_size: int = Field(
        16, ge=4, description="Distinct examples per contrastive step (every pair among them is a signal)."
    )
    fewshot_lr: float = Field(2e-5, gt=0.0, description="Encoder learning rate of the contrastive stage.")
    fewshot_head: Literal["auto", "logistic", "prototype"] = Field(
        "auto", description="Head of the fewshot strategy; auto: the better of the two by k-fold on the labels."
    )
    fewshot_head_c: float = Field(1.0, gt=0.0, description="Inverse regularisation of the logistic head.")
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: float = Field(16.0, gt=0.0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    lora_targets: list[str] | None = Field(
        None, description="Module names that get adapters; default: the attention projections."
    )

    # --- data --------------------------------------------------------------------------
    valid_size: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction held out for validation.")
    test_size: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction held out for the final test.")
    group_column: str | None = Field(None, description="Rows sharing this value stay in one split.")
    split_column: str | None = Field(None, description="Column naming each row's split (train/valid/test).")
    length_bucketing: bool = Field(True, description="Batch examples of similar length to avoid padding.")

    # --- data quality (see docs/quality.md) ---------------------------------------------
    duplicates: Literal["keep", "drop"] = Field(
        "keep", description="drop: remove rows repeating an earlier row's input and label, before splitting."
    )
    conflicts: Literal["keep", "majority", "drop"] = Field(
        "keep", description="Same input, different labels: keep, majority (keep the commonest label) or drop all."
    )
    missing: Literal["keep", "drop", "impute"] = Field(
        "keep", description="Missing numeric/categorical values in training rows: keep, drop the row, or impute."
    )
    label_errors: Literal["keep", "drop", "relabel"] = Field(
        "keep", description="Likely mislabeled training rows (cleanlab): keep, drop, or relabel to the suggestion."
    )
    label_error_mode: Literal["fast", "thorough"] = Field(
        "fast", description="fast: logistic regression on frozen embeddings; thorough: k-fold fine-tuning."
    )
    label_error_folds: int = Field(5, ge=2, description="Folds of the out-of-fold probabilities for label errors.")
    label_error_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="Act on only this worst-ranked fraction of the flagged rows."
    )
    balance: Literal["none", "oversample", "undersample", "class_weight"] = Field(
        "none", description="Class imbalance remedy on the training split."
    )
    augment: list[Literal["delete", "swap", "insert", "replace"]] = Field(
        default_factory=list, description="Text augmentations of training rows: delete, swap, insert, replace."
    )
    augment_p: float = Field(0.1, gt=0.0, le=1.0, description="Per-token probability of an augmentation edit.")
    augment_copies: int = Field(1, ge=1, description="Augmented copies added per training row.")
    numeric_scaling: Literal["none", "standard", "minmax", "robust"] = Field(
        "none", description="Scaling of numeric columns, fitted on the training split."
    )

    # --- run ---------------------------------------------------------------------------
    seed: int = Field(0, ge=0, description="Seed for splits, initialisation, shuffling and dropout.")
    deterministic: bool = Field(True, description="Use deterministic algorithms (same seed, same weights).")
    num_threads: int | None = Field(None, gt=0, description="CPU threads for PyTorch; default: all cores.")
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="Attention kernel of text encoders; auto: eager on CPUs in bf16 (faster there), else sdpa."
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16 autocast where the CPU or GPU computes bf16 natively; fp16 on CUDA only."
    )
    baselines: bool = Field(True, description="Score the majority, TF-IDF and frozen-embedding baselines.")
    feature_cache: bool = Field(
        True, description="Reuse frozen-backbone features across fits in this process (head_only, baselines)."
    )
    progress: bool = Field(True, description="Show progress bars.")
    runs_dir: str | None = Field("runs", description="Where run records are written; null or '' writes none.")
    run_name: str | None = Field(None, description="Name of the run folder (after the timestamp).")
    checkpoints: bool = Field(
        True, description="Write checkpoints into the run folder so a killed fit resumes (fit --resume RUN)."
    )
    checkpoint_every_steps: int = Field(
        200, ge=0, description="Also checkpoint every this many batches (besides epoch ends); 0: epoch ends only."
    )
    keep_checkpoints: bool = Field(False, description="Keep the checkpoints once the fit succeeded (else removed).")

    @model_validator(mode="after")
    def _check_conflicts(self) -> FitConfig:
        if self.strategy == "head_only" and self.gradual_unfreeze:
            raise ValueError(
                "strategy='head_only' conflicts with gradual_unfreeze=true: head_only never unfreezes "
                "the backbone; use strategy='full' with gradual_unfreeze"
            )
        if self.strategy == "lora" and (self.freeze_layers or self.gradual_unfreeze or self.freeze_embeddings):
            raise ValueError(
                "strategy='lora' conflicts with freeze_layers/freeze_embeddings/gradual_unfreeze: "
                "LoRA already freezes the whole backbone and trains adapters"
            )
        if self.strategy == "fewshot" and (
            self.freeze_layers or self.gradual_unfreeze or self.freeze_embeddings or self.layer_lr_decay != 1.0
        ):
            raise ValueError(
                "strategy='fewshot' conflicts with freeze_layers/freeze_embeddings/gradual_unfreeze/layer_lr_decay: "
                "the few-shot stage tunes the whole encoder on pairs; use strategy='full' for those"
            )
        if self.strategy == "head_only" and self.layer_lr_decay != 1.0:
            raise ValueError("strategy='head_only' conflicts with layer_lr_decay: no backbone layer is trained")
        if self.group_column and self.split_column:
            raise ValueError("group_column conflicts with split_column: give one way to split, not both")
        if self.balance == "class_weight" and self.class_weight is not None:
            raise ValueError(
                "balance='class_weight' conflicts with class_weight: balance='class_weight' means "
                "class_weight='balanced'; set one of them"
            )
        if self.valid_size + self.test_size >= 1.0:
            raise ValueError(
                f"valid_size + test_size must be < 1 (got {self.valid_size} + {self.test_size}), "
                "or nothing is left to train on"
            )
        return self


FIELD_NAMES: tuple[str, ...] = tuple(FitConfig.model_fields)


# Names users bring from other libraries, mapped to ours for a helpful error.
_ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "model": "backbone",
    "model_name": "backbone",
    "model_name_or_path": "backbone",
    "lora_rank": "lora_r",
    "gradient_accumulation_steps": "grad_accum_steps",
    "max_grad_norm": "grad_clip",
    "lr_scheduler_type": "scheduler",
    "max_seq_length": "max_length",
    "label_smoothing_factor": "label_smoothing",
}


def _closest(key: str, names: Iterable[str]) -> str:
    alias = _ALIASES.get(key) or _ALIASES.get(key.rstrip("s"))
    if alias is None:
        alias = next((v for k, v in _ALIASES.items() if difflib.SequenceMatcher(None, k, key).ratio() > 0.85), None)
    if alias:
        return f"; did you mean {alias!r}?"
    match = difflib.get_close_matches(key, list(names), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def validate_settings(model: type[SettingsT], params: Mapping[str, Any]) -> SettingsT:
    """Validate ``params`` into ``model``, raising :class:`ConfigError` on the first problem."""
    names = tuple(model.model_fields)
    for key in params:
        if key not in model.model_fields:
            raise ConfigError(f"unknown setting{_closest(key, names)}", key=key)
    try:
        return model(**params)
    except ValidationError as exc:
        raise _config_error(exc) from None


def make_config(params: Mapping[str, Any]) -> FitConfig:
    """Validate ``params`` into a :class:`FitConfig`, raising :class:`ConfigError` on the first problem."""
    return validate_settings(FitConfig, params)


class SettingsEstimator:
    """The scikit-learn parameter protocol for an estimator whose settings are one pydantic model.

    The constructor only stores (and checks) the settings; ``get_params`` returns every
    setting, given or defaulted; ``set_params`` validates the whole set before changing
    anything. Subclasses name their model in ``settings_model``.
    """

    settings_model: ClassVar[type[BaseModel]]

    def __init__(self, **params: Any) -> None:
        validate_settings(self.settings_model, params)  # check at construction time, not late
        self._params: dict[str, Any] = dict(params)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every setting, as passed or defaulted (the estimator protocol)."""
        fields = self.settings_model.model_fields
        return {
            name: self._params[name] if name in self._params else field.get_default(call_default_factory=True)
            for name, field in fields.items()
        }

    def set_params(self, **params: Any) -> Self:
        """Change settings; the whole set is validated again before anything changes."""
        merged = {**self._params, **params}
        validate_settings(self.settings_model, merged)
        self._params = merged
        return self

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({shown})"


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if loc:
        return ConfigError(f"{msg} (got {err.get('input')!r})", key=loc.split(".")[0])
    return ConfigError(msg)


def parse_override(text: str, fields: Sequence[str] | None = None) -> tuple[str, Any]:
    """Parse one ``key=value`` command-line override; the value is read as YAML (so 1e-4, true, [a, b]).

    ``fields`` lists the settings allowed (default: those of :class:`FitConfig`).
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value", hint="For example: lr=3e-5")
    key, _, raw = text.partition("=")
    key = key.strip()
    allowed = tuple(fields) if fields is not None else FIELD_NAMES
    if key not in allowed:
        raise ConfigError(f"unknown setting{_closest(key, allowed)}", key=key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {raw!r}: {exc}", key=key) from None
    # YAML reads 5e-5 as a string (it wants a dot); numbers are what users mean.
    if isinstance(value, str) and any(c in value for c in "eE."):
        with contextlib.suppress(ValueError):
            value = float(value)
    return key, value


def load_config_file(path: str | Path, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a YAML config file of settings (flat ``key: value`` pairs); ``fields`` as in :func:`parse_override`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist", hint="Check the --config path")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of settings, got {type(data).__name__}")
    allowed = tuple(fields) if fields is not None else FIELD_NAMES
    for key in data:
        if key not in allowed:
            raise ConfigError(f"unknown setting in {p.name}{_closest(str(key), allowed)}", key=str(key))
    return dict(data)


def config_to_yaml(config: FitConfig) -> str:
    """The resolved config as YAML, in field order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def settings_table() -> str:
    """Markdown table of every setting, its default and meaning (used to write docs/config.md)."""
    rows = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for name, field in FitConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        rows.append(f"| `{name}` | `{default!r}` | {field.description or ''} |")
    return "\n".join(rows)
