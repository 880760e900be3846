"""SimSiam's two augmented views, drawn for a whole batch of uint8 images at once.

The same recipe as lightly's `SimSiamTransform` (SimSiam paper, Appendix A: RandomResizedCrop,
horizontal flip, ColorJitter with p=0.8, RandomGrayscale, Gaussian blur, ImageNet normalisation),
with every random parameter drawn per view, but the colour and blur steps run as a few tensor
operations over the batch instead of PIL calls per image. Only the crop is per image (images differ in
size); it resizes uint8 pixels with torchvision.transforms.v2. On 2 CPU cores this is what lets the
loader workers keep up without taking the cores the model needs (see bench/train_throughput.py).

One difference from torchvision's ColorJitter: the order of brightness/contrast/saturation/hue is
drawn once per batch rather than per image.

Two places to run it (setting `augment_on`): in the loader workers (`views`), or split in two on a GPU: the
workers only crop uint8 pixels (`crops`) and the model finishes the views on the device after the transfer
(`finish`, from SimSiam.on_after_batch_transfer), with every random parameter drawn there. A GPU step at 224 px
takes a few ms; CPU workers jittering and blurring a batch of 256 take far longer (bench/gpu_throughput.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from handler.eval_preset import IMAGENET_MEAN, IMAGENET_STD
from training.settings import Settings

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale's ITU-R 601 weights


@dataclass(frozen=True)
class ViewParams:
    """The random choices of one batch of views (one row per view), drawn by `SimSiamAugment.draw`."""

    flip: torch.Tensor  # bool
    jitter: torch.Tensor  # bool: colour jitter on (cj_prob)
    bright: torch.Tensor  # factors, used where jitter is on
    contrast: torch.Tensor
    sat: torch.Tensor
    hue: torch.Tensor  # fraction of a turn
    order: tuple[int, ...]  # the order of brightness (0), contrast (1), saturation (2), hue (3), once per batch
    gray: torch.Tensor  # bool
    blur: torch.Tensor  # bool
    sigma: torch.Tensor  # blur sigma in pixels, used where blur is on

    def to(self, device: torch.device | str) -> ViewParams:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return ViewParams(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


@dataclass(frozen=True)
class SimSiamAugment:
    input_size: int
    min_scale: float = 0.2
    cj_prob: float = 0.8
    cj_bright: float = 0.4
    cj_contrast: float = 0.4
    cj_sat: float = 0.4
    cj_hue: float = 0.1
    gray_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigmas: tuple[float, float] = (0.1, 2.0)
    hflip_prob: float = 0.5

    def views(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """images: uint8 3xHxW tensors of any sizes -> [view0, view1], each float32 Nx3xSxS, normalised."""
        return self.finish(self.crops(images))

    def crops(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The per-image part: two random resized crops per image -> uint8 2Nx3xSxS (all view 0s, then view 1s).
        On a GPU this is all the loader workers do; `finish` runs on the device after the transfer."""
        return torch.stack([self._crop(im) for im in images] + [self._crop(im) for im in images])

    def finish(
        self, crops: torch.Tensor, generator: torch.Generator | None = None, host: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """uint8 2Nx3xSxS crops from `crops`, on any device -> [view0, view1] augmented there (random choices from
        `generator`, one on that device, and `host`, one on the CPU; default: torch's)."""
        x = self.augment(crops.float().div_(255), self.draw(len(crops), crops.device, generator, host))
        return list(x.chunk(2))

    def _crop(self, image: torch.Tensor) -> torch.Tensor:
        return random_resized_crop(image, self.input_size, (self.min_scale, 1.0))

    def draw(
        self,
        n: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        host: torch.Generator | None = None,
    ) -> ViewParams:
        """Every random choice for n views, drawn on `device` from `generator` (a GPU draws its own: no host round
        trip); the one host-side choice from `host` (default: `generator` if it is a CPU one, else torch's)."""
        if host is None and generator is not None and generator.device.type == "cpu":
            host = generator

        def rand() -> torch.Tensor:
            return torch.rand(n, device=device, generator=generator)

        def between(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * rand()

        flip = rand() < self.hflip_prob
        jitter = rand() < self.cj_prob
        # Factors are drawn before the order so that the random stream does not depend on it.
        bright = between(max(0.0, 1 - self.cj_bright), 1 + self.cj_bright)
        contrast = between(max(0.0, 1 - self.cj_contrast), 1 + self.cj_contrast)
        sat = between(max(0.0, 1 - self.cj_sat), 1 + self.cj_sat)
        hue = between(-self.cj_hue, self.cj_hue)
        order = tuple(torch.randperm(4, generator=host).tolist())  # which op first: a host-side choice
        gray = rand() < self.gray_prob
        blur = rand() < self.blur_prob
        sigma = between(*self.blur_sigmas)
        return ViewParams(flip, jitter, bright, contrast, sat, hue, order, gray, blur, sigma)

    def augment(self, x: torch.Tensor, params: ViewParams | None = None) -> torch.Tensor:
        """x: float Nx3xSxS in [0, 1] (one crop per view), on any device -> flipped, jittered, grey, blurred,
        normalised, on that device. params: the random choices (default: drawn now, on x's device)."""
        p = params if params is not None else self.draw(x.shape[0], x.device)
        x = torch.where(p.flip[:, None, None, None], x.flip(-1), x)
        x = self._color_jitter(x, p)
        x = torch.where(p.gray[:, None, None, None], _grayscale(x).expand_as(x), x)
        x = self._blur(x, p.blur, p.sigma)
        mean, std = _mean_std(x.device)
        return (x - mean) / std

    def _color_jitter(self, x: torch.Tensor, p: ViewParams) -> torch.Tensor:
        n, on = x.shape[0], p.jitter

        def per_view(f: torch.Tensor, identity: float) -> torch.Tensor:
            return torch.where(on, f, torch.full_like(f, identity)).view(n, 1, 1, 1)

        b, c, s = per_view(p.bright, 1.0), per_view(p.contrast, 1.0), per_view(p.sat, 1.0)
        h = per_view(p.hue, 0.0).view(n)
        for op in p.order:
            if op == 0 and self.cj_bright > 0:
                x = (x * b).clamp_(0, 1)
            elif op == 1 and self.cj_contrast > 0:
                m = _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
                x = (c * x + (1 - c) * m).clamp_(0, 1)
            elif op == 2 and self.cj_sat > 0:
                x = (s * x + (1 - s) * _grayscale(x)).clamp_(0, 1)
            elif op == 3 and self.cj_hue > 0:
                x = _shift_hue(x, h, on)
        return x

    def _blur(self, x: torch.Tensor, on: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Gaussian blur of the views where `on`, each with its own sigma (separable, reflect padding)."""
        if self.blur_prob <= 0:
            return x
        radius = math.ceil(3 * self.blur_sigmas[1])

        def blur(sel: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
            t = torch.arange(-radius, radius + 1, dtype=sel.dtype, device=sel.device)
            k = torch.exp(-0.5 * (t[None, :] / sigma[idx, None]) ** 2)
            k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, dim=0)  # one kernel per (view, channel)
            m, _, hgt, wid = sel.shape
            y = sel.reshape(1, m * 3, hgt, wid)
            pad = min(radius, hgt - 1, wid - 1)  # reflect padding needs pad < size
            k = k[:, radius - pad : radius + pad + 1] if pad < radius else k
            y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k[:, None, None, :], groups=m * 3)
            y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k[:, None, :, None], groups=m * 3)
            return y.reshape(m, 3, hgt, wid)

        return where_on(x, on, blur)


def where_on(
    x: torch.Tensor,
    on: torch.Tensor,
    op: Callable[[torch.Tensor, torch.Tensor | slice], torch.Tensor],
    gather: bool | None = None,
) -> torch.Tensor:
    """`op` applied to the views where `on` (op(views, their index) -> new views), the others unchanged.

    gather (default: off a GPU): pick the chosen views first, so a CPU worker blurs only the half it must. On a GPU
    every view goes through `op` and torch.where keeps the chosen ones: no host sync (`on.any()`, `nonzero`), so
    the CPU keeps queueing the training step's kernels ahead, and the extra arithmetic is cheap there.
    """
    if gather is None:
        gather = x.device.type != "cuda"
    if not gather:
        return torch.where(on[:, None, None, None], op(x, slice(None)), x)
    if not bool(on.any()):
        return x
    idx = on.nonzero().squeeze(1)
    out = x.clone()
    out[idx] = op(x[idx], idx)
    return out


def augment_for(s: Settings) -> SimSiamAugment:
    """The settings' augmentation: lightly's SimSiamTransform defaults scaled by `cj_strength`."""
    return SimSiamAugment(
        input_size=s.input_size,
        min_scale=s.min_scale,
        cj_bright=0.4 * s.cj_strength,
        cj_contrast=0.4 * s.cj_strength,
        cj_sat=0.4 * s.cj_strength,
        cj_hue=min(s.cj_hue * s.cj_strength, 0.5),  # a hue shift beyond half a turn wraps around
        gray_prob=s.gray_prob,
        # The paper's CIFAR recipe has no blur: at 32 px it erases the little detail there is.
        blur_prob=0.0 if s.input_size < 64 else 0.5,
        # The paper's sigmas (0.1-2.0 px) are for 224-px crops (SimCLR sizes its blur kernel at 10 % of the image);
        # kept in pixels, a 64-px crop is blurred 3.5x harder and small shapes vanish (docs/benchmarks.md: a probe
        # curve on the demo, 250 steps: probe 0.385 with pixel sigmas, 0.445 scaled; random init 0.337).
        blur_sigmas=(0.1 * s.input_size / 224, 2.0 * s.input_size / 224),
    )


def augments_on_device(s: Settings, device: torch.device) -> bool:
    """Whether the model finishes the views on its device (`augment_on`; "auto": on a GPU, not on a CPU, where the
    workers run beside the model on the same cores and the batched path already keeps up)."""
    return s.augment_on == "device" or (s.augment_on == "auto" and device.type == "cuda")


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as 1x3x1x1 tensors, made once per device: building them per batch was a small
    blocking host-to-GPU copy every step. Never inference tensors: a first call under inference_mode must not
    make them unusable outside it."""
    with torch.inference_mode(False):
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        return mean, torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    w = GRAY_WEIGHTS
    return (w[0] * r + w[1] * g + w[2] * b).unsqueeze(-3)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` (fraction of a turn, per view) through HSV, as torchvision's adjust_hue."""

    def rotate(sel: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
        h, s, v = _rgb_to_hsv(sel)
        return _hsv_to_rgb((h + shift[idx].view(-1, 1, 1)) % 1.0, s, v)

    return where_on(x, on, rotate)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(-3)
    minc, _ = x.min(-3)
    delta = maxc - minc
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    d = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta == 0, torch.zeros_like(h), (h / 6.0) % 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # Sector i of the hue circle picks which of (v, t, p, q) goes to r, g and b.
    table = torch.stack([v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q], dim=-3).view(
        *v.shape[:-2], 3, 6, *v.shape[-2:]
    )
    return table.gather(-3, i[..., None, None, :, :].expand(*v.shape[:-2], 3, 1, *v.shape[-2:])).squeeze(-3)


def random_resized_crop(image: torch.Tensor, size: int, scale: tuple[float, float]) -> torch.Tensor:
    """torchvision's RandomResizedCrop on a uint8 3xHxW tensor (area in `scale`, aspect 3/4 to 4/3), antialiased:
    the crop of pretraining's views and of the refine stage's training images."""
    top, left, h, w = RandomResizedCrop.get_params(image, scale, (3 / 4, 4 / 3))
    return TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
