"""Per-user LoRA adapters on the shared encoder's last feed-forward block.

The shared model's last transformer layer ends with ``LayerNorm(W h + b + x)``: ``h`` is the
feed-forward block's inner activation of each token (``4d`` wide), ``x`` the attention output
it adds back. A LoRA adapter adds a rank-``r`` update ``(h @ A) @ B`` to ``W h`` for one user's
rows. ``A`` is a fixed random projection, seeded, and only ``B`` is trained (as in LoRA-FA,
Zhang et al., 2023), so ``h @ A`` is computed once per user. Unlike a head adapter it acts on
every token before the LayerNorm and the pooling, so it can reweight words and their context,
not only the pooled vector.

Why only that one projection: everything below it is the shared model's and is computed once
per row (``h`` and the LayerNorm's input ``W h + b + x`` are captured on the way through);
training a user's adapter then costs two thin matrix products per step instead of a pass
through the encoder: the cost of an adapter is one no-gradient encoder pass over its rows.
With MiniLM (``d = 384``) and rank 4 an adapter holds 7,680 numbers (30 KB in float32).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.personalize.head import MAX_ADAPTER_RANK, check_training


@dataclass(frozen=True)
class LoraAdapterSettings:
    """How LoRA adapters are trained.

    ``rank`` and ``alpha`` (the update is scaled by ``alpha / rank``); ``l2`` on ``B``; full-batch
    Adam ``steps`` at ``lr``.
    """

    rank: int = 4
    alpha: float = 8.0
    l2: float = 1e-2
    steps: int = 40
    lr: float = 0.02

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= MAX_ADAPTER_RANK:
            raise ConfigError(f"must be 1 to {MAX_ADAPTER_RANK}, got {self.rank}", key="lora_rank")
        check_training(self.l2, self.steps, self.lr)
        if not self.alpha > 0:
            raise ConfigError(f"must be above 0, got {self.alpha}", key="lora_alpha")


def lora_projection(n_inner: int, rank: int, seed: int) -> torch.Tensor:
    """The fixed ``A`` of an adapter: seeded Gaussian, scaled so ``h @ A`` keeps ``h``'s scale."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_inner, rank, generator=gen) / n_inner**0.5


def last_ffn_output(backbone: Any) -> nn.Module:
    """The last layer's feed-forward output block (``dense`` + ``LayerNorm``) of a BERT-like encoder."""
    layer = backbone.layer_groups()[-1]
    out = getattr(layer, "output", None)
    if out is None or not isinstance(getattr(out, "dense", None), nn.Linear) or getattr(out, "LayerNorm", None) is None:
        raise ConfigError(
            f"backbone {backbone.name!r} has no BERT-like feed-forward output block in its last layer",
            key="adapter_kind",
            hint="Use adapter_kind='head', which works with any backbone",
        )
    return out


@dataclass
class Tapped:
    """What the last feed-forward block saw for a padded batch.

    ``h``: inner activations ``(n, t, 4d)``; ``pre``: the block's output before its LayerNorm,
    ``W h + b + x`` ``(n, t, d)``; ``mask``: ``(n, t)``. Keeping ``pre`` means an adapter's step
    never recomputes the shared projection.
    """

    h: torch.Tensor
    pre: torch.Tensor
    mask: torch.Tensor
    #: ``h`` already multiplied by an adapter's fixed ``A`` (``(n, t, r)``): what training keeps.
    projected: bool = False


