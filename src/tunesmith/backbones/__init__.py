"""Backbone registry: ``create_backbone(name_or_path)`` gives an encoder that honours one contract."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path

from tunesmith.backbones.image import ImageBackbone, efficientnet_lite0, load_image_folder, tiny_image
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


ImageFactory = Callable[..., ImageBackbone]
_IMAGE_REGISTRY: dict[str, tuple[ImageFactory, str]] = {}


def register_image_backbone(name: str, description: str = "") -> Callable[[ImageFactory], ImageFactory]:
    """Register an image backbone factory (called as ``factory(image_size=...)``)."""

    def wrap(factory: ImageFactory) -> ImageFactory:
        if name in _REGISTRY or name in _IMAGE_REGISTRY:
            raise ConfigError(f"backbone name {name!r} is already registered", key="backbone")
        _IMAGE_REGISTRY[name] = (factory, description)
        return factory

    return wrap


def list_backbones() -> dict[str, str]:
    """Registered backbone names and their one-line descriptions (text and image)."""
    both = {**{k: v for k, (_, v) in _REGISTRY.items()}, **{k: v for k, (_, v) in _IMAGE_REGISTRY.items()}}
    return dict(sorted(both.items()))


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered backbone (text or image)."""
    return name in _REGISTRY or name in _IMAGE_REGISTRY


def is_text_backbone(name: str) -> bool:
    """Whether ``name`` is a registered text backbone (built in code or from an installed package).

    A saved head-only model's metadata may name one of these; any other name (a local
    folder) is opened only when the caller gives it (see :meth:`tunesmith.FineTuner.load`).
    """
    return name in _REGISTRY


def backbone_modality(name_or_path: str) -> str:
    """``"image"`` or ``"text"`` for a registered name or a local backbone folder."""
    if name_or_path in _IMAGE_REGISTRY:
        return "image"
    if name_or_path in _REGISTRY:
        return "text"
    cfg = Path(name_or_path) / "config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return "text"
        if isinstance(data, dict) and "architecture" in data and "model_type" not in data:
            return "image"
    return "text"


def create_image_backbone(name_or_path: str, *, image_size: int | None = None) -> ImageBackbone:
    """An image backbone by registered name, or from a local folder (see :func:`load_image_folder`)."""
    if name_or_path in _IMAGE_REGISTRY:
        factory, _ = _IMAGE_REGISTRY[name_or_path]
        return factory() if image_size is None else factory(image_size=image_size)
    if Path(name_or_path).is_dir():
        return load_image_folder(name_or_path, image_size=image_size)
    match = difflib.get_close_matches(name_or_path, list(_IMAGE_REGISTRY), n=1)
    hint = f"Did you mean {match[0]!r}? " if match else ""
    raise ConfigError(
        f"unknown image backbone {name_or_path!r}",
        key="backbone",
        hint=hint + f"Registered: {', '.join(sorted(_IMAGE_REGISTRY))}; or give a local folder with config.json",
    )


def create_backbone(name_or_path: str, *, pooling: str = "mean") -> TextBackbone:
    """Create a text backbone by registered name, or from a local Hugging Face model folder."""
    if name_or_path in _IMAGE_REGISTRY:
        raise ConfigError(
            f"{name_or_path!r} is an image backbone, but this model reads text",
            key="backbone",
            hint="Use ImageFineTuner (tunesmith fit on an image folder or --image-column) for images",
        )
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
register_image_backbone(
    "efficientnet-lite0", "EfficientNet-Lite0 image CNN, ImageNet, 4.7M parameters (offline package)"
)(efficientnet_lite0)
register_image_backbone("tiny-image", "3-stage random CNN with BatchNorm built in code, for tests")(tiny_image)

__all__ = [
    "ImageBackbone",
    "TextBackbone",
    "backbone_modality",
    "create_backbone",
    "create_image_backbone",
    "is_registered",
    "is_text_backbone",
    "list_backbones",
    "register_backbone",
    "register_image_backbone",
]
