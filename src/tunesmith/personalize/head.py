"""Per-user head adapters: a bias and a low-rank correction on the shared model's logits.

The shared model maps an example's encoder features ``f`` (fixed, cached once) to logits
``z``. A head adapter adds ``(f @ A) @ B + c``: a rank-``r`` correction (``A`` is ``d x r``,
``B`` is ``r x k``) and a per-class bias ``c``. ``B`` and ``c`` start at zero, so an untrained
adapter is the shared model exactly; an L2 penalty keeps it close to it when a user has few
rows. With MiniLM's 384-wide features, rank 4 and two classes, an adapter holds 1,546 numbers
(about 6 KB in float32).

An adapter is used only if it beats the shared model on that user's own validation rows
(:func:`validate_head_adapter`); otherwise the user falls back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.errors import ConfigError

MAX_ADAPTER_RANK = 1024
"""Largest rank of an adapter's low-rank update: training refuses more, and so does loading a store."""


@dataclass(frozen=True)
class HeadAdapterSettings:
    """How head adapters are trained.

    ``rank``: width of the low-rank correction (0: bias only). ``l2``: penalty on the
    adapter's weights, pulling it towards the shared model. ``steps`` and ``lr``: full-batch
    Adam steps on the user's rows.
    """

    rank: int = 4
    l2: float = 1e-2
    steps: int = 100
    lr: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.rank <= MAX_ADAPTER_RANK:
            raise ConfigError(f"must be 0 to {MAX_ADAPTER_RANK}, got {self.rank}", key="rank")
        check_training(self.l2, self.steps, self.lr)


def check_training(l2: float, steps: int, lr: float) -> None:
    """The settings every adapter's full-batch training shares: ``l2 >= 0``, ``steps >= 1``, ``lr > 0``."""
    if l2 < 0:
        raise ConfigError(f"must be at least 0, got {l2}", key="l2")
    if steps < 1:
        raise ConfigError(f"must be at least 1, got {steps}", key="steps")
    if not lr > 0:
        raise ConfigError(f"must be above 0, got {lr}", key="lr")


class HeadAdapter(nn.Module):
    """``logits + (features @ A) @ B + c`` for one user or segment."""

    def __init__(self, n_features: int, n_outputs: int, rank: int, *, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        # A random, B zero: the correction starts at exactly zero but B gets a gradient at once.
        self.A = nn.Parameter(torch.randn(n_features, rank, generator=gen) / max(1, n_features) ** 0.5)
        self.B = nn.Parameter(torch.zeros(rank, n_outputs))
        self.c = nn.Parameter(torch.zeros(n_outputs))

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        out = logits + self.c
        if self.A.shape[1]:
            out = out + (features @ self.A) @ self.B
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the store saves (``A``, ``B``, ``c``)."""
        return {"A": self.A.detach().clone(), "B": self.B.detach().clone(), "c": self.c.detach().clone()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> HeadAdapter:
        """Rebuild an adapter from :meth:`tensors`."""
        try:
            a, b, c = tensors["A"], tensors["B"], tensors["c"]
        except KeyError as exc:
            raise ConfigError(f"adapter tensors lack {exc.args[0]!r}", key="adapter") from None
        if a.shape[1] != b.shape[0] or b.shape[1] != c.shape[0]:
            raise ConfigError(f"adapter shapes do not fit: A {tuple(a.shape)}, B {tuple(b.shape)}, c {tuple(c.shape)}")
        adapter = cls(a.shape[0], c.shape[0], a.shape[1])
        with torch.no_grad():
            adapter.A.copy_(a)
            adapter.B.copy_(b)
            adapter.c.copy_(c)
        return adapter


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def fit_head_adapter(
    features: np.ndarray,
    logits: np.ndarray,
    y: np.ndarray,
    settings: HeadAdapterSettings = HeadAdapterSettings(),
    *,
    seed: int = 0,
) -> HeadAdapter:
    """Train one adapter on a user's rows: features ``(n, d)``, shared logits ``(n, k)``, class indices ``y``."""
    # Its own few full-batch Adam steps, not the shared loop in tunesmith.train: thousands of
    # users are fitted one after another on a few dozen cached rows each, with no batches,
    # epochs, validation or callbacks, and the shared loop's per-fit setup would cost more than
    # the training itself.
    f = torch.as_tensor(np.asarray(features, dtype=np.float32))
    z = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if not (len(f) == len(z) == len(t)) or len(t) == 0:
        raise ConfigError(
            f"features, logits and labels need the same, non-zero row count: {len(f)}, {len(z)}, {len(t)}"
        )
    adapter = HeadAdapter(f.shape[1], z.shape[1], settings.rank, seed=seed)
    opt = torch.optim.Adam(adapter.parameters(), lr=settings.lr)
    for _ in range(settings.steps):
        opt.zero_grad(set_to_none=True)
        penalty = sum((p**2).sum() for p in (adapter.B, adapter.c))
        loss = _loss(adapter(f, z), t) + settings.l2 * penalty
        loss.backward()
        opt.step()
    adapter.eval()
    return adapter


def _scores(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {
        "log_loss": float(_loss(logits, y)),
        "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
    }


def validate_head_adapter(
    adapter: HeadAdapter, features: np.ndarray, logits: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    """Shared vs adapted log loss and accuracy on the user's validation rows (see :func:`compare_logits`)."""
    with torch.no_grad():
        mine = adapter(
            torch.as_tensor(np.asarray(features, dtype=np.float32)),
            torch.as_tensor(np.asarray(logits, dtype=np.float32)),
        )
    return compare_logits(np.asarray(logits, dtype=np.float32), mine.numpy(), y)


def compare_logits(shared: np.ndarray, adapted: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Shared vs adapted log loss and accuracy on validation rows; ``used`` if the adapter is better.

    Better means a lower log loss: on the handful of validation rows a user has, accuracy
    moves in large steps and ties often, while log loss tells a small gain from none.
    """
    t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if len(t) == 0:
        return {"rows": 0, "used": False, "reason": "no validation rows"}
    shared_scores = _scores(torch.as_tensor(shared), t)
    mine = _scores(torch.as_tensor(adapted), t)
    return {
        "rows": len(t),
        "shared": shared_scores,
        "adapter": mine,
        "used": mine["log_loss"] < shared_scores["log_loss"],
    }


def apply_head_adapter(adapter: HeadAdapter, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Adapted logits for rows of features and shared logits."""
    with torch.no_grad():
        out = adapter(
            torch.as_tensor(np.asarray(features, dtype=np.float32)),
            torch.as_tensor(np.asarray(logits, dtype=np.float32)),
        )
    return np.asarray(out.numpy(), dtype=np.float32)