@contextmanager
def tap_last_ffn(backbone: Any) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record ``(h, W h + b + x)`` of the last feed-forward output block on every forward pass."""
    module = last_ffn_output(backbone)
    norm = module.get_submodule("LayerNorm")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    inner: list[torch.Tensor] = []

    def take_h(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inner.append((args[0] if args else kwargs["hidden_states"]).detach())

    def take_pre(_: nn.Module, args: tuple[Any, ...]) -> None:
        # The LayerNorm's input is exactly W h + b + x (dropout is off at inference).
        seen.append((inner.pop(), args[0].detach()))

    handles = [
        module.register_forward_pre_hook(take_h, with_kwargs=True),
        norm.register_forward_pre_hook(take_pre),
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The backbone's pooling (``mean`` under the mask, or ``cls``)."""
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class LoraAdapter(nn.Module):
    """A rank-``r`` update of the last feed-forward projection, ``W h + scale * (h @ A) @ B``."""

    def __init__(self, n_inner: int, n_hidden: int, rank: int, *, alpha: float = 8.0, seed: int = 0) -> None:
        super().__init__()
        # A fixed and random, B zero: the update starts at exactly zero but B gets a gradient at once.
        self.A = nn.Parameter(lora_projection(n_inner, rank, seed), requires_grad=False)
        self.B = nn.Parameter(torch.zeros(rank, n_hidden))
        self.scale = float(alpha) / rank

    def hidden(self, ffn: nn.Module, tapped: Tapped) -> torch.Tensor:
        """The last layer's token vectors with this adapter applied."""
        return _finish(ffn, tapped, self.project(tapped) @ self.B * self.scale)

    def project(self, tapped: Tapped) -> torch.Tensor:
        """``h @ A`` of tapped rows (``h`` itself when it was projected while tapping)."""
        if tapped.projected:
            if tapped.h.shape[-1] != self.A.shape[1]:
                raise ConfigError(
                    f"rows were projected to width {tapped.h.shape[-1]}, the adapter has rank {self.A.shape[1]}"
                )
            return tapped.h
        return tapped.h @ self.A

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the store saves (``A``, ``B``, ``scale``)."""
        return {"A": self.A.detach().clone(), "B": self.B.detach().clone(), "scale": torch.tensor(self.scale)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> LoraAdapter:
        """Rebuild an adapter from :meth:`tensors`."""
        try:
            a, b, scale = tensors["A"], tensors["B"], tensors["scale"]
        except KeyError as exc:
            raise ConfigError(f"LoRA adapter tensors lack {exc.args[0]!r}", key="adapter") from None
        if a.shape[1] != b.shape[0]:
            raise ConfigError(f"LoRA adapter shapes do not fit: A {tuple(a.shape)}, B {tuple(b.shape)}")
        adapter = cls(a.shape[0], b.shape[1], a.shape[1], alpha=float(scale) * a.shape[1])
        with torch.no_grad():
            adapter.A.copy_(a)
            adapter.B.copy_(b)
        return adapter


def lora_logits(
    adapter: LoraAdapter | None, ffn: nn.Module, head: nn.Module, tapped: Tapped, pooling: str
) -> torch.Tensor:
    """Logits of tapped rows through ``adapter`` (``None``: the shared model), the pooling and the shared head."""
    hidden = _finish(ffn, tapped, None) if adapter is None else adapter.hidden(ffn, tapped)
    return head(pool(hidden, tapped.mask, pooling))


def _finish(ffn: nn.Module, tapped: Tapped, delta: torch.Tensor | None) -> torch.Tensor:
    """``LayerNorm(pre [+ delta])``: the block's output, with the adapter's update if given."""
    norm = ffn.get_submodule("LayerNorm")
    return norm(tapped.pre if delta is None else tapped.pre + delta)


def concat_tapped(parts: Sequence[Tapped]) -> Tapped:
    """One padded batch from several (widths may differ)."""
    width = max(p.h.shape[1] for p in parts)

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = width - t.shape[1]
        if not extra:
            return t
        shape = (t.shape[0], extra, *t.shape[2:])
        return torch.cat([t, torch.zeros(shape, dtype=t.dtype)], dim=1)

    projected = {p.projected for p in parts}
    if len(projected) != 1:
        raise ConfigError("cannot join projected and unprojected tapped rows")
    return Tapped(
        torch.cat([pad(p.h) for p in parts]),
        torch.cat([pad(p.pre) for p in parts]),
        torch.cat([pad(p.mask) for p in parts]),
        projected.pop(),
    )


def subset(t: Tapped, rows: Sequence[int] | np.ndarray) -> Tapped:
    """The given rows of a tapped batch."""
    idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    return Tapped(t.h[idx], t.pre[idx], t.mask[idx], t.projected)


def rows_between(t: Tapped, start: int, stop: int) -> Tapped:
    """Rows ``start:stop`` of a tapped batch, as views (no copy)."""
    return Tapped(t.h[start:stop], t.pre[start:stop], t.mask[start:stop], t.projected)


def fit_lora_adapter(
    ffn: nn.Module,
    head: nn.Module,
    pooling: str,
    tapped: Tapped,
    y: np.ndarray,
    settings: LoraAdapterSettings = LoraAdapterSettings(),
    *,
    seed: int = 0,
) -> LoraAdapter:
    """Train one adapter on a user's tapped rows; the shared block and head stay frozen.

    Rows tapped with ``projected=True`` must have been multiplied by
    ``lora_projection(n_inner, settings.rank, seed)``, the adapter's fixed ``A``.
    """
    t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if len(t) != tapped.h.shape[0] or len(t) == 0:
        raise ConfigError(f"tapped rows and labels need the same, non-zero count: {tapped.h.shape[0]}, {len(t)}")
    dense = ffn.get_submodule("dense")
    n_inner = int(dense.in_features) if isinstance(dense, nn.Linear) else int(tapped.h.shape[2])
    adapter = LoraAdapter(n_inner, tapped.pre.shape[2], settings.rank, alpha=settings.alpha, seed=seed)
    # A stays the fixed random projection it was seeded with and only B learns (LoRA-FA): then
    # h @ A is computed once (or already was, while tapping), and each step is a product of width r.
    with torch.no_grad():
        projected = Tapped(adapter.project(tapped), tapped.pre, tapped.mask, projected=True)
    # Full-batch steps here rather than tunesmith.train's loop: one small fit per user over
    # tensors already tapped, with no batches, epochs or callbacks (see fit_head_adapter).
    opt = torch.optim.Adam([adapter.B], lr=settings.lr)
    shared = [*ffn.parameters(), *head.parameters()]
    # The shared block and head are frozen for the duration: no gradients computed or kept for them.
    was = ([m.training for m in (ffn, head)], [p.requires_grad for p in shared])
    ffn.eval()
    head.eval()
    for p in shared:
        p.requires_grad_(False)
    try:
        for _ in range(settings.steps):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(lora_logits(adapter, ffn, head, projected, pooling), t)
            loss = loss + settings.l2 * (adapter.B**2).sum()
            loss.backward()
            opt.step()
    finally:
        ffn.train(was[0][0])
        head.train(was[0][1])
        for p, flag in zip(shared, was[1], strict=True):
            p.requires_grad_(flag)
    adapter.eval()
    return adapter
