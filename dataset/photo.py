"""A second benchmark dataset made of real photographs that ship inside installed packages (nothing downloaded).

    .venv/bin/python -m dataset.photo /tmp/photo_dataset

18 photographs (scikit-image's sample data, scikit-learn's two sample photos, matplotlib's Grace Hopper):
people, a cat, a rocket, a motorcycle, coffee, coins, the moon, deep space, a retina, cells, tissue, bricks,
grass, gravel, a Chinese temple, a flower. Each photograph is one class; the images are random crops of it
(side 10-20 % of the photo's longer side, resized to 48-128 px, some greyscale JPEGs), as a patch-retrieval
task on real image statistics. The crops of each split come from its own band of the photo (train: the first
60 % along the longer axis, valid: the next 20 %, test: the last 20 %), so no pixel of a valid or test crop was
seen in training and valid and test never overlap.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import matplotlib
import sklearn
from PIL import Image

SKIMAGE = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
]
BANDS = {"train": (0.0, 0.6), "valid": (0.6, 0.8), "test": (0.8, 1.0)}


def photo_paths() -> dict[str, Path]:
    import skimage  # an install-time dependency of the benchmarks only

    found = {Path(n).stem: Path(skimage.__file__).parent / "data" / n for n in SKIMAGE}
    found["china"] = Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"
    found["flower"] = Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"
    found["grace_hopper"] = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"sample photos missing from the installed packages: {missing}")
    return found


def _crop(photo: Image.Image, band: tuple[float, float], r: random.Random) -> Image.Image:
    w, h = photo.size
    long, short = max(w, h), min(w, h)
    lo, hi = int(band[0] * long), int(band[1] * long)
    side = min(int(r.uniform(0.1, 0.2) * long), hi - lo, short)
    a = r.randint(lo, hi - side)  # along the longer axis, inside the band
    b = r.randint(0, short - side)
    box = (a, b, a + side, b + side) if w >= h else (b, a, b + side, a + side)
    out = r.randint(48, 128)
    return photo.crop(box).resize((out, out), Image.Resampling.BILINEAR)


def make_photo_dataset(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    counts = per_class or {"train": 40, "valid": 20, "test": 10}
    r = random.Random(seed)
    for split in counts:
        (root / split / "annotations").mkdir(parents=True, exist_ok=True)
    for name, path in sorted(photo_paths().items()):
        photo = Image.open(path).convert("RGB")
        for split, n in counts.items():
            folder = root / split / "images" / ("" if split == "train" else name)
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                im = _crop(photo, BANDS[split], r)
                if r.random() < 0.1:
                    im = im.convert("L")
                # Train names carry no label: the train split is unlabelled.
                stem = f"{r.getrandbits(32):08x}" if split == "train" else f"{name}_{k:03d}"
                im.save(folder / f"{stem}.jpg", quality=90)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    make_photo_dataset(a.root, seed=a.seed)
    print(f"photo dataset written to {a.root}")


if __name__ == "__main__":
    main()
