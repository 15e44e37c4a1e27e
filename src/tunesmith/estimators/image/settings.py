"""Settings of an image fine-tuning run: :class:`ImageConfig`, validated by :func:`make_image_config`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunesmith.config import validate_settings
from tunesmith.data.image_augment import ImageAugment


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
    strategy: Literal["auto", "full", "head_only", "fewshot"] = Field(
        "auto",
        description="auto (fewshot with few images per class, else full), full (every layer), head_only, "
        "or fewshot (a closed-form head on the frozen pre-trained features).",
    )
    fewshot_head: Literal["auto", "logistic", "prototype"] = Field(
        "logistic",
        description="Head of the fewshot strategy: logistic regression, class prototypes, or auto (the better "
        "of the two by k-fold on the labels; noisy with a few images per class).",
    )
    fewshot_head_c: float = Field(1.0, gt=0, description="Inverse regularisation of the logistic head.")
    fewshot_views: int = Field(
        4, ge=0, description="With augment on: augmented copies of each image the fewshot head also learns from."
    )
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
    channels_last: bool = Field(
        True, description="Train with channels-last tensors (NHWC in memory): faster convolutions on CPUs."
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "no", description="auto: bf16 autocast where the CPU or GPU computes bf16 natively; fp16 on CUDA only."
    )
    progress: bool = True
    runs_dir: str | None = Field("runs", description="Where run records are written; null or '' writes none.")
    run_name: str | None = Field(None, description="Name of the run folder (after the timestamp).")
    checkpoints: bool = Field(
        True, description="Write checkpoints into the run folder so a killed fit resumes (fit --resume RUN)."
    )
    checkpoint_every_steps: int = Field(
        200, ge=0, description="Also checkpoint every this many batches (besides epoch ends); 0: epoch ends only."
    )
    keep_checkpoints: bool = Field(False, description="Keep the checkpoints once the fit succeeded (else removed).")

    @field_validator("augment", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            return ImageAugment.preset(value)
        return value


def make_image_config(params: dict[str, Any]) -> ImageConfig:
    """Validate ``params`` into an :class:`ImageConfig`, raising :class:`ConfigError` on the first problem."""
    return validate_settings(ImageConfig, params)
