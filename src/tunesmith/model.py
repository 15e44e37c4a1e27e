"""The network that is fine-tuned: a backbone, dropout and a new linear head."""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.backbones.text import TextBackbone


class Head(nn.Module):
    """Dropout then a linear layer: pooled vector -> logits (or one value for regression)."""

    def __init__(self, in_features: int, out_features: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features))


class TextModel(nn.Module):
    """Backbone + head. ``forward`` takes a padded batch and returns logits ``(batch, outputs)``."""

    def __init__(self, backbone: TextBackbone, n_outputs: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = Head(backbone.hidden_size, n_outputs, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(input_ids, attention_mask))


class FeatureModel(nn.Module):
    """The head alone, fed with cached backbone features (head-only training).

    When the backbone is frozen its output never changes, so it is computed once and the
    epochs train only the head: the same model as :class:`TextModel` at a tiny fraction
    of the cost.
    """

    def __init__(self, head: Head) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)
