"""The benchmark datasets, one definition for every script in bench/: made once under the temp folder, in a
folder named by generator and size, so a script asking for other sizes never reuses the wrong images."""

from __future__ import annotations

import tempfile
from pathlib import Path

# Images per class (train, valid, test): the generators' own defaults.
DEFAULT_SIZES = {"demo": (500, 100, 25), "photo": (40, 20, 10)}


def bench_dataset(name: str, train: int | None = None, valid: int | None = None, test: int | None = None) -> Path:
    """`demo` (dataset/demo.py), `photo` (bench/photo_data.py) at the given images per class, or a folder."""
    if name not in DEFAULT_SIZES:
        return Path(name)
    sizes = [n if n is not None else d for n, d in zip((train, valid, test), DEFAULT_SIZES[name], strict=True)]
    if name == "demo":
        from dataset.demo import VERSION, make_demo_dataset

        root = Path(tempfile.gettempdir()) / f"simsiam_bench_demo_v{VERSION}_{'_'.join(map(str, sizes))}"
        if not (root / "test").is_dir():
            make_demo_dataset(root, train_per_class=sizes[0], valid_per_class=sizes[1], test_per_class=sizes[2])
        return root
    from bench.photo_data import make_photo_dataset

    root = Path(tempfile.gettempdir()) / f"simsiam_bench_photo_{'_'.join(map(str, sizes))}"
    if not (root / "test").is_dir():
        make_photo_dataset(root, per_class=dict(zip(("train", "valid", "test"), sizes, strict=True)))
    return root
