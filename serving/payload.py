"""Read a predict request (JSON, url-encoded form or multipart) into image bytes and the two visual flags.

Every problem is an ApiError(400) whose message names the field and says how to fix it. Images are checked from
their header only (format, size, pixel count): decoding is the TorchServe handler's job.
"""

from __future__ import annotations

import binascii
import contextlib
import io
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pybase64
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from serving.envelope import ApiError

# = handler.eval_preset.MAX_IMAGE_PIXELS (a test keeps them equal): importing it would load torch into the proxy.
MAX_IMAGE_PIXELS = 64_000_000
T = TypeVar("T")
OFF_LOOP_BYTES = 256 * 1024  # parsing the JSON of this much takes ~0.2 ms: more than a thread hand-off costs
MAX_IMAGES = 64  # images per request; more would hold the model for one client
# The proxy checks the pixel count itself (below); PIL's own bomb warning would only be noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
_DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[^;,]*)*;base64,", re.IGNORECASE)
# URL-safe -> standard alphabet; a space is a '+' that a form did not percent-encode; line breaks (MIME) go.
_NORMALISE = str.maketrans({"-": "+", "_": "/", " ": "+", "\n": None, "\r": None, "\t": None})
_B64_CHARS = re.compile(r"[^A-Za-z0-9+/=]")
FORMATS = "send a jpg, png, bmp, webp or tif file"
# The SPEC's formats (MPO: the multi-picture JPEG of many cameras). PIL identifies dozens more; those are refused
# before any decoding, since some are decoded by external programs (EPS runs Ghostscript) or rarely used code.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"})
# What a damaged header of an allowed format starts with, so the client hears "damaged PNG", not "unknown format".
_SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
HOW = "send the image file's bytes base64-encoded, e.g. base64.b64encode(open(path, 'rb').read()).decode()"


@dataclass
class PredictInput:
    images: list[bytes]
    need_visual_data: bool
    need_visual_result: bool


async def read_predict_request(request: Request, max_body: int) -> PredictInput:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            # `async with`: uploaded files spooled to disk are closed (deleted) once read
            async with request.form(max_files=MAX_IMAGES, max_fields=MAX_IMAGES + 8, max_part_size=max_body) as form:
                fields: dict[str, Any] = {key: form.getlist(key) for key in form}
                for key in ("need_visual_data", "need_visual_result"):
                    if key in fields:
                        fields[key] = fields[key][-1]
                items = fields.get("content")
                if items is not None and len(items) == 1 and not isinstance(items[0], UploadFile):
                    items = items[0]  # one text field: a single image, answered as such
                return await _predict_input(fields, items)
        except (HTTPException, MultiPartException) as e:  # the form parser's complaint: no boundary, broken parts,
            # too many files (starlette raises HTTPException inside a Starlette app, MultiPartException outside)
            raise ApiError(
                getattr(e, "status_code", 400),
                f"the {ctype} body cannot be read ({getattr(e, 'detail', None) or e.message}); send the image "
                "file(s) in the field 'content', e.g. curl -F content=@flower.jpg",
            ) from e
    if ctype in ("application/json", "") or ctype.endswith("+json"):
        body = await request.body()
        try:
            fields = await _off_loop(len(body), parse_json, body)
        except RecursionError as e:  # json's C decoder recurses once per level: 10,000 '[' exhaust the stack
            raise ApiError(400, 'the JSON body is nested too deeply; send {"content": "<base64>"}') from e
        except ValueError as e:  # bad syntax, not UTF-8, or a number of over 4300 digits
            why = str(e).split("; use sys.set_int_max_str_digits")[0]  # advice for the server, not the client
            raise ApiError(400, f'the body is not valid JSON ({why}); send {{"content": "<base64>"}}') from e
        if not isinstance(fields, dict):
            raise ApiError(400, 'the JSON body must be an object such as {"content": "<base64>"}')
        if "content" in fields and fields["content"] is None:
            raise ApiError(400, f"'content' is null; {HOW}")
        return await _predict_input(fields, fields.get("content"))
    raise ApiError(
        400,
        f"unsupported Content-Type {ctype!r}; send application/json, application/x-www-form-urlencoded or "
        "multipart/form-data with the image in the field 'content'",
    )


def parse_json(body: bytes) -> Any:
    """The standard library's json: orjson would save ~20 us a request, but reads numbers beyond 64 bits as floats
    and refuses NaN, and the messages below are written for json's errors and leniency."""
    return json.loads(body)


