"""Seeded image augmentation: flips, rotation, random resized crop, colour jitter, noise, mixup, cutmix.

:class:`ImageAugment` holds the settings (everything off by default; see
:meth:`ImageAugment.preset`). :func:`augment_batch` changes each image of a float batch
``(B, 3, H, W)`` in ``[0, 1]`` on its own; :func:`mix_batch` mixes images of a batch and
returns soft targets.

Every random draw comes from the ``torch.Generator`` passed in (a CPU generator, whatever
device the batch is on), so the same seed gives byte-identical batches; nothing here reads
or changes global random state. Draws are laid out the same whatever settings are on, so
turning one operation on or off does not change the draws of the others.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.errors import ConfigError, DataError

PRESETS = ("none", "light", "standard", "digits")
"""Names accepted by :meth:`ImageAugment.preset`."""

# Luma weights of ITU-R BT.601, as torchvision's rgb_to_grayscale.
_GRAY = (0.299, 0.587, 0.114)

# Columns of the per-example uniform draws of augment_batch.
_HFLIP, _VFLIP, _ANGLE, _SCALE, _RATIO, _CX, _CY, _BRIGHT, _CONTRAST, _SAT = range(10)
_N_DRAWS = 10

_PRESET_VALUES: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"hflip": 0.5, "crop_scale": (0.8, 1.0), "brightness": 0.1, "contrast": 0.1, "saturation": 0.1},
    "standard": {
        "hflip": 0.5,
        "rotate": 10.0,
        "crop_scale": (0.6, 1.0),
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
        "noise": 0.02,
    },
    "digits": {"rotate": 10.0, "crop_scale": (0.85, 1.0), "noise": 0.02},
}


class ImageAugment(BaseModel):
    """Settings of image augmentation; every operation is off by default.

    Build with keywords (a pydantic ``ValidationError`` names a bad field), with
    :meth:`from_options` (a :class:`~tunesmith.errors.ConfigError` instead) or from a
    :meth:`preset`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    hflip: float = Field(0.0, ge=0.0, le=1.0, description="Probability of flipping an image left-right.")
    vflip: float = Field(0.0, ge=0.0, le=1.0, description="Probability of flipping an image upside down.")
    rotate: float = Field(
        0.0, ge=0.0, le=180.0, description="Largest rotation in degrees; the angle is uniform in [-rotate, rotate]."
    )
    crop_scale: tuple[float, float] = Field(
        (1.0, 1.0),
        description=(
            "Random resized crop: (min, max) fraction of the image area kept, each in (0, 1]. "
            "(1.0, 1.0) turns cropping off."
        ),
    )
    crop_ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3),
        description="Random resized crop: (min, max) aspect ratio (width / height) of the crop, log-uniform.",
    )
    brightness: float = Field(
        0.0, ge=0.0, le=10.0, description="Brightness jitter: factor uniform in [max(0, 1 - b), 1 + b]."
    )
    contrast: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Contrast jitter around the image's mean gray: factor uniform in [max(0, 1 - c), 1 + c].",
    )
    saturation: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Saturation jitter (blend with the grayscale image): factor uniform in [max(0, 1 - s), 1 + s].",
    )
    noise: float = Field(0.0, ge=0.0, le=1.0, description="Standard deviation of Gaussian noise on the [0, 1] scale.")
    mixup: float = Field(
        0.0, ge=0.0, le=100.0, description="Mixup alpha: the mixing weight is Beta(alpha, alpha); 0 turns mixup off."
    )
    cutmix: float = Field(
        0.0, ge=0.0, le=100.0, description="CutMix alpha: the kept area is Beta(alpha, alpha); 0 turns cutmix off."
    )
    mix_prob: float = Field(
        1.0, ge=0.0, le=1.0, description="Probability that a batch is mixed when mixup or cutmix is on."
    )
    padding: Literal["reflection", "border"] = Field(
        "reflection", description="How rotation and cropping fill pixels from outside the image."
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> ImageAugment:
        low, high = self.crop_scale
        if not (0.0 < low <= 1.0 and 0.0 < high <= 1.0):
            raise ValueError(f"crop_scale: both values must be in (0, 1], got {self.crop_scale}")
        if low > high:
            raise ValueError(f"crop_scale: min must be <= max, got {self.crop_scale}")
        low, high = self.crop_ratio
        if not (0.0 < low < math.inf and 0.0 < high < math.inf):
            raise ValueError(f"crop_ratio: both values must be > 0, got {self.crop_ratio}")
        if low > high:
            raise ValueError(f"crop_ratio: min must be <= max, got {self.crop_ratio}")
        return self

    @classmethod
    def preset(cls, name: str) -> ImageAugment:
        """Settings by name: ``"none"``; ``"light"`` (flips, mild crop and colour jitter);
        ``"standard"`` (flips, 10 degree rotation, crop to 60 % of the area, colour jitter 0.2,
        noise 0.02); ``"digits"`` (no flips, which would change a digit's meaning: rotation
        10, crop to 85 %, noise 0.02)."""
        if name not in _PRESET_VALUES:
            raise ConfigError(
                f"unknown augmentation preset {name!r}", key="preset", hint=f"Use one of {', '.join(PRESETS)}"
            )
        return cls(**_PRESET_VALUES[name])

    @classmethod
    def from_options(cls, **values: Any) -> ImageAugment:
        """Settings from keywords, raising :class:`~tunesmith.errors.ConfigError` naming the bad one."""
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                import difflib

                close = difflib.get_close_matches(loc, list(cls.model_fields), n=1)
                raise ConfigError(
                    "unknown setting", key=loc, hint=f"Did you mean {close[0]!r}?" if close else None
                ) from None
            if not loc and ":" in msg:
                loc, msg = (part.strip() for part in msg.split(":", 1))
            raise ConfigError(f"{msg} (got {err.get('input')!r})" if loc else msg, key=loc or None) from None

    @property
    def crops(self) -> bool:
        """Whether random resized cropping is on."""
        return self.crop_scale != (1.0, 1.0)

    @property
    def per_image(self) -> bool:
        """Whether :func:`augment_batch` changes anything."""
        return bool(
            self.hflip
            or self.vflip
            or self.rotate
            or self.crops
            or self.brightness
            or self.contrast
            or self.saturation
            or self.noise
        )

    @property
    def enabled(self) -> bool:
        """Whether any augmentation (per image or mixing) is on."""
        return self.per_image or (self.needs_soft_targets and self.mix_prob > 0)

    @property
    def needs_soft_targets(self) -> bool:
        """Whether mixup or cutmix is on, so training needs soft targets."""
        return self.mixup > 0 or self.cutmix > 0


def _check_batch(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"images {shape}: expected a float tensor (B, 3, H, W) in [0, 1]")
    return x


def _check_generator(generator: Any) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"must be a torch.Generator, got {type(generator).__name__}", key="generator")
    return generator


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _affine(x: torch.Tensor, u: torch.Tensor, cfg: ImageAugment) -> torch.Tensor:
    """Rotation and random resized crop as one affine warp (``u`` on the batch's device)."""
    b, _, h, w = x.shape
    dtype = torch.float64
    u = u.to(dtype)
    # Crop size as fractions of the image width and height, in the crop's pixel aspect.
    if cfg.crops:
        area = _uniform(u[:, _SCALE], *cfg.crop_scale)
        log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        ratio = torch.exp(_uniform(u[:, _RATIO], log_lo, log_hi))
        fw = torch.sqrt(area * ratio * h / w).clamp(max=1.0)
        fh = torch.sqrt(area / ratio * w / h).clamp(max=1.0)
        tx = (2 * u[:, _CX] - 1) * (1 - fw)
        ty = (2 * u[:, _CY] - 1) * (1 - fh)
    else:
        fw = fh = torch.ones(b, dtype=dtype, device=u.device)
        tx = ty = torch.zeros(b, dtype=dtype, device=u.device)
    angle = torch.deg2rad(_uniform(u[:, _ANGLE], -cfg.rotate, cfg.rotate))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # input = crop(rotate(output)), rotation done in pixel units: diag(1/w, 1/h) R diag(w, h).
    theta = torch.zeros(b, 2, 3, dtype=dtype, device=u.device)
    theta[:, 0, 0] = fw * cos
    theta[:, 0, 1] = fw * (-sin * h / w)
    theta[:, 1, 0] = fh * (sin * w / h)
    theta[:, 1, 1] = fh * cos
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=cfg.padding, align_corners=False)


