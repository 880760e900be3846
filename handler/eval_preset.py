"""Eval preprocessing: the one definition shared by training-time evaluation, client_test.py and
the TorchServe handler (this file ships inside the .mar), so offline and served predictions agree.

Like torchvision's `references/classification/presets.py`, the preset's numbers travel with the
model (`preprocess.json` in the model folder and the .mar), so whoever loads the model rebuilds
exactly this transform.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageFile, ImageOps
from torchvision.transforms import v2

# ImageNet statistics: the same normalisation lightly's SimSiamTransform applies in training.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Refuse decompression bombs before decoding: 64 Mpx covers a 8000x8000 photo.
MAX_IMAGE_PIXELS = 64_000_000
# Truncated files must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# The SPEC's formats (MPO: the multi-picture JPEG of many cameras), whatever the file is named. PIL identifies dozens
# more; some decode through external programs (EPS runs Ghostscript). The proxy refuses the same set before
# forwarding (serving/payload.py keeps its own copy: it must not import torch), so training, client_test.py and
# the server read the same files.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"})


class ImageDecodeError(ValueError):
    """The bytes are not an image this product can read; the message says why."""


@dataclass(frozen=True)
class EvalPreset:
    """Resize the shorter side to `resize_size`, centre-crop `input_size`, normalise.

    Input: a PIL image in RGB. Output: float32 tensor 3 x input_size x input_size.
    """

    input_size: int
    resize_ratio: float = 0.875  # crop/resize, as in the ImageNet eval recipe (224/256)
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)

    @property
    def resize_size(self) -> int:
        return round(self.input_size / self.resize_ratio)

    def transform(self) -> v2.Compose:
        return v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(self.resize_size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
                v2.CenterCrop(self.input_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform()(image)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> EvalPreset:
        d = json.loads(Path(path).read_text())
        return cls(
            input_size=int(d["input_size"]),
            resize_ratio=float(d["resize_ratio"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
        )


def decode_image(data: bytes | str | Path, min_side: int | None = None) -> Image.Image:
    """Decode image bytes (or a file path) to an upright RGB PIL image.

    - EXIF orientation is honoured; grey, palette and 16-bit images become RGB; alpha is composited
      on white (what a viewer shows), not dropped to the black of transparent pixels.
    - `min_side`: JPEGs are decoded at a reduced scale (libjpeg's DCT scaling, via `draft`) while
      the shorter side stays >= min_side; a 6000x4000 photo then costs a fraction of a full decode.
    - Raises ImageDecodeError for anything unreadable, truncated, empty or over MAX_IMAGE_PIXELS.
    """
    if isinstance(data, (bytes, bytearray)):
        if not data:
            raise ImageDecodeError("the image is empty (0 bytes)")
        source = io.BytesIO(data)
    else:
        source = data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if im.format not in ALLOWED_FORMATS:
                    raise ImageDecodeError(
                        f"the file is in the {im.format} format, which is not read here; "
                        "save it as jpg, png, bmp, webp or tif"
                    )
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ImageDecodeError(
                        f"the image is {w}x{h} = {w * h / 1e6:.0f} Mpx, over the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx "
                        "limit; downscale it before sending"
                    )
                if w == 0 or h == 0:
                    raise ImageDecodeError(f"the image has no pixels ({w}x{h})")
                if min_side and im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK"):
                    im.draft(im.mode, _draft_request(w, h, min_side))
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im))
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"cannot decode the image: {e}") from e


def _draft_request(w: int, h: int, min_side: int) -> tuple[int, int]:
    # draft() picks the largest DCT scale whose result is >= the requested size in both axes.
    scale = min_side / min(w, h)
    return max(1, int(w * scale)), max(1, int(h * scale))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bits rather than clipping everything to white.
        im = im.point(lambda v: v / 256).convert("L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def load_for_eval(data: bytes | str | Path, preset: EvalPreset) -> torch.Tensor:
    """Bytes or path -> normalised 3xHxW tensor, exactly as the served model sees it."""
    image = decode_image(data, min_side=preset.resize_size)
    # The pixel limit holds after the resize too: a 1x50000 PNG is a few hundred bytes, but resizing its shorter
    # side to 256 px would make a 3 Gpx image (torchvision's Resize(int): longer side = int(r * long / short)).
    r, short, long = preset.resize_size, min(image.size), max(image.size)
    resized = r * int(r * long / short)
    if resized > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            f"the image's aspect ratio ({long / short:.0f}:1) is too extreme: resizing its shorter side to {r} px "
            f"would make {resized / 1e6:.0f} Mpx, over the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit; "
            "crop it before sending"
        )
    return preset(image)
