"""A user's messy folder trains and tests end to end, and both jobs list what they skipped."""

import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS, run_train
from PIL import Image
from test_client_test import run_client_test

SPLITS = (("train", ""), ("valid", "dots"), ("test", "dots"))


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 10)).save(buf, "PNG")
    return buf.getvalue()


def _bytes_name_allowed(folder: Path) -> bool:
    """Whether the filesystem takes a file name that is not UTF-8 (ext4 does; some mounts refuse, EILSEQ)."""
    probe = os.path.join(os.fsencode(folder), b"probe-\xff")
    try:
        with open(probe, "wb"):
            pass
    except OSError:
        return False
    os.unlink(probe)
    return True


def _make_messy(src: Path, dst: Path) -> tuple[set[str], set[str]]:
    """Copy the tiny dataset and add every kind of file a real folder has.

    Returns (names that must be skipped, names of readable images that must be used). A name that is not
    UTF-8 is given as Python decodes it (os.fsdecode: surrogate escapes), as json.loads gives it back.
    """
    shutil.copytree(src, dst)
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (5, 5, 200)).save(jpeg, "JPEG")
    bad, good = set(), set()
    bytes_names = _bytes_name_allowed(dst)
    for split, sub in SPLITS:
        folder = dst / split / "images" / sub
        (folder / f"zero-{split}.jpg").write_bytes(b"")
        (folder / f"corrupt-{split}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        (folder / f"truncated-{split}.jpg").write_bytes(jpeg.getvalue()[:300])
        (folder / f"text-{split}.jpg").write_text("a text file named like an image\n")
        (folder / f"dangling-{split}.jpg").symlink_to(folder / "does-not-exist.jpg")
        (folder / f"loop-{split}.jpg").symlink_to(folder / f"loop-{split}.jpg")  # ELOOP when opened
        bad |= {f"{n}-{split}.{e}" for n, e in [("zero", "jpg"), ("corrupt", "png"), ("truncated", "jpg")]}
        bad |= {f"text-{split}.jpg", f"dangling-{split}.jpg", f"loop-{split}.jpg"}

        (folder / f"really-a-png-{split}.jpg").write_bytes(_png_bytes())  # mislabelled extension: readable
        (folder / f".hidden-{split}.jpg").write_bytes(b"ignored")
        (folder / f".hidden-dir-{split}").mkdir()
        (folder / f".hidden-dir-{split}" / "inside.png").write_bytes(b"ignored too")
        (folder / f"花 ünï {split}.png").write_bytes(_png_bytes())
        (folder / f"link-{split}.png").symlink_to(folder / f"花 ünï {split}.png")
        (folder / "café").mkdir()
        (folder / "café" / f"Ünïcødé 画像 {split}.png").write_bytes(_png_bytes())
        # A linked folder is read; a link back to its own folder (a loop) must neither hang nor read twice.
        elsewhere = dst.parent / f"elsewhere-{split}"
        elsewhere.mkdir()
        (elsewhere / f"outside-{split}.png").write_bytes(_png_bytes())
        (folder / f"linked-dir-{split}").symlink_to(elsewhere, target_is_directory=True)
        (folder / f"loop-dir-{split}").symlink_to(folder, target_is_directory=True)
        good |= {f"really-a-png-{split}.jpg", f"花 ünï {split}.png", f"link-{split}.png"}
        good |= {f"Ünïcødé 画像 {split}.png", f"outside-{split}.png"}
        if bytes_names:
            base = os.fsencode(folder)
            with open(os.path.join(base, f"latin1-\xe9t\xe9-{split}.png".encode("latin-1")), "wb") as f:
                f.write(_png_bytes())
            with open(os.path.join(base, f"bad-\xff-{split}.jpg".encode("latin-1")), "wb") as f:
                f.write(b"\xff\xd8 not a jpeg")
            good.add(os.fsdecode(f"latin1-\xe9t\xe9-{split}.png".encode("latin-1")))
            bad.add(os.fsdecode(f"bad-\xff-{split}.jpg".encode("latin-1")))
    return bad, good


def _of(split: str, names: set[str]) -> set[str]:
    return {n for n in names if f"-{split}." in n or f" {split}." in n}


def _logged(name: str, log: str) -> bool:
    """A warning names the file; undecodable bytes may be shown escaped (\\udcff, \\xff), so match around them."""
    parts = re.split(r"[\udc80-\udcff]", name)
    return re.search(r"\S{1,12}".join(map(re.escape, parts)), log) is not None


def test_messy_dataset_trains_and_tests_listing_what_it_skipped(tiny_dataset, tmp_path):
    ds = tmp_path / "messy"
    bad, good = _make_messy(tiny_dataset, ds)
    runs = tmp_path / "runs"
    proc = run_train(ds, runs, trial_name="messy", settings=TINY_SETTINGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = json.loads((runs / "metric" / "trial.txt").read_text(encoding="utf-8"))
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text(encoding="utf-8"))
    skipped_train = {Path(s["path"]).name for s in info["skipped"]}
    assert skipped_train == _of("train", bad) | _of("valid", bad)  # exactly the unreadable ones, nothing else
    for name in _of("train", bad) | _of("valid", bad):
        assert _logged(name, proc.stderr), name  # each skipped file is named in a warning
    # Every readable train image is used once: the tiny set's 18 + the good extras (linked folder read,
    # the loop folder not read again).
    originals = sum(1 for p in (tiny_dataset / "train" / "images").rglob("*") if p.is_file())
    assert info["pretraining"]["train_images"] == originals + len(_of("train", good))

    proc = run_client_test(ds, trial["model_path"], "SimSiam_messy", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    test_trial = json.loads((runs / "metric" / "trial.txt").read_text(encoding="utf-8"))
    evaluation = json.loads(
        (Path(test_trial["model_path"]) / test_trial["predict_result_filename"]).read_text(encoding="utf-8")
    )
    assert {Path(s["path"]).name for s in evaluation["skipped"]} == _of("test", bad)
    scored = [Path(r["path"]).name for r in evaluation["predictions"]]
    originals = sum(1 for p in (tiny_dataset / "test" / "images").rglob("*") if p.is_file())
    assert len(scored) == len(set(scored)) == originals + len(_of("test", good))
    assert _of("test", good) <= set(scored)
    # The folder path is kept: a nested non-ASCII folder and a linked folder keep their class (dots).
    rows = {Path(r["path"]).name: r for r in evaluation["predictions"]}
    assert rows["Ünïcødé 画像 test.png"]["path"] == "dots/café/Ünïcødé 画像 test.png"
    assert rows["outside-test.png"]["true_class"] == "dots"
    for name in _of("test", bad):
        assert _logged(name, proc.stderr), name
    assert "skipped (unreadable): " + str(len(_of("test", bad))) in proc.stdout


def test_a_valid_class_folder_named_in_bytes_that_are_not_utf8_is_a_clear_error(tiny_dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    if not _bytes_name_allowed(ds):
        pytest.skip("this filesystem refuses file names that are not UTF-8")
    # A class name travels into index_to_name.json, the .mar and HTTP answers: it must be text.
    os.rename(ds / "valid" / "images" / "dots", os.path.join(os.fsencode(ds / "valid" / "images"), b"d\xf6ts"))
    runs = tmp_path / "runs"
    proc = run_train(ds, runs)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "not valid UTF-8" in proc.stderr and "rename" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (runs / "metric").exists() and list((runs / "models").iterdir()) == []
