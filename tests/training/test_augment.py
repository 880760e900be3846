"""The batched SimSiam augmentation does what torchvision's per-image operations do, one view at a time."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

from handler.eval_preset import IMAGENET_MEAN, IMAGENET_STD
from training.augment import SimSiamAugment, _shift_hue, augment_for
from training.model import augment_seed
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
    sigma = 0.1 + 1.9 * torch.rand(4)
    got = aug._blur(x, torch.ones(4, dtype=torch.bool), sigma)
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


def _tiny_train_set(tmp_path, on_device: bool):
    from PIL import Image

    from dataset.reader import Skipped
    from training.pretrain_data import PretrainImages

    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        Image.fromarray(torch.randint(0, 256, (40 + i, 48, 3), generator=g, dtype=torch.uint8).numpy()).save(path)
        paths.append(path)
    s = Settings(input_size=32, gray_prob=0.5, augment_on="device" if on_device else "workers")
    return s, PretrainImages(paths, 32, augment_for(s), 64, Skipped(), threads=1, on_device=on_device)


def test_the_device_path_gives_the_worker_paths_views(tmp_path):
    """augment_on device: the loader's batch is uint8 crops and the model finishes the views after the transfer;
    with one random stream (no workers) the views are exactly the worker path's."""
    from training.model import SimSiam

    s, workers = _tiny_train_set(tmp_path, on_device=False)
    _, device = _tiny_train_set(tmp_path, on_device=True)
    model = SimSiam(s)  # built first: its weight init draws from the same generator
    torch.manual_seed(7)
    want = workers.__getitems__([0, 3, 5, 7])
    torch.manual_seed(7)
    crops = device.__getitems__([0, 3, 5, 7])
    assert [c.dtype for c in crops] == [torch.uint8, torch.uint8] and crops[0].shape == (4, 3, 32, 32)
    got = model.on_after_batch_transfer(crops, 0)
    assert [g.dtype for g in got] == [torch.float32, torch.float32]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # A float batch (the worker path) passes through the hook untouched.
    assert model.on_after_batch_transfer(want, 0) is want


def test_augment_on_auto_finishes_the_views_on_a_gpu_only():
    from training.augment import augments_on_device

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert augments_on_device(Settings(), cuda) and not augments_on_device(Settings(), cpu)
    assert augments_on_device(Settings(augment_on="device"), cpu)
    assert not augments_on_device(Settings(augment_on="workers"), cuda)


def test_params_drawn_once_replay_the_same_views():
    """The random choices are data (ViewParams): replayed on another device they give the same views (the gpu
    tier compares CUDA with CPU this way), and their frequencies follow the probabilities."""
    aug = augment_for(Settings(input_size=64))
    x = torch.rand(512, 3, 16, 16)
    torch.manual_seed(2)
    params = aug.draw(len(x))
    assert torch.equal(aug.augment(x, params), aug.augment(x, params.to("cpu")))
    for name, p in [("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5)]:
        assert abs(getattr(params, name).float().mean().item() - p) < 0.08, name
    assert params.sigma.min() >= aug.blur_sigmas[0] and params.sigma.max() <= aug.blur_sigmas[1]
    torch.manual_seed(2)
    assert torch.equal(aug.augment(x), aug.augment(x, params))  # drawing inside augment is the same stream


def test_a_training_step_gets_finished_float_views_from_uint8_crops(tmp_path):
    import pytorch_lightning as pl

    from training.model import SimSiam
    from training.pretrain_data import pretrain_loader

    s, data = _tiny_train_set(tmp_path, on_device=True)
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append([(v.dtype, tuple(v.shape)) for v in batch])

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Spy()],
    )
    model = SimSiam(s, steps_per_epoch=2)
    trainer.fit(model, pretrain_loader(data, 4, num_workers=0))
    assert trainer.global_step == 2
    assert seen == [[(torch.float32, (4, 3, 32, 32))] * 2] * 2
    assert model._draws is not None and model._draws.initial_seed() == augment_seed(s.seed, 0)


def test_each_rank_draws_its_own_device_augmentation():
    """seed_everything gives every DDP process one seed; the device augmentation's generator is seeded per rank,
    so the GPUs do not repeat each other's flips, jitters and blurs."""
    aug = augment_for(Settings(input_size=64))
    draws = []
    for rank in (0, 1):
        g = torch.Generator().manual_seed(augment_seed(42, rank))
        draws.append(aug.draw(256, "cpu", g))
    assert augment_seed(42, 0) != augment_seed(42, 1) != 42
    assert not torch.equal(draws[0].bright, draws[1].bright) and not torch.equal(draws[0].flip, draws[1].flip)


def test_the_gpu_way_of_choosing_views_gives_the_same_views(monkeypatch):
    """where_on without gathering (the GPU's way: every view through blur and hue, torch.where keeps the chosen
    ones, no host sync) gives the views the CPU's gathering gives, for the same random choices."""
    import training.augment as augment_module

    aug = augment_for(Settings(input_size=64, cj_hue=0.5))
    x = torch.rand(32, 3, 24, 24)
    torch.manual_seed(4)
    params = aug.draw(len(x))
    assert 0 < int(params.blur.sum()) < 32 and 0 < int(params.jitter.sum()) < 32  # both choices occur
    gathered = aug.augment(x, params)
    where_on = augment_module.where_on
    calls = []

    def everywhere(x, on, op, gather=None):
        calls.append(gather)
        return where_on(x, on, op, gather=False)

    monkeypatch.setattr(augment_module, "where_on", everywhere)
    assert torch.allclose(aug.augment(x, params), gathered, atol=1e-5)
    assert len(calls) == 2  # hue and blur both went the GPU's way
