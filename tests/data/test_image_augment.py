"""Seeded image augmentation and batch mixing."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tunesmith.data.image_augment import PRESETS, ImageAugment, augment_batch, mix_batch
from tunesmith.errors import ConfigError, DataError


def _batch(b: int = 6, h: int = 16, w: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, 3, h, w), generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- settings


def test_defaults_off_and_presets():
    cfg = ImageAugment()
    assert not cfg.enabled and not cfg.needs_soft_targets and not cfg.per_image
    for name in PRESETS:
        preset = ImageAugment.preset(name)
        assert preset.enabled == (name != "none")
    std = ImageAugment.preset("standard")
    assert std.hflip == 0.5 and std.rotate == 10 and std.crop_scale == (0.6, 1.0) and std.noise == 0.02
    assert std.brightness == std.contrast == std.saturation == 0.2
    digits = ImageAugment.preset("digits")
    assert digits.hflip == 0 and digits.vflip == 0 and digits.crop_scale == (0.85, 1.0)
    light = ImageAugment.preset("light")
    assert light.hflip == 0.5 and light.crop_scale == (0.8, 1.0)
    assert ImageAugment(mixup=0.2).needs_soft_targets and ImageAugment(cutmix=1.0).enabled
    with pytest.raises(ConfigError, match="preset"):
        ImageAugment.preset("heavy")


@pytest.mark.parametrize(
    "values, field",
    [
        ({"hflip": -0.1}, "hflip"),
        ({"vflip": 1.5}, "vflip"),
        ({"mix_prob": 2}, "mix_prob"),
        ({"noise": -1}, "noise"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"crop_scale": (0.0, 0.5)}, "crop_scale"),
        ({"crop_ratio": (2.0, 1.0)}, "crop_ratio"),
        ({"rotate": 400}, "rotate"),
        ({"hfilp": 0.5}, "hfilp"),
    ],
)
def test_invalid_settings_name_the_field(values, field):
    with pytest.raises(ValidationError, match=field):
        ImageAugment(**values)
    with pytest.raises(ConfigError) as err:
        ImageAugment.from_options(**values)
    assert err.value.key == field


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'hflip'"):
        ImageAugment.from_options(hfilp=0.5)


# --------------------------------------------------------------------------- augment_batch


def test_off_config_is_identity():
    x = _batch()
    g = _gen(0)
    state = g.get_state()
    out = augment_batch(x, ImageAugment(), g)
    assert torch.equal(out, x) and out is not x
    assert torch.equal(g.get_state(), state)  # nothing drawn
    assert torch.equal(augment_batch(x, ImageAugment(mixup=1.0), g), x)


def test_flips_are_exact():
    x = _batch()
    assert torch.equal(augment_batch(x, ImageAugment(hflip=1.0), _gen(0)), x.flip(-1))
    assert torch.equal(augment_batch(x, ImageAugment(vflip=1.0), _gen(0)), x.flip(-2))
    out = augment_batch(x, ImageAugment(hflip=0.5), _gen(3))
    for i in range(len(x)):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))


def test_seeded_reproducibility_range_and_shape():
    x = _batch()
    cfg = ImageAugment.preset("standard").model_copy(update={"vflip": 0.3})
    a = augment_batch(x, cfg, _gen(7))
    b = augment_batch(x, cfg, _gen(7))
    c = augment_batch(x, cfg, _gen(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(x, _batch())  # input untouched


def test_rotation_and_crop_of_constant_image_stay_constant():
    x = torch.full((3, 3, 12, 12), 0.25)
    out = augment_batch(x, ImageAugment(rotate=30, crop_scale=(0.3, 0.7)), _gen(1))
    assert torch.allclose(out, x, atol=1e-6)


def test_crop_zooms_in():
    # Left half black, right half white: a crop of a small area near the middle still shows both,
    # with the boundary moved; a full-area crop keeps the picture.
    x = torch.zeros((4, 3, 16, 16))
    x[..., 8:] = 1.0
    full = augment_batch(
        x, ImageAugment(crop_scale=(1.0, 1.0), rotate=0.0, noise=0.0, brightness=0.0, hflip=0.0), _gen(0)
    )
    assert torch.equal(full, x)
    out = augment_batch(x, ImageAugment(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), padding="border"), _gen(0))
    assert not torch.allclose(out, x)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_colour_jitter_and_noise():
    gray = torch.full((4, 3, 8, 8), 0.5)
    # saturation leaves gray images alone; brightness scales them
    out = augment_batch(gray, ImageAugment(saturation=0.9), _gen(0))
    assert torch.allclose(out, gray, atol=1e-6)
    bright = augment_batch(gray, ImageAugment(brightness=0.5), _gen(0))
    per_image = bright.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image))
    assert float(bright.min()) >= 0.25 - 1e-6 and float(bright.max()) <= 0.75 + 1e-6
    noisy = augment_batch(gray, ImageAugment(noise=0.05), _gen(0))
    assert 0.02 < float((noisy - gray).std()) < 0.08


def test_bad_inputs():
    with pytest.raises(DataError, match="float tensor"):
        augment_batch(torch.zeros((2, 3, 4, 4), dtype=torch.uint8), ImageAugment(hflip=1), _gen(0))
    with pytest.raises(ConfigError, match="generator"):
        augment_batch(_batch(), ImageAugment(hflip=1), 0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- mix_batch


def _constant_batch(b: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.arange(b, dtype=torch.float32) / b
    x = values.view(b, 1, 1, 1).expand(b, 3, 10, 12).clone()
    return x, torch.arange(b)


def test_mix_off_gives_one_hot():
    x, y = _constant_batch()
    out, t = mix_batch(x, y, 8, ImageAugment(), _gen(0))
    assert torch.equal(out, x) and torch.equal(t, torch.eye(8))
    out, t = mix_batch(x, y, 8, ImageAugment(mixup=1.0, mix_prob=0.0), _gen(0))
    assert torch.equal(out, x) and torch.equal(t, torch.eye(8))


def test_mixup_convex_combination():
    x = torch.stack([torch.zeros(3, 6, 6), torch.ones(3, 6, 6)])
    y = torch.tensor([0, 1])
    mixed_any = False
    for seed in range(10):
        out, t = mix_batch(x, y, 2, ImageAugment(mixup=0.4), _gen(seed))
        assert torch.allclose(t.sum(1), torch.ones(2))
        for i in range(2):
            assert torch.allclose(out[i], torch.full_like(out[i], float(t[i, 1])), atol=1e-6)
        mixed_any |= bool((t > 0).all())
    assert mixed_any


def test_cutmix_lam_is_pasted_area():
    x, y = _constant_batch()
    for seed in range(10):
        out, t = mix_batch(x, y, 8, ImageAugment(cutmix=1.0), _gen(seed))
        assert torch.allclose(t.sum(1), torch.ones(8))
        for i in range(8):
            pasted = float((out[i] != x[i]).float().mean())
            assert abs((1.0 - float(t[i, i])) - pasted) < 1e-6


def test_mix_reproducible_and_both_modes_chosen():
    x, y = _constant_batch()
    cfg = ImageAugment(mixup=0.8, cutmix=1.0)
    a = mix_batch(x, y, 8, cfg, _gen(5))
    b = mix_batch(x, y, 8, cfg, _gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    kinds = set()
    for seed in range(20):
        out, t = mix_batch(x, y, 8, cfg, _gen(seed))
        assert torch.allclose(t.sum(1), torch.ones(8))
        # cutmix keeps only original pixel values; mixup blends them
        kinds.add("cutmix" if torch.isin(out, x).all() else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_mix_bad_labels():
    x, _ = _constant_batch(4)
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        mix_batch(x, torch.tensor([0, 1, 2, 3]), 3, ImageAugment(mixup=1), _gen(0))
    with pytest.raises(DataError, match="labels"):
        mix_batch(x, torch.zeros(4), 3, ImageAugment(mixup=1), _gen(0))
