"""Make the demo dataset: procedurally drawn shapes and textures in the SPEC.md layout.

    python -m training.demo_data runs/demo_dataset --train-per-class 100

Six classes that differ in shape and texture, never in colour (patterns fill the image, so every crop
shows its class): every image draws its foreground and
background colours from the same distribution, so the mean colour says nothing about the class and a
model must learn shapes. Images come at mixed resolutions and formats (JPEG, PNG, BMP, WebP, TIFF;
RGB, grey, RGBA), and train/images has nested folders, as users' folders do.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

Draw = Callable[[ImageDraw.ImageDraw, int, random.Random, tuple, tuple], None]


def _scattered(sides: int) -> Draw:
    """Many small shapes of one kind over the whole image (sides 0 = discs), so every crop shows some."""

    def draw(d: ImageDraw.ImageDraw, s: int, r: random.Random, fg: tuple, bg: tuple) -> None:
        size = r.uniform(0.05, 0.1) * s
        for _ in range(int(r.uniform(0.5, 1.0) * (s / size) ** 2 / 4)):
            rad = size * r.uniform(0.7, 1.3)
            x, y, rot = r.uniform(0, s), r.uniform(0, s), r.uniform(0, 2 * math.pi)
            colour = _near(fg, r)
            if sides == 0:
                d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=colour)
            else:
                step = 2 * math.pi / sides
                d.polygon(
                    [(x + rad * math.cos(rot + k * step), y + rad * math.sin(rot + k * step)) for k in range(sides)],
                    fill=colour,
                )

    return draw


def _stripes(d: ImageDraw.ImageDraw, s: int, r: random.Random, fg: tuple, bg: tuple) -> None:
    period, angle = r.uniform(0.08, 0.2) * s, r.uniform(0, math.pi)
    dx, dy = math.cos(angle), math.sin(angle)
    width = max(1, int(period / 2))
    for k in range(-int(2 * s / period), int(2 * s / period)):
        cx, cy = s / 2 + k * period * -dy, s / 2 + k * period * dx
        d.line([(cx - 2 * s * dx, cy - 2 * s * dy), (cx + 2 * s * dx, cy + 2 * s * dy)], fill=_near(fg, r), width=width)


def _checkers(d: ImageDraw.ImageDraw, s: int, r: random.Random, fg: tuple, bg: tuple) -> None:
    n = r.randint(4, 9)
    cell = s / n
    for i in range(n):
        for j in range(n):
            if (i + j) % 2 == 0:
                d.rectangle([i * cell, j * cell, (i + 1) * cell, (j + 1) * cell], fill=_near(fg, r))


def _rings(d: ImageDraw.ImageDraw, s: int, r: random.Random, fg: tuple, bg: tuple) -> None:
    x, y = r.uniform(0.2, 0.8) * s, r.uniform(0.2, 0.8) * s
    step = r.uniform(0.06, 0.12) * s
    for k in range(1, int(1.5 * s / step)):
        rad = k * step
        d.ellipse([x - rad, y - rad, x + rad, y + rad], outline=_near(fg, r), width=max(1, int(step / 2.5)))


def _near(colour: tuple, r: random.Random, spread: int = 40) -> tuple[int, int, int]:
    """A colour close to `colour`: shapes in one image vary a little, as real objects do."""
    return tuple(max(0, min(255, c + r.randint(-spread, spread))) for c in colour)


CLASSES: dict[str, Draw] = {
    "checkers": _checkers,
    "dots": _scattered(0),
    "rings": _rings,
    "squares": _scattered(4),
    "stripes": _stripes,
    "triangles": _scattered(3),
}
FORMATS = [("jpg", "JPEG"), ("png", "PNG"), ("jpeg", "JPEG"), ("bmp", "BMP"), ("webp", "WEBP"), ("tiff", "TIFF")]


def _colour(r: random.Random) -> tuple[int, int, int]:
    return tuple(r.randint(0, 255) for _ in range(3))


def _gradient(size: int, a: tuple, b: tuple, angle: float) -> Image.Image:
    """A linear gradient from colour a to b: crops of one image differ in colour, so colour alone cannot tell
    two views of the same image apart from others -- the texture has to."""
    ramp = Image.linear_gradient("L").rotate(math.degrees(angle), resample=Image.Resampling.BILINEAR, expand=False)
    mask = ramp.resize((size, size))
    return Image.composite(Image.new("RGB", (size, size), b), Image.new("RGB", (size, size), a), mask)


def draw_image(cls: str, r: random.Random, min_side: int, max_side: int) -> Image.Image:
    s = r.randint(min_side, max_side)
    fg, bg = _colour(r), _colour(r)
    while sum(abs(a - b) for a, b in zip(fg, bg)) < 150:  # keep the shape visible
        fg = _colour(r)
    # Draw 2x larger and downsample: anti-aliased edges, like photographs.
    im = _gradient(2 * s, bg, _near(bg, r, 80), r.uniform(0, 2 * math.pi))
    CLASSES[cls](ImageDraw.Draw(im), 2 * s, r, fg, bg)
    im = im.resize((s, int(s * r.uniform(0.75, 1.33))), Image.Resampling.LANCZOS)
    if r.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(r.uniform(0.3, 1.2)))
    return im


def save_image(im: Image.Image, path_stem: Path, r: random.Random) -> Path:
    ext, fmt = FORMATS[r.randrange(len(FORMATS))]
    mode = r.random()
    if mode < 0.15:
        im = im.convert("L")
    elif mode < 0.25 and fmt in ("PNG", "WEBP", "TIFF"):
        im = im.convert("RGBA")
        im.putalpha(Image.new("L", im.size, r.randint(160, 255)))
    path = path_stem.with_suffix("." + ext)
    im.save(path, fmt, **({"quality": r.randint(75, 95)} if fmt in ("JPEG", "WEBP") else {}))
    return path


def make_demo_dataset(
    root: Path,
    train_per_class: int = 100,
    valid_per_class: int = 25,
    test_per_class: int = 15,
    min_side: int = 48,
    max_side: int = 256,
    seed: int = 0,
    classes: list[str] | None = None,
) -> Path:
    """Write the dataset under root (train/valid/test with images/ and empty annotations/)."""
    r = random.Random(seed)
    classes = classes or sorted(CLASSES)
    for split in ("train", "valid", "test"):
        (root / split / "annotations").mkdir(parents=True, exist_ok=True)
    for cls in classes:
        for k in range(train_per_class):
            folder = root / "train" / "images" / f"batch_{k % 3}"  # nested; names carry no label
            folder.mkdir(parents=True, exist_ok=True)
            save_image(
                draw_image(cls, r, min_side, max_side), folder / f"img_{cls[:2]}{k:05d}_{r.getrandbits(24):06x}", r
            )
        for split, n in (("valid", valid_per_class), ("test", test_per_class)):
            folder = root / split / "images" / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                save_image(draw_image(cls, r, min_side, max_side), folder / f"{cls}_{k:04d}", r)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="output folder (created)")
    p.add_argument("--train-per-class", type=int, default=100, help="unlabelled train images per class (default 100)")
    p.add_argument("--valid-per-class", type=int, default=25, help="default 25")
    p.add_argument("--test-per-class", type=int, default=15, help="default 15")
    p.add_argument("--min-side", type=int, default=48, help="smallest image side in px (default 48)")
    p.add_argument("--max-side", type=int, default=256, help="largest image side in px (default 256)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    root = make_demo_dataset(
        a.root, a.train_per_class, a.valid_per_class, a.test_per_class, a.min_side, a.max_side, a.seed
    )
    print(f"demo dataset written to {root.resolve()}")


if __name__ == "__main__":
    main()
