"""Losses for classification and regression, with class weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.errors import ConfigError


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): down-weights easy examples by ``(1 - p_t) ** gamma``."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=-1)
        log_pt = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -((1.0 - log_pt.exp()) ** self.gamma) * log_pt
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


def class_weights(
    spec: str | Mapping[Any, float] | None, y_train: np.ndarray, labels: Sequence[str]
) -> torch.Tensor | None:
    """Per-class loss weights: ``"balanced"`` (n / (k * count), as scikit-learn) or ``{label: w}``."""
    if spec is None:
        return None
    k = len(labels)
    if spec == "balanced":
        counts = np.bincount(y_train, minlength=k).astype(np.float64)
        counts[counts == 0] = 1.0
        return torch.tensor(len(y_train) / (k * counts), dtype=torch.float32)
    if isinstance(spec, Mapping):
        from tunesmith.data.schema import label_string

        # Keys may be written as the labels' own values (0, 1, True): compare their label strings.
        spec = {label_string(k): float(v) for k, v in spec.items()}
        unknown = [lbl for lbl in spec if lbl not in labels]
        if unknown:
            raise ConfigError(
                f"label {unknown[0]!r} is not a class of the target",
                key="class_weight",
                hint=f"Known labels: {', '.join(labels)}",
            )
        weights = [float(spec.get(lbl, 1.0)) for lbl in labels]
        if any(w <= 0 for w in weights):
            raise ConfigError("every class weight must be > 0", key="class_weight")
        return torch.tensor(weights, dtype=torch.float32)
    raise ConfigError(f"must be 'balanced', a mapping of label to weight, or null; got {spec!r}", key="class_weight")


def make_loss(
    name: str,
    task: str,
    *,
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
    huber_delta: float = 1.0,
    weight: torch.Tensor | None = None,
) -> nn.Module:
    """The loss module for ``name`` ("auto" picks cross-entropy or MSE by task)."""
    regression = task == "regression"
    if name == "auto":
        name = "mse" if regression else "cross_entropy"
    if regression and name in ("cross_entropy", "focal"):
        raise ConfigError(
            f"{name!r} is a classification loss but the task is regression",
            key="loss",
            hint="Use mse or huber",
        )
    if not regression and name in ("mse", "huber"):
        raise ConfigError(
            f"{name!r} is a regression loss but the task is {task}",
            key="loss",
            hint="Use cross_entropy or focal",
        )
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(gamma=focal_gamma, weight=weight)
    if name == "mse":
        return nn.MSELoss()
    if name == "huber":
        return nn.HuberLoss(delta=huber_delta)
    raise ConfigError(f"unknown loss {name!r}", key="loss")
