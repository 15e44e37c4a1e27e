"""Continuing a trained network on new data without forgetting the old.

The methods a refit combines (each measured in ``bench/refit.py``; see docs/refit.md):

* **replay**: a stratified sample of the old rows trains beside the new ones;
* **L2-SP** (Li et al., 2018): a penalty ``weight * sum((w - w0)^2)`` that pulls every weight
  toward the current model's, so the update moves only as far as the new data asks;
* **LoRA on the frozen current model**: low-rank adapters train while the current weights stay
  as they are, then merge into them;
* **WiSE-FT** (Wortsman et al., 2022): the refitted weights are interpolated with the current
  ones, ``w0 + alpha * (w1 - w0)``, and ``alpha`` is chosen on held-out rows of both periods.

:class:`RefitSettings` holds the choice; :meth:`RefitSettings.plan` turns a ``method`` name
into the components, so ``method="auto"`` (the default) and single methods read the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

RefitMethod = Literal["auto", "naive", "replay", "l2sp", "lora", "wise"]
REFIT_METHODS: tuple[str, ...] = ("auto", "naive", "replay", "l2sp", "lora", "wise")

DEFAULT_ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
"""Interpolation weights WiSE-FT tries (1.0 is the refitted model itself)."""


class RefitSettings(BaseModel):
    """How a fitted model continues on new labeled data (``estimator.refit(new, **settings)``).

    ``method`` picks a combination; the other fields tune it. ``auto`` is replay of old rows
    (when old data is given) with L2-SP toward the current weights and a WiSE-FT
    interpolation chosen on held-out rows: the combination that lost least on the old test
    split at no cost on the new one in ``bench/refit.py``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: RefitMethod = Field("auto", description="auto, naive, replay, l2sp, lora or wise.")
    replay_ratio: float = Field(
        1.0, ge=0.0, le=100.0, description="Old rows replayed per new training row (needs replay data)."
    )
    penalty_weight: float = Field(0.01, ge=0.0, description="Strength of the L2-SP pull toward the current weights.")
    alphas: tuple[float, ...] = Field(DEFAULT_ALPHAS, description="WiSE-FT weights tried on held-out rows.")
    epochs: int | None = Field(None, gt=0, description="Passes over new + replayed rows; None: the kind's default.")
    lr: float | None = Field(None, gt=0.0, description="Learning rate; None: the kind's default for refits.")
    valid_size: float = Field(
        0.15, gt=0.0, lt=0.5, description="Share of the new rows held out to stop early and choose alpha."
    )
    seed: int = Field(0, description="Seed of the replay sample, the held-out rows and training.")

    def plan(self, has_replay: bool) -> RefitPlan:
        """The components ``method`` stands for, given whether old rows were supplied."""
        m = self.method
        return RefitPlan(
            method=m,
            replay=has_replay and self.replay_ratio > 0 and m in ("auto", "replay"),
            replay_ratio=self.replay_ratio,
            penalty=self.penalty_weight if m in ("auto", "l2sp") and self.penalty_weight > 0 else 0.0,
            adapters=m == "lora",
            interpolate=m in ("auto", "wise"),
            alphas=tuple(sorted({float(a) for a in self.alphas if 0.0 < a <= 1.0} | {1.0})),
        )


@dataclass(frozen=True)
class RefitPlan:
    """What a refit does: the components of its ``method``."""

    method: str
    replay: bool
    replay_ratio: float
    penalty: float
    adapters: bool
    interpolate: bool
    alphas: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "replay": self.replay,
            "replay_ratio": self.replay_ratio if self.replay else 0.0,
            "l2sp_weight": self.penalty,
            "lora": self.adapters,
            "wise_ft": self.interpolate,
        }


def anchor_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every floating-point parameter and buffer (the weights to stay near)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


class AnchorPenalty(nn.Module):
    """L2-SP: ``weight * sum((w - w0)^2)`` over the trainable parameters that have an anchor.

    Parameters without an anchor of the same shape (a new head) are free. The penalty is zero
    while gradients are off, so validation losses stay comparable with a plain fit's.
    """

    def __init__(self, module: nn.Module, anchor: Mapping[str, torch.Tensor], weight: float) -> None:
        super().__init__()
        self.weight = float(weight)
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, p in module.named_parameters():
            a = anchor.get(name)
            if a is not None and a.shape == p.shape:
                self._pairs.append((p, a.to(p.device, p.dtype)))

    def forward(self) -> torch.Tensor:
        if not self._pairs or self.weight == 0.0 or not torch.is_grad_enabled():
            return torch.zeros(())
        for i, (p, a) in enumerate(self._pairs):
            if a.device != p.device:
                # the module moved after the penalty was built (accelerate's prepare puts it on the GPU)
                self._pairs[i] = (p, a.to(p.device, p.dtype))
        total = sum(((p - a) ** 2).sum() for p, a in self._pairs if p.requires_grad)
        return self.weight * total if isinstance(total, torch.Tensor) else torch.zeros(())


class PenalisedLoss(nn.Module):
    """A training loss plus a penalty on the weights (``loss(out, y) + penalty()``)."""

    def __init__(self, loss: nn.Module, penalty: AnchorPenalty) -> None:
        super().__init__()
        self.loss = loss
        self.penalty = penalty

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        base = self.loss(output, target)
        return base + self.penalty().to(base.device, base.dtype)


def interpolate_state(
    anchor: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """WiSE-FT weights ``w0 + alpha * (w1 - w0)`` for every floating tensor both states share.

    Tensors only ``tuned`` has (or of another shape), and integer buffers (BatchNorm's counts),
    are taken from ``tuned``.
    """
    out: dict[str, torch.Tensor] = {}
    for k, w1 in tuned.items():
        w0 = anchor.get(k)
        if w0 is None or w0.shape != w1.shape or not w1.is_floating_point():
            out[k] = w1
        else:
            w0 = w0.to(w1.device, w1.dtype)
            out[k] = w0 + alpha * (w1 - w0)
    return out


def choose_alpha(
    score: Callable[[float], Sequence[float]], alphas: Iterable[float]
) -> tuple[float, list[dict[str, Any]]]:
    """The interpolation weight whose held-out scores are best on average, and every trial.

    ``score(alpha)`` returns one score per held-out period (higher is better; the new rows'
    and, when old rows were held out too, the old rows'): their mean decides, so neither
    period is traded away for the other. Ties go to the larger ``alpha`` (more of the refit).
    """
    trials: list[dict[str, Any]] = []
    best_alpha, best = 1.0, float("-inf")
    for alpha in sorted(set(alphas)):
        scores = [float(s) for s in score(alpha)]
        mean = sum(scores) / len(scores) if scores else float("-inf")
        trials.append({"alpha": alpha, "scores": scores, "mean": mean})
        if mean >= best - 1e-12:
            best_alpha, best = alpha, mean
    return best_alpha, trials
