"""Backbone registry: ``create_backbone(name_or_path)`` gives an encoder that honours one contract."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from tunesmith.backbones.text import TextBackbone, load_hf_folder, minilm_l6, tiny_text
from tunesmith.errors import ConfigError

BackboneFactory = Callable[..., TextBackbone]

_REGISTRY: dict[str, tuple[BackboneFactory, str]] = {}


def register_backbone(name: str, description: str = "") -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory under ``name`` (used as ``FineTuner(backbone=name)``)."""

    def wrap(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ConfigError(f"backbone name {name!r} is already registered", key="backbone")
        _REGISTRY[name] = (factory, description)
        return factory

    return wrap


def list_backbones() -> dict[str, str]:
    """Registered backbone names and their one-line descriptions."""
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def create_backbone(name_or_path: str, *, pooling: str = "mean") -> TextBackbone:
    """Create a backbone by registered name, or from a local Hugging Face model folder."""
    if name_or_path in _REGISTRY:
        factory, _ = _REGISTRY[name_or_path]
        return factory(pooling=pooling)
    if Path(name_or_path).exists():
        return load_hf_folder(name_or_path, pooling=pooling)
    match = difflib.get_close_matches(name_or_path, list(_REGISTRY), n=1)
    hint = f"Did you mean {match[0]!r}? " if match else ""
    raise ConfigError(
        f"unknown backbone {name_or_path!r}",
        key="backbone",
        hint=hint + f"Registered: {', '.join(sorted(_REGISTRY))}; or give a local Hugging Face model folder",
    )


register_backbone("minilm-l6", "all-MiniLM-L6-v2 sentence encoder, 22.7M parameters (offline package)")(minilm_l6)
register_backbone("tiny-text", "2-layer random BERT built in code, for tests")(tiny_text)

__all__ = ["TextBackbone", "create_backbone", "is_registered", "list_backbones", "register_backbone"]
