"""The dataset reader: layout, formats, EXIF, unreadable files and clear errors."""

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.reader import DatasetError, Skipped, list_images, read_labelled, read_unlabelled, readable
from handler.eval_preset import EvalPreset, ImageDecodeError, decode_image, load_for_eval


def _save(path: Path, mode: str = "RGB", size=(40, 30), fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (200, 30, 30), "L": 128, "RGBA": (0, 0, 255, 128), "I;16": 40000, "CMYK": (0, 255, 255, 0)}[mode]
    Image.new(mode, size, colour).save(path, fmt, **kw)
    return path


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A dataset with every kind of file users have."""
    t = tmp_path / "ds" / "train" / "images"
    _save(t / "a.jpg")
    _save(t / "UPPER.JPEG", fmt="JPEG")
    _save(t / "grey.png", "L")
    _save(t / "alpha.png", "RGBA")
    _save(t / "deep" / "nested" / "b.webp")
    _save(t / "odd name (1) ünïcødé 花.bmp")
    _save(t / "c.tif", fmt="TIFF")
    _save(t / "sixteen.png", "I;16")
    (t / "zero.jpg").write_bytes(b"")
    (t / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (t / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (t / "notes.txt").write_text("not an image")
    _save(t / ".hidden.jpg")
    _save(t / ".ipynb_checkpoints" / "x.jpg")
    for split in ("valid", "test"):
        for cls in ("雏菊", "tulip"):
            for k in range(3):
                _save(tmp_path / "ds" / split / "images" / cls / f"{k}.png")
    (tmp_path / "ds" / "train" / "annotations").mkdir()
    return tmp_path / "ds"


def test_listing_is_recursive_case_insensitive_and_skips_hidden(messy):
    names = {p.name for p in list_images(messy / "train" / "images")}
    assert {"a.jpg", "UPPER.JPEG", "b.webp", "c.tif", "odd name (1) ünïcødé 花.bmp", "zero.jpg"} <= names
    assert "notes.txt" not in names and ".hidden.jpg" not in names and "x.jpg" not in names


def test_unreadable_files_are_skipped_with_a_warning_naming_each(messy, caplog):
    paths = read_unlabelled(messy)
    skipped = Skipped()
    with caplog.at_level(logging.WARNING):
        ok = readable(paths, 32, skipped)
    bad = {Path(p).name for p, _ in skipped.items}
    assert bad == {"zero.jpg", "corrupt.png", "truncated.jpg"}
    for name in bad:
        assert name in caplog.text
    assert sum(ok) == len(paths) - 3
    good = [decode_image(p, min_side=32) for p, k in zip(paths, ok) if k]
    assert all(im.mode == "RGB" for im in good)


def test_labelled_split_with_non_ascii_class_names(messy):
    valid = read_labelled(messy, "valid")
    assert valid.classes == sorted(["雏菊", "tulip"])
    assert len(valid.paths) == 6 and sorted(set(valid.labels)) == [0, 1]
    assert valid.rel(valid.paths[0]).count("/") == 1


def test_test_split_marks_unknown_classes(messy):
    _save(messy / "test" / "images" / "rose" / "r.png")
    test = read_labelled(messy, "test", classes=["tulip", "雏菊"])
    unknown = [p for p, y in zip(test.paths, test.labels) if y == -1]
    assert [p.parent.name for p in unknown] == ["rose"]


def test_loose_files_and_empty_class_folders_are_named_in_warnings(messy, caplog):
    _save(messy / "valid" / "images" / "stray.jpg")
    (messy / "valid" / "images" / "rose").mkdir()
    with caplog.at_level(logging.WARNING):
        valid = read_labelled(messy, "valid")
    assert valid.classes == sorted(["雏菊", "tulip"]) and len(valid.paths) == 6
    assert "stray.jpg" in caplog.text and "no class folder" in caplog.text
    assert "['rose']" in caplog.text and "not classes" in caplog.text


def test_formats_the_server_refuses_are_skipped_offline_too(tmp_path):
    """A GIF named .png: the server answers 400, so training and client_test.py skip it instead of scoring it."""
    gif = _save(tmp_path / "animated.png", "RGB", fmt="GIF")
    with pytest.raises(ImageDecodeError, match="GIF format"):
        decode_image(gif)
    skipped = Skipped()
    assert readable([gif, _save(tmp_path / "real.png")], 32, skipped) == [False, True]
    assert [Path(p).name for p, _ in skipped.items] == ["animated.png"]


def test_fewer_than_two_classes_is_a_clear_error(tmp_path):
    _save(tmp_path / "valid" / "images" / "only" / "a.png")
    (tmp_path / "valid" / "images" / "empty").mkdir()
    with pytest.raises(DatasetError, match="at least 2"):
        read_labelled(tmp_path, "valid")


def test_missing_or_empty_splits_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="train/images"):
        read_unlabelled(tmp_path)
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "images" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no image files"):
        read_unlabelled(tmp_path)


def test_exif_orientation_is_honoured(tmp_path):
    im = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    im.save(path, "JPEG", exif=exif.tobytes())
    assert decode_image(path).size == (20, 60)


def test_alpha_is_composited_on_white():
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buf, "PNG")
    assert np.asarray(decode_image(buf.getvalue())).min() == 255


def test_sixteen_bit_grey_keeps_its_contrast(tmp_path):
    arr = np.linspace(0, 65535, 64 * 8, dtype=np.uint16).reshape(8, 64)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    px = np.asarray(decode_image(path))
    assert px.min() < 10 and px.max() > 245


def test_large_jpeg_is_decoded_at_reduced_scale_but_same_prediction_input(tmp_path):
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8))
    path = tmp_path / "big.jpg"
    big.save(path, "JPEG")
    reduced = decode_image(path, min_side=80)
    assert min(reduced.size) >= 80 and reduced.size[0] <= 2000 // 4
    x = load_for_eval(path.read_bytes(), EvalPreset(64))
    assert x.shape == (3, 64, 64)
    assert torch_equal(x, load_for_eval(path, EvalPreset(64)))


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


@pytest.mark.parametrize(
    "data", [b"", b"hello", b"\xff\xd8\xff\xe0" + b"\x00" * 20], ids=["empty", "text", "jpeg-header-only"]
)
def test_undecodable_bytes_raise_a_clear_error(data):
    with pytest.raises(ImageDecodeError, match="image"):
        decode_image(data)


def test_decompression_bomb_is_refused():
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")  # 81 Mpx, a few KiB on disk
    with pytest.raises(ImageDecodeError, match="Mpx"):
        decode_image(buf.getvalue())


def test_the_readability_check_keeps_no_decoded_image(monkeypatch, tmp_path):
    """valid's check streams: however many images, only the few being decoded are alive at once (was: all of them,
    hundreds of GB for thousands of 12-Mpx files)."""
    import threading
    import weakref

    import dataset.reader as reader

    class Decoded:  # stands in for a decoded PIL image
        pass

    alive: weakref.WeakSet = weakref.WeakSet()
    most = [0]
    lock = threading.Lock()

    def fake_decode(path, min_side=None):
        image = Decoded()
        with lock:
            alive.add(image)
            most[0] = max(most[0], len(alive))
        return image

    monkeypatch.setattr(reader, "decode_image", fake_decode)
    paths = [tmp_path / f"{i}.png" for i in range(300)]
    assert reader.readable(paths, 32, Skipped(), threads=2) == [True] * 300
    assert most[0] <= 4, f"{most[0]} decoded images alive at once"
