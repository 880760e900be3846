"""The batched SimSiam augmentation does what torchvision's per-image operations do, one view at a time."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

from handler.eval_preset import IMAGENET_MEAN, IMAGENET_STD
from training.augment import SimSiamAugment, _shift_hue, augment_for
from training.settings import Settings


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 20, 24, generator=g)


def test_hue_shift_matches_torchvision_per_image():
    x = _images()
    shift = torch.linspace(-0.5, 0.5, len(x))
    on = torch.tensor([True, True, False, True, True, True])
    got = _shift_hue(x, shift, on)
    for i in range(len(x)):
        want = TF.adjust_hue(x[i], float(shift[i])) if on[i] else x[i]
        assert torch.allclose(got[i], want, atol=1e-5), i


def _only(**jitter: float) -> SimSiamAugment:
    """An augmentation with colour jitter always on, nothing else."""
    base = {"cj_bright": 0.0, "cj_contrast": 0.0, "cj_sat": 0.0, "cj_hue": 0.0}
    return SimSiamAugment(input_size=8, cj_prob=1.0, gray_prob=0.0, blur_prob=0.0, hflip_prob=0.0, **{**base, **jitter})


def _draw_factor(aug: SimSiamAugment, x: torch.Tensor, seed: int, which: str) -> torch.Tensor:
    """Replay the factor draws of `_color_jitter` (brightness, contrast, saturation, hue, in that order)."""
    torch.manual_seed(seed)
    n = x.shape[0]
    torch.rand(n)  # flip
    torch.rand(n)  # jitter on/off
    draws = {name: torch.rand(n) for name in ("bright", "contrast", "sat", "hue")}
    s = getattr(aug, f"cj_{which}")
    lo, hi = (-s, s) if which == "hue" else (max(0.0, 1 - s), 1 + s)
    return lo + (hi - lo) * draws[which]


def test_each_colour_jitter_matches_torchvision_with_its_own_factor_per_view():
    x = _images()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    reference = {
        "bright": TF.adjust_brightness,
        "contrast": TF.adjust_contrast,
        "sat": TF.adjust_saturation,
        "hue": TF.adjust_hue,
    }
    for which, op in reference.items():
        aug = _only(**{f"cj_{which}": 0.4})
        factors = _draw_factor(aug, x, seed=3, which=which)
        assert factors.std() > 0  # every view draws its own factor
        torch.manual_seed(3)
        got = aug.augment(x.clone()) * std + mean
        for i in range(len(x)):
            assert torch.allclose(got[i], op(x[i], float(factors[i])), atol=1e-5), (which, i)


def test_blur_matches_torchvision_gaussian_blur():
    x = torch.rand(4, 3, 32, 32)
    aug = SimSiamAugment(input_size=32, cj_prob=0.0, gray_prob=0.0, blur_prob=1.0, hflip_prob=0.0)
    torch.manual_seed(5)
    got = aug._blur(x, torch.ones(4, dtype=torch.bool))
    torch.manual_seed(5)
    sigma = 0.1 + 1.9 * torch.rand(4)
    for i in range(4):
        s = float(sigma[i])
        assert torch.allclose(got[i], TF.gaussian_blur(x[i], [13, 13], [s, s]), atol=1e-5), i


def test_views_are_two_different_normalised_crops_per_image_of_any_size():
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(64, 80), (70, 64), (128, 200)]]
    aug = augment_for(Settings(input_size=32))
    torch.manual_seed(0)
    v0, v1 = aug.views(images)
    assert v0.shape == v1.shape == (3, 3, 32, 32) and v0.dtype == torch.float32
    assert not torch.allclose(v0, v1)
    # Normalised [0, 1] pixels stay within the ImageNet-normalised range.
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert (v0.amin((0, 2, 3)) >= lo - 1e-5).all() and (v0.amax((0, 2, 3)) <= hi + 1e-5).all()
    torch.manual_seed(0)
    again = aug.views(images)
    assert torch.equal(again[0], v0)  # one seed, one stream of views


def test_grey_probability_and_strength_follow_the_settings():
    aug = augment_for(Settings(input_size=32, cj_strength=2.0, cj_hue=0.5, gray_prob=1.0))
    assert aug.cj_bright == 0.8 and aug.cj_hue == 0.5 and aug.blur_prob == 0.0
    x = torch.rand(8, 3, 32, 32)
    torch.manual_seed(1)
    out = aug.augment(x) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)


def test_blur_sigmas_follow_the_input_size_from_the_papers_224_px():
    assert augment_for(Settings(input_size=224)).blur_sigmas == (0.1, 2.0)
    lo, hi = augment_for(Settings(input_size=64)).blur_sigmas
    assert abs(lo - 0.1 * 64 / 224) < 1e-9 and abs(hi - 2.0 * 64 / 224) < 1e-9
    assert augment_for(Settings(input_size=32)).blur_prob == 0.0  # the CIFAR recipe: no blur at all