async def _predict_input(fields: dict[str, Any], items: Any) -> PredictInput:
    flags = [_flag(fields.get(key), key) for key in ("need_visual_data", "need_visual_result")]
    images = [await _image_bytes(item, where) for item, where in _contents(items)]
    return PredictInput(images, *flags)


def _contents(items: Any) -> list[tuple[Any, str]]:
    if items is None:
        raise ApiError(400, f"the field 'content' is missing; {HOW}")
    if isinstance(items, (str, UploadFile)):
        return [(items, "content")]
    if not isinstance(items, list):
        raise ApiError(400, f"'content' must be a base64 string or a list of them, not {_kind(items)}")
    if not items:
        raise ApiError(400, "'content' is an empty list; send at least one image")
    if len(items) > MAX_IMAGES:
        raise ApiError(400, f"'content' holds {len(items)} images; send at most {MAX_IMAGES} per request")
    return [(item, f"content[{i}]") for i, item in enumerate(items)]


async def _image_bytes(item: Any, where: str) -> bytes:
    if isinstance(item, UploadFile):
        data = await item.read()
    elif isinstance(item, str):
        data = await _off_loop(len(item), decode_base64, item, where)
    else:
        raise ApiError(400, f"{where} must be a base64 string, not {_kind(item)}")
    if not data:
        raise ApiError(400, f"{where} is empty; {HOW}")
    check_image_header(data, where)  # header only: microseconds whatever the file size
    return data


async def _off_loop(size: int, fn: Callable[..., T], *args: Any) -> T:
    """Big inputs go to a thread so that one 32 MiB body does not stall every other request; small ones stay
    on the loop, where a thread hand-off would cost more than the work."""
    if size < OFF_LOOP_BYTES:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


def decode_base64(text: str, where: str = "content") -> bytes:
    """Standard or URL-safe base64, padding optional, an optional data:<mime>;base64, prefix, MIME line breaks."""
    with contextlib.suppress(ValueError):  # binascii.Error is a ValueError
        # The common case, strict standard base64, with pybase64's SIMD decoder: ~3 us for a 640x480 JPEG where
        # the standard library takes ~120 us. Anything else takes the lenient path below.
        return pybase64.b64decode(text, validate=True)
    text = text.strip()
    if m := _DATA_URI.match(text):
        text = text[m.end() :]
    elif text[:5].lower() == "data:":
        raise ApiError(400, f"{where} is a data URI without ';base64,'; send data:image/jpeg;base64,<base64>")
    text = text.translate(_NORMALISE).rstrip("=")
    try:
        if len(text) % 4 == 1:
            raise ValueError("its length is impossible for base64 (cut short?)")
        return pybase64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        bad = _B64_CHARS.search(text)  # only on failure: the scan costs as much as the decoding
        why = f"{bad.group()!r} at position {bad.start()}" if bad else str(e)
        raise ApiError(400, f"{where} is not base64: {why}; {HOW}") from e


def check_image_header(data: bytes, where: str = "content") -> None:
    """Reject what is not an image, or too many pixels to decode, from the header alone (no pixel is decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            fmt = im.format
    except Image.DecompressionBombError as e:  # PIL's own check, at twice its limit: say it in our terms
        px = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(px[1]) / 1e6:.0f} Mpx" if px else "too many pixels"
        raise ApiError(
            400, f"{where} is {size}, over the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit; downscale it before sending"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        why = "" if isinstance(e, UnidentifiedImageError) else f" ({e})"  # its text names only a BytesIO object
        like = next((name for sig, name in _SIGNATURES.items() if data.startswith(sig)), None)
        if like or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            msg = f"{where} starts like a {like or 'WEBP'} file but its header is damaged or cut short{why}"
        elif why:
            msg = f"{where} is not a readable image file{why}"
        else:
            msg = f"{where} is not an image file of a known format (it starts with {data[:8]!r})"
        raise ApiError(400, f"{msg}; {FORMATS}") from e
    if fmt not in ALLOWED_FORMATS:
        raise ApiError(400, f"{where} is in the {fmt} format, which this service does not read; {FORMATS}")
    if w * h > MAX_IMAGE_PIXELS:
        raise ApiError(
            400,
            f"{where} is {w}x{h} = {w * h / 1e6:.0f} Mpx, over the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit; "
            "downscale it before sending",
        )


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return True  # the SPEC's default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ApiError(400, f"'{name}' must be true or false, not {value!r:.40}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
