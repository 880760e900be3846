"""The demo generator is a pure function of its seed: bench/ caches its datasets by generator VERSION and sizes."""

import hashlib
from pathlib import Path

from dataset.demo import VERSION, make_demo_dataset

# sha256 over the sorted relative paths and file bytes of make_demo_dataset(root, 6, 3, 2) with seed 0, taken
# from the generator before its images were finished on a second thread (session 9). If a Pillow upgrade or a
# drawing change moves it, bump VERSION (bench caches redraw) and take the new digest.
SEED0_TINY = "f924c50943583ce5f7fc328c2e86085a498c0e5ce7a22ee95b927b54ed8a4449"


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_whatever_the_thread_timing(tmp_path):
    root = make_demo_dataset(tmp_path / "a", train_per_class=6, valid_per_class=3, test_per_class=2)
    assert len([p for p in root.rglob("*") if p.is_file()]) == 6 * (6 + 3 + 2)
    assert VERSION == 2 and _digest(root) == SEED0_TINY
    other = make_demo_dataset(tmp_path / "b", train_per_class=6, valid_per_class=3, test_per_class=2, seed=1)
    assert _digest(other) != SEED0_TINY
