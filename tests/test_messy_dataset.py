"""A user's messy folder trains and tests end to end, and both jobs list what they skipped."""

import io
import json
import shutil
from pathlib import Path

from conftest import TINY_SETTINGS, run_train
from PIL import Image
from test_client_test import run_client_test


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 10)).save(buf, "PNG")
    return buf.getvalue()


def _make_messy(src: Path, dst: Path) -> set[str]:
    """Copy the tiny dataset and add every kind of file a real folder has; return the names that must be skipped."""
    shutil.copytree(src, dst)
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (5, 5, 200)).save(jpeg, "JPEG")
    bad = set()
    for split, sub in (("train", ""), ("valid", "dots"), ("test", "dots")):
        folder = dst / split / "images" / sub
        (folder / f"zero-{split}.jpg").write_bytes(b"")
        (folder / f"corrupt-{split}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        (folder / f"truncated-{split}.jpg").write_bytes(jpeg.getvalue()[:300])
        bad |= {f"zero-{split}.jpg", f"corrupt-{split}.png", f"truncated-{split}.jpg", f"dangling-{split}.jpg"}
        (folder / f"really-a-png-{split}.jpg").write_bytes(_png_bytes())  # mislabelled extension: readable
        (folder / f".hidden-{split}.jpg").write_bytes(b"ignored")
        (folder / f"花 ünï {split}.png").write_bytes(_png_bytes())
        target = folder / f"花 ünï {split}.png"
        (folder / f"link-{split}.png").symlink_to(target)
        (folder / f"dangling-{split}.jpg").symlink_to(folder / "does-not-exist.jpg")
    return bad


def test_messy_dataset_trains_and_tests_listing_what_it_skipped(tiny_dataset, tmp_path):
    ds = tmp_path / "messy"
    bad = _make_messy(tiny_dataset, ds)
    runs = tmp_path / "runs"
    proc = run_train(ds, runs, trial_name="messy", settings=TINY_SETTINGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    skipped_train = {Path(s["path"]).name for s in info["skipped"]}
    assert {n for n in bad if "test" not in n} <= skipped_train
    assert not any("really-a-png" in n or "花" in n or n.startswith(".hidden") for n in skipped_train)
    for name in bad - {n for n in bad if "test" in n}:
        assert name in proc.stderr  # each skipped file is named in a warning

    proc = run_client_test(ds, trial["model_path"], "SimSiam_messy", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    test_trial = json.loads((runs / "metric" / "trial.txt").read_text())
    evaluation = json.loads((Path(test_trial["model_path"]) / test_trial["predict_result_filename"]).read_text())
    skipped_test = {Path(s["path"]).name for s in evaluation["skipped"]}
    assert {"zero-test.jpg", "corrupt-test.png", "truncated-test.jpg", "dangling-test.jpg"} <= skipped_test
    scored = {Path(r["path"]).name for r in evaluation["predictions"]}
    assert {"really-a-png-test.jpg", "花 ünï test.png", "link-test.png"} <= scored
