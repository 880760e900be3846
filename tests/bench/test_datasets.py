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
