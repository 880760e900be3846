"""The benchmark datasets, one definition for every script in bench/: made once under the temp folder, in a
folder named by generator and size, so a script asking for other sizes never reuses the wrong images."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

# Images per class (train, valid, test): the generators' own defaults.
DEFAULT_SIZES = {"demo": (500, 100, 25), "photo": (40, 20, 10)}


def bench_dataset(
    name: str, train: int | None = None, valid: int | None = None, test: int | None = None, extra_train: int = 0
) -> Path:
    """`demo` (dataset/demo.py), `photo` (dataset/photo.py) at the given images per class, or a folder.

    `extra_train` (demo only): that many more unlabelled images per class, drawn with the generator's seed 1,
    beside the same valid, test and train images: only the ratio of unlabelled to labelled images moves.
    """
    if extra_train < 0 or (extra_train and name != "demo"):  # before a folder is taken: never ignored silently
        raise ValueError(f"extra_train ({extra_train}) takes images per class >= 0 and only the demo generator")
    if name not in DEFAULT_SIZES:
        return Path(name)
    sizes = [n if n is not None else d for n, d in zip((train, valid, test), DEFAULT_SIZES[name], strict=True)]
    if name == "demo":
        from dataset.demo import VERSION, make_demo_dataset

        root = Path(tempfile.gettempdir()) / f"simsiam_bench_demo_v{VERSION}_{'_'.join(map(str, sizes))}"
        if not (root / "test").is_dir():
            make_demo_dataset(root, train_per_class=sizes[0], valid_per_class=sizes[1], test_per_class=sizes[2])
        return _with_extra_train(root, extra_train) if extra_train else root
    from dataset.photo import make_photo_dataset

    root = Path(tempfile.gettempdir()) / f"simsiam_bench_photo_{'_'.join(map(str, sizes))}"
    if not (root / "test").is_dir():
        make_photo_dataset(root, per_class=dict(zip(("train", "valid", "test"), sizes, strict=True)))
    return root


def _with_extra_train(base: Path, per_class: int) -> Path:
    """A copy of the demo set `base` with `per_class` more train images per class (seed 1) under s1_* folders."""
    from dataset.demo import make_demo_dataset

    root = base.with_name(f"{base.name}_plus{per_class}")
    if (root / "test").is_dir():
        return root
    partial = root.with_name(root.name + ".partial")  # renamed when complete: never a half-made root
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(base, partial)
    extra = make_demo_dataset(partial / "extra", train_per_class=per_class, valid_per_class=0, test_per_class=0, seed=1)
    for f in sorted((extra / "train" / "images").rglob("*.*")):
        dst = partial / "train" / "images" / f"s1_{f.parent.name}" / f.name
        dst.parent.mkdir(exist_ok=True)
        f.rename(dst)
    shutil.rmtree(extra)
    partial.rename(root)
    return root
