"""Reading the dataset layout of SPEC.md: unlabelled `train/images`, labelled `valid|test/images/<class>`.

Every image goes through `handler.eval_preset.decode_image` (EXIF, grey, alpha, bombs), so a
file that the server would refuse is also skipped here, with a warning that names it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from handler.eval_preset import EvalPreset, ImageDecodeError, decode_image, load_for_eval

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class DatasetError(ValueError):
    """The dataset cannot be used; the message says which folder and what to fix."""


@dataclass
class Skipped:
    """Files that were listed but could not be read, with the reason for each."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        log.warning("skipping unreadable image %s: %s", path, reason)
        self.items.append((path, reason))


def list_images(root: Path) -> list[Path]:
    """All image files under root, recursively, sorted; hidden files and folders are ignored.

    Linked folders are read (datasets are often assembled with symlinks), each folder once: a link back to
    a folder already read (a loop) is not followed again. A dangling or looping file link is kept so that
    reading it fails and it is reported like any unreadable file; FIFOs and devices are left alone.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def walk(folder: str) -> None:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            log.warning("cannot list %s: %s", folder, e.strerror or e)
            return
        for e in entries:
            if e.name.startswith("."):
                continue  # .DS_Store, ._resource forks, .ipynb_checkpoints
            if _is(e.is_dir):
                walk(e.path)
                continue
            image = os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
            if image and (_is(e.is_file) or (e.is_symlink() and not os.path.exists(e.path))):
                found.append(Path(e.path))

    if root.is_dir():
        walk(str(root))
    return sorted(found)


def _is(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except OSError:  # ELOOP and friends: not a folder, not a regular file
        return False


def check_split(dataset: Path, split: str) -> Path:
    images = dataset / split / "images"
    if not images.is_dir():
        raise DatasetError(
            f"{images} does not exist: the dataset needs {split}/images/ (see docs/SPEC.md, 'Dataset layout')"
        )
    return images


@dataclass
class LabelledSplit:
    """A labelled split: `paths[i]` has class index `labels[i]` into `classes`."""

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: list[int]

    def rel(self, p: Path) -> str:
        return p.relative_to(self.root).as_posix()


def read_labelled(dataset: Path, split: str, classes: list[str] | None = None) -> LabelledSplit:
    """List `<split>/images/<class>/**`. With `classes=None` (valid) the sorted sub-folders define
    the classes; otherwise (test) folders not in `classes` get label -1 (unknown to the model)."""
    images = check_split(dataset, split)
    entries = [e for e in images.iterdir() if not e.name.startswith(".")]
    folders = sorted(e.name for e in entries if e.is_dir())
    loose = [e.name for e in entries if e.suffix.lower() in IMAGE_SUFFIXES and _is(e.is_file)]
    if loose:
        log.warning(
            "%d image file(s) directly in %s (e.g. %s) have no class folder and are not used; move them into "
            "%s/<class name>/",
            len(loose),
            images,
            sorted(loose)[0],
            images,
        )
    if classes is None:
        for c in folders:
            if not _is_utf8(c):
                # The class name goes into index_to_name.json, the .mar and every HTTP answer: it must be text.
                raise DatasetError(
                    f"the class folder {images / c} has a name that is not valid UTF-8; rename it "
                    "(the folder name is the class name the model answers with)"
                )
        classes = [c for c in folders if list_images(images / c)]
        if empty := sorted(set(folders) - set(classes)):
            log.warning("folder(s) %s in %s hold no image files and are not classes", empty, images)
        if len(classes) < 2:
            raise DatasetError(
                f"{images} has {len(classes)} class folder(s) with images ({classes}); a classifier needs at "
                "least 2: put each class's images in its own sub-folder"
            )
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for c in folders:
        for p in list_images(images / c):
            paths.append(p)
            labels.append(index.get(c, -1))
    if not paths:
        raise DatasetError(f"{images} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return LabelledSplit(images, classes, paths, labels)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode turned undecodable bytes into lone surrogates
        return False
    return True


def read_unlabelled(dataset: Path) -> list[Path]:
    images = check_split(dataset, "train")
    paths = list_images(images)
    if not paths:
        raise DatasetError(
            f"{images} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); put the unlabelled images there"
        )
    return paths


def readable(paths: list[Path], min_side: int, skipped: Skipped, threads: int = 4) -> list[bool]:
    """Whether each path decodes (reduced JPEG decode with min_side); unreadable ones are logged in `skipped`.

    Streaming: at most ~threads*4 images are decoded at once and none is kept, so a `valid` split of thousands of
    12-Mpx images costs a few decoded images of memory, not all of them. Threads overlap well here: PIL releases
    the GIL while decoding.
    """

    def one(p: Path) -> str | None:
        try:
            decode_image(p, min_side=min_side)
            return None
        except ImageDecodeError as e:
            return str(e)

    out = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(paths), 64):
            chunk = paths[start : start + 64]
            for p, err in zip(chunk, pool.map(one, chunk)):
                if err is not None:
                    skipped.add(str(p), err)
                out.append(err is None)
    return out


class EvalImages(torch.utils.data.Dataset):
    """Labelled images through the shared eval preset: `dataset[i]` -> (3xSxS tensor | None, i).

    A file that cannot be decoded yields None; `collate_eval` drops it and keeps its index out.
    """

    def __init__(self, paths: list[Path], preset: EvalPreset) -> None:
        self.paths = paths
        self.preset = preset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return load_for_eval(self.paths[i], self.preset), i, None
        except ImageDecodeError as e:
            return None, i, str(e)


def collate_eval(batch: list) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    good = [(x, i) for x, i, _ in batch if x is not None]
    bad = [(i, err) for x, i, err in batch if x is None]
    x = torch.stack([g[0] for g in good]) if good else None
    return x, [g[1] for g in good], bad
