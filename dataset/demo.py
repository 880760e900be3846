"""Make the demo dataset: procedurally drawn shapes and textures in the SPEC.md layout.

    python -m dataset.demo runs/demo_dataset --train-per-class 500

Six classes that differ in shape and texture, never in colour (patterns fill the image, so every crop
shows its class): every shape, stripe, ring and cell has its own random colour on a near-grey background,
so colour says nothing about the class, nor about which image a crop came from, and a model must learn
shapes. The unlabelled train split is 5x the labelled valid split, as in the product's use. Images come
at mixed resolutions and formats (JPEG, PNG, BMP, WebP, TIFF; RGB, grey, RGBA), and train/images has nested
folders, as users' folders do.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

Draw = Callable[[ImageDraw.ImageDraw, int, random.Random, "Palette"], None]


def _scattered(sides: int) -> Draw:
    """Many shapes of one kind over the whole image (sides 0 = discs), so every crop shows some."""

    def draw(d: ImageDraw.ImageDraw, s: int, r: random.Random, bg: Palette) -> None:
        size = r.uniform(0.07, 0.11) * s
        for _ in range(int(r.uniform(0.6, 1.0) * (s / size) ** 2 / 5)):
            rad = size * r.uniform(0.8, 1.2)
            x, y, rot = r.uniform(0, s), r.uniform(0, s), r.uniform(0, 2 * math.pi)
            if sides == 0:
                d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=bg.ink(r))
            else:
                step = 2 * math.pi / sides
                d.polygon(
                    [(x + rad * math.cos(rot + k * step), y + rad * math.sin(rot + k * step)) for k in range(sides)],
                    fill=bg.ink(r),
                )

    return draw


def _stripes(d: ImageDraw.ImageDraw, s: int, r: random.Random, bg: Palette) -> None:
    period, angle = r.uniform(0.1, 0.16) * s, r.uniform(0, math.pi)
    dx, dy = math.cos(angle), math.sin(angle)
    width = max(1, int(period / 2))
    for k in range(-int(2 * s / period), int(2 * s / period)):
        cx, cy = s / 2 + k * period * -dy, s / 2 + k * period * dx
        d.line([(cx - 2 * s * dx, cy - 2 * s * dy), (cx + 2 * s * dx, cy + 2 * s * dy)], fill=bg.ink(r), width=width)


def _checkers(d: ImageDraw.ImageDraw, s: int, r: random.Random, bg: Palette) -> None:
    n = r.randint(4, 7)
    cell = s / n
    for i in range(n):
        for j in range(n):
            if (i + j) % 2 == 0:
                d.rectangle([i * cell, j * cell, (i + 1) * cell, (j + 1) * cell], fill=bg.ink(r))


def _rings(d: ImageDraw.ImageDraw, s: int, r: random.Random, bg: Palette) -> None:
    x, y = r.uniform(0.2, 0.8) * s, r.uniform(0.2, 0.8) * s
    step = r.uniform(0.08, 0.12) * s
    for k in range(1, int(1.5 * s / step)):
        rad = k * step
        d.ellipse([x - rad, y - rad, x + rad, y + rad], outline=bg.ink(r), width=max(1, int(step / 2.5)))


def _colour(r: random.Random) -> tuple[int, int, int]:
    return tuple(r.randint(0, 255) for _ in range(3))


class Palette:
    """An image's colours. The background is a near-grey gradient; every shape gets its own random colour that
    stands out from it. So colour varies inside an image as much as between images: two crops of one image share
    its shapes, not its colours, and SimSiam cannot agree on colour instead of shape. (With one foreground and one
    background colour per image, the views agreed on those and the probe stayed at random init's level: see
    docs/benchmarks.md, "The demo generator".)"""

    def __init__(self, r: random.Random) -> None:
        g = r.randint(96, 160)
        self.a, self.b = (g, g, g), tuple(g + r.randint(-30, 30) for _ in range(3))

    def ink(self, r: random.Random) -> tuple[int, int, int]:
        for _ in range(100):
            c = _colour(r)
            if min(sum(abs(x - y) for x, y in zip(c, end)) for end in (self.a, self.b)) >= 120:
                return c
        return (0, 0, 0) if self.a[0] > 127 else (255, 255, 255)  # not reached in practice

    def image(self, size: int, angle: float) -> Image.Image:
        ramp = Image.linear_gradient("L").rotate(math.degrees(angle), resample=Image.Resampling.BILINEAR)
        mask = ramp.resize((size, size))
        return Image.composite(Image.new("RGB", (size, size), self.b), Image.new("RGB", (size, size), self.a), mask)


CLASSES: dict[str, Draw] = {
    "checkers": _checkers,
    "dots": _scattered(0),
    "rings": _rings,
    "squares": _scattered(4),
    "stripes": _stripes,
    "triangles": _scattered(3),
}
VERSION = 2  # bumped when the drawing changes, so cached copies (bench/) are redrawn
FORMATS = [("jpg", "JPEG"), ("png", "PNG"), ("jpeg", "JPEG"), ("bmp", "BMP"), ("webp", "WEBP"), ("tiff", "TIFF")]


@dataclass
class Sketch:
    """An image drawn at 2x with every random choice for it made: finish() does the pixel work that is left
    (downsampling, blur, colour mode, encoding), which draws no random numbers, so it can run on another thread
    while the next image is drawn and the dataset stays the same for a seed."""

    canvas: Image.Image
    size: tuple[int, int]
    blur: float  # Gaussian radius; 0 = none
    fmt: str
    mode: str  # "RGB", "L" or "RGBA"
    alpha: int
    quality: int | None
    path: Path

    def finish(self) -> Path:
        im = _downsample(self.canvas, self.size, self.blur)
        if self.mode == "L":
            im = im.convert("L")
        elif self.mode == "RGBA":
            im = im.convert("RGBA")
            im.putalpha(Image.new("L", im.size, self.alpha))
        im.save(self.path, self.fmt, **({"quality": self.quality} if self.quality is not None else {}))
        return self.path


def _draw(cls: str, r: random.Random, min_side: int, max_side: int) -> tuple[Image.Image, tuple[int, int], float]:
    """(canvas drawn at 2x, final size, blur radius or 0) for one image of `cls`."""
    s = r.randint(min_side, max_side)
    bg = Palette(r)
    # Draw 2x larger and downsample: anti-aliased edges, like photographs.
    canvas = bg.image(2 * s, r.uniform(0, 2 * math.pi))
    CLASSES[cls](ImageDraw.Draw(canvas), 2 * s, r, bg)
    size = (s, int(s * r.uniform(0.75, 1.33)))
    return canvas, size, r.uniform(0.3, 1.2) if r.random() < 0.3 else 0.0


def _downsample(canvas: Image.Image, size: tuple[int, int], blur: float) -> Image.Image:
    im = canvas.resize(size, Image.Resampling.LANCZOS)
    return im.filter(ImageFilter.GaussianBlur(blur)) if blur else im


def draw_image(cls: str, r: random.Random, min_side: int, max_side: int) -> Image.Image:
    """One RGB image of `cls`, downsampled and maybe blurred (no file)."""
    return _downsample(*_draw(cls, r, min_side, max_side))


def sketch(drawn: tuple[Image.Image, tuple[int, int], float], r: random.Random, path_stem: Path) -> Sketch:
    """A drawn image (`_draw`) with its remaining random choices made: format, colour mode, quality."""
    canvas, size, blur = drawn
    ext, fmt = FORMATS[r.randrange(len(FORMATS))]
    mode, alpha = r.random(), 0
    if mode < 0.15:
        mode = "L"
    elif mode < 0.25 and fmt in ("PNG", "WEBP", "TIFF"):
        mode, alpha = "RGBA", r.randint(160, 255)
    else:
        mode = "RGB"
    quality = r.randint(75, 95) if fmt in ("JPEG", "WEBP") else None
    return Sketch(canvas, size, blur, fmt, mode, alpha, quality, path_stem.with_suffix("." + ext))


def make_demo_dataset(
    root: Path,
    train_per_class: int = 500,
    valid_per_class: int = 100,
    test_per_class: int = 25,
    min_side: int = 48,
    max_side: int = 256,
    seed: int = 0,
    classes: list[str] | None = None,
) -> Path:
    """Write the dataset under root (train/valid/test with images/ and empty annotations/).

    root must be missing or empty. The images go to a sibling `<root>.partial` first, renamed to root when
    complete: a generation stopped half-way leaves no root that a later run would take for the whole dataset.
    """
    if root.is_dir() and any(root.iterdir()):
        raise FileExistsError(f"{root} already holds files; remove it or name a new folder for the demo dataset")
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an earlier, interrupted generation
    _write(partial, train_per_class, valid_per_class, test_per_class, min_side, max_side, seed, classes)
    if root.is_dir():
        root.rmdir()  # empty (checked above): a folder the caller made for it
    partial.rename(root)
    return root


def _write(
    root: Path,
    train_per_class: int,
    valid_per_class: int,
    test_per_class: int,
    min_side: int,
    max_side: int,
    seed: int,
    classes: list[str] | None,
) -> None:
    r = random.Random(seed)
    classes = classes or sorted(CLASSES)
    for split in ("train", "valid", "test"):
        (root / split / "annotations").mkdir(parents=True, exist_ok=True)
    # Drawing (and every random draw) stays on this thread, in order; Pillow releases the GIL while it resizes
    # and encodes, so a second thread finishing the images nearly halves the time on 2 cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque[Future] = deque()

        def add(sk: Sketch) -> None:
            pending.append(pool.submit(sk.finish))
            while len(pending) > 8:  # a few images in flight: bounded memory
                pending.popleft().result()

        for cls in classes:
            for k in range(train_per_class):
                folder = root / "train" / "images" / f"batch_{k % 3}"  # nested; names carry no label
                folder.mkdir(parents=True, exist_ok=True)
                drawn = _draw(cls, r, min_side, max_side)  # then the name's random suffix, as always
                add(sketch(drawn, r, folder / f"img_{cls[:2]}{k:05d}_{r.getrandbits(24):06x}"))
            for split, n in (("valid", valid_per_class), ("test", test_per_class)):
                folder = root / split / "images" / cls
                folder.mkdir(parents=True, exist_ok=True)
                for k in range(n):
                    add(sketch(_draw(cls, r, min_side, max_side), r, folder / f"{cls}_{k:04d}"))
        while pending:
            pending.popleft().result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="output folder (created; must be missing or empty)")
    p.add_argument("--train-per-class", type=int, default=500, help="unlabelled train images per class (default 500)")
    p.add_argument("--valid-per-class", type=int, default=100, help="default 100")
    p.add_argument("--test-per-class", type=int, default=25, help="default 25")
    p.add_argument("--min-side", type=int, default=48, help="smallest image side in px (default 48)")
    p.add_argument("--max-side", type=int, default=256, help="largest image side in px (default 256)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    try:
        root = make_demo_dataset(
            a.root, a.train_per_class, a.valid_per_class, a.test_per_class, a.min_side, a.max_side, a.seed
        )
    except FileExistsError as e:
        p.error(str(e))
    print(f"demo dataset written to {root.resolve()}")


if __name__ == "__main__":
    main()