def augment_batch(x: torch.Tensor, cfg: ImageAugment, generator: torch.Generator) -> torch.Tensor:
    """Augment each image of ``x`` (float ``(B, C, H, W)`` in ``[0, 1]``, ``C`` 3 or 1) on its own.

    In order: flips (exact pixel flips), rotation and random resized crop (one bilinear
    affine warp, padded by reflection or the border), brightness, contrast (around each
    image's mean gray) and saturation (blending with the grayscale image) jitter like
    torchvision's ``ColorJitter`` in a fixed order, then Gaussian noise; the result is
    clamped to ``[0, 1]``. Shape, dtype and device are kept. With nothing on, a copy of
    ``x`` is returned and no random numbers are drawn.

    All randomness comes from ``generator`` (a CPU ``torch.Generator``): the same generator
    state gives byte-identical output.
    """
    x = _check_batch(x)
    generator = _check_generator(generator)
    if not cfg.per_image:
        return x.clone()
    b = x.shape[0]
    u_cpu = torch.rand((b, _N_DRAWS), generator=generator, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32) if cfg.noise > 0 else None
    u = u_cpu.to(x.device)
    out = x
    view = (b, 1, 1, 1)
    if cfg.hflip > 0:
        out = torch.where((u[:, _HFLIP] < cfg.hflip).view(view), out.flip(-1), out)
    if cfg.vflip > 0:
        out = torch.where((u[:, _VFLIP] < cfg.vflip).view(view), out.flip(-2), out)
    if cfg.rotate > 0 or cfg.crops:
        out = _affine(out, u, cfg)
    if cfg.brightness > 0:
        factor = _uniform(u[:, _BRIGHT], max(0.0, 1 - cfg.brightness), 1 + cfg.brightness).to(x.dtype)
        out = (out * factor.view(view)).clamp(0, 1)
    if cfg.contrast > 0:
        factor = _uniform(u[:, _CONTRAST], max(0.0, 1 - cfg.contrast), 1 + cfg.contrast).to(x.dtype).view(view)
        mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
        out = (factor * out + (1 - factor) * mean).clamp(0, 1)
    if cfg.saturation > 0 and x.shape[1] == 3:
        factor = _uniform(u[:, _SAT], max(0.0, 1 - cfg.saturation), 1 + cfg.saturation).to(x.dtype).view(view)
        out = (factor * out + (1 - factor) * _gray(out)).clamp(0, 1)
    if noise is not None:
        out = out + cfg.noise * noise.to(device=x.device, dtype=x.dtype)
    out = out.clamp(0, 1)
    return out if out is not x else x.clone()


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha) from two Gamma draws of ``generator``."""
    conc = torch.full((2,), float(alpha), dtype=torch.float64)
    g = torch._standard_gamma(conc, generator=generator)
    total = float(g.sum())
    if not total > 0:  # both draws underflowed (tiny alpha): the Beta mass sits at 0 and 1
        return 1.0 if float(torch.rand((), generator=generator)) < 0.5 else 0.0
    return float(g[0]) / total


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, cfg: ImageAugment, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix the images of a batch with mixup or cutmix and return soft targets.

    Parameters
    ----------
    x:
        Float images ``(B, C, H, W)``.
    y:
        Class indices ``(B,)`` (``int64``) in ``[0, n_classes)``.
    n_classes:
        Number of classes (width of the targets).
    cfg:
        Settings: ``mixup`` and ``cutmix`` alphas, ``mix_prob``.
    generator:
        CPU ``torch.Generator``; every random draw comes from it.

    Returns
    -------
    images, targets:
        The mixed images (a new tensor) and targets ``(B, n_classes)`` float32 whose rows sum
        to 1. Image ``i`` is paired with image ``perm[i]`` of a random permutation. Mixup:
        ``lam * x[i] + (1 - lam) * x[perm[i]]`` with ``lam ~ Beta(alpha, alpha)``. CutMix: a
        box of area about ``1 - lam`` of ``x[perm[i]]`` is pasted into ``x[i]`` (the box is
        the same for the whole batch, as in timm) and ``lam`` is corrected to the area
        actually kept. With both on, one is chosen per batch with equal probability. With
        probability ``1 - mix_prob`` (or with both off) the batch is returned unmixed with
        one-hot targets.
    """
    x = _check_batch(x)
    generator = _check_generator(generator)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ConfigError(f"must be a whole number >= 1, got {n_classes!r}", key="n_classes")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise DataError(f"labels {shape}: expected an integer tensor of shape ({x.shape[0]},)")
    y = y.to(torch.int64)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(f"labels must be in [0, {n_classes}), got values in [{int(y.min())}, {int(y.max())}]")
    one_hot = F.one_hot(y, n_classes).to(torch.float32).to(x.device)
    if not cfg.needs_soft_targets or x.shape[0] == 0:
        return x.clone(), one_hot
    u = torch.rand(2, generator=generator, dtype=torch.float64)
    if float(u[0]) >= cfg.mix_prob:
        return x.clone(), one_hot
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or float(u[1]) < 0.5)
    lam = _beta(cfg.cutmix if use_cutmix else cfg.mixup, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(h * cut), int(w * cut)
        centre = torch.randint(0, h * w, (1,), generator=generator)
        cy, cx = divmod(int(centre), w)
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        mixed = x.clone()
        mixed[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        mixed = lam * x + (1.0 - lam) * x[perm]
    targets = lam * one_hot + (1.0 - lam) * one_hot[perm]
    return mixed, targets
