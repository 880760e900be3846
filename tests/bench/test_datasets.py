"""bench/datasets.py: one definition of the benchmark datasets, named by their sizes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bench.datasets import bench_dataset


def test_demo_is_made_once_at_the_asked_sizes_and_other_sizes_get_their_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = bench_dataset("demo", train=2, valid=3, test=1)
    assert root.parent == tmp_path
    classes = sorted(p.name for p in (root / "valid" / "images").iterdir())
    assert len(list((root / "train" / "images").rglob("*.*"))) == 2 * len(classes)
    assert all(len(list((root / "valid" / "images" / c).iterdir())) == 3 for c in classes)
    assert all(len(list((root / "test" / "images" / c).iterdir())) == 1 for c in classes)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*.*")}
    assert bench_dataset("demo", train=2, valid=3, test=1) == root  # reused, not written again
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.*")} == stamp
    assert bench_dataset("demo", train=2, valid=2, test=1) != root


def test_a_folder_is_taken_as_it_is(tmp_path: Path) -> None:
    assert bench_dataset(str(tmp_path)) == tmp_path


def test_extra_train_adds_unlabelled_images_and_keeps_valid_and_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = bench_dataset("demo", train=1, valid=2, test=1)
    root = bench_dataset("demo", train=1, valid=2, test=1, extra_train=3)
    assert root != base and root.parent == tmp_path
    classes = sorted(p.name for p in (base / "valid" / "images").iterdir())
    assert len(list((root / "train" / "images").rglob("*.*"))) == 4 * len(classes)
    for split in ("valid", "test"):
        files = sorted(p.relative_to(base) for p in (base / split).rglob("*.*"))
        assert files == sorted(p.relative_to(root) for p in (root / split).rglob("*.*"))
        assert all((base / f).read_bytes() == (root / f).read_bytes() for f in files)
    extra = {p.name for p in (root / "train" / "images").rglob("*.*")} - {
        p.name for p in (base / "train" / "images").rglob("*.*")
    }
    assert len(extra) == 3 * len(classes)  # new images, not copies of the base's
    assert not list(tmp_path.glob("*.partial"))
    assert bench_dataset("demo", train=1, valid=2, test=1, extra_train=3) == root  # reused


def test_extra_train_is_refused_for_photo() -> None:
    with pytest.raises(ValueError, match="demo generator"):
        bench_dataset("photo", extra_train=2)


def test_extra_train_is_refused_for_a_folder_and_below_zero(tmp_path: Path) -> None:
    for name, extra in ((str(tmp_path), 2), ("demo", -1)):
        with pytest.raises(ValueError, match="only the demo generator"):
            bench_dataset(name, extra_train=extra)
