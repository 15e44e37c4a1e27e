"""Personalisation: per-user and per-segment adapters on one shared model.

- :class:`AdapterStore`: one safetensors file per adapter plus an index; add, replace and
  delete one adapter at a time; routing user -> segment -> shared model.
- :func:`fit_head_adapter` / :func:`validate_head_adapter`: a bias and a low-rank correction on
  the shared model's logits, over cached encoder features; used only where it beats the
  shared model on the user's own validation rows.
"""

from tunesmith.personalize.head import (
    HeadAdapter,
    HeadAdapterSettings,
    apply_head_adapter,
    fit_head_adapter,
    validate_head_adapter,
)
from tunesmith.personalize.store import AdapterStore, Route, adapter_key

__all__ = [
    "AdapterStore",
    "HeadAdapter",
    "HeadAdapterSettings",
    "Route",
    "adapter_key",
    "apply_head_adapter",
    "fit_head_adapter",
    "validate_head_adapter",
]
