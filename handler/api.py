"""The product's API inside the model server: a predict request's body -> image bytes + flags, and the envelope.

nginx forwards the client's body untouched with a neutral Content-Type and the client's own in API_CONTENT_TYPE
(TorchServe's Python backend keeps one value per form field, so it must not parse forms itself). Everything here
is plain Python -- no torch, no TorchServe -- so it is unit-tested without a server. Every problem is an
ApiError(400) whose message names the field and says how to fix it (SPEC.md, "POST /autotable/predict").
"""

from __future__ import annotations

import binascii
import contextlib
import email.parser
import email.policy
import io
import json
import re
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import pybase64
from PIL import Image, UnidentifiedImageError

try:  # inside the .mar the helpers sit flat beside this file
    from eval_preset import ALLOWED_FORMATS, MAX_IMAGE_PIXELS
except ImportError:  # in the repository
    from handler.eval_preset import ALLOWED_FORMATS, MAX_IMAGE_PIXELS

# Set by nginx (serving/nginx.conf.template), whatever the client sent: which route the request came in on
# ("predict", or "health": answer who you are, no image), and the client's own Content-Type.
API_ROUTE = "x-api-route"
API_CONTENT_TYPE = "x-api-content-type"
MAX_BODY = 32 * 2**20  # = nginx's client_max_body_size; a test keeps the two equal
MAX_IMAGES = 64  # images per request; more would hold the model for one client
_DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[^;,]*)*;base64,", re.IGNORECASE)
# URL-safe -> standard alphabet; a space is a '+' that a form did not percent-encode; line breaks (MIME) go.
_NORMALISE = str.maketrans({"-": "+", "_": "/", " ": "+", "\n": None, "\r": None, "\t": None})
_B64_CHARS = re.compile(r"[^A-Za-z0-9+/=]")
FORMATS = "send a jpg, png, bmp, webp or tif file"
# What a damaged header of an allowed format starts with, so the client hears "damaged PNG", not "unknown format".
_SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
# check_image_header checks the pixel count itself; PIL's own bomb warning would only be noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
HOW = "send the image file's bytes base64-encoded, e.g. base64.b64encode(open(path, 'rb').read()).decode()"


class ApiError(Exception):
    """An error the client gets as `{"code": code, "msg": msg, "data": []}` with HTTP status `code`."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


@dataclass
class PredictInput:
    images: list[bytes]
    need_visual_data: bool = True
    need_visual_result: bool = True


def envelope(code: int = 200, msg: str = "ok", data: list[Any] | None = None) -> str:
    return json.dumps({"code": code, "msg": msg, "data": data if data is not None else []}, ensure_ascii=False)


def prediction(cls: str, probability: float, need_visual_data: bool, need_visual_result: bool) -> dict[str, Any]:
    """One entry of `data`: top-1 class and its probability with 4 decimals, plus the visual keys asked for."""
    prob = f"{probability:.4f}"
    item: dict[str, Any] = {"infer_data": [cls, prob]}
    if need_visual_data:
        item["visual_data"] = {"output_type": "text", "annotation_type": None, "data": f"{cls}_{prob}"}
    if need_visual_result:
        item["visual_result"] = f"{cls}_{prob}"
    return item


def read_predict_request(body: bytes, content_type: str) -> PredictInput:
    """The body of POST /autotable/predict as the client sent it."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        fields, items = _multipart(body, content_type)
        return _predict_input(fields, items)
    if ctype == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_IMAGES + 8)
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(400, f"the form body cannot be read ({e}); {_FORM_FIX}") from e
        fields = {key: values[-1] for key, values in form.items()}
        items = form.get("content")
        return _predict_input(fields, items[0] if items is not None and len(items) == 1 else items)
    if ctype in ("application/json", "") or ctype.endswith("+json"):
        try:
            fields = json.loads(body)
        except RecursionError as e:  # json's C decoder recurses once per level: 10,000 '[' exhaust the stack
            raise ApiError(400, 'the JSON body is nested too deeply; send {"content": "<base64>"}') from e
        except ValueError as e:  # bad syntax, not UTF-8, or a number of over 4300 digits
            why = str(e).split("; use sys.set_int_max_str_digits")[0]  # advice for the server, not the client
            raise ApiError(400, f'the body is not valid JSON ({why}); send {{"content": "<base64>"}}') from e
        if not isinstance(fields, dict):
            raise ApiError(400, 'the JSON body must be an object such as {"content": "<base64>"}')
        if "content" in fields and fields["content"] is None:
            raise ApiError(400, f"'content' is null; {HOW}")
        return _predict_input(fields, fields.get("content"))
    raise ApiError(
        400,
        f"unsupported Content-Type {ctype[:80]!r}; send application/json, application/x-www-form-urlencoded or "
        "multipart/form-data with the image in the field 'content'",
    )


_FORM_FIX = "send the image file(s) in the field 'content', e.g. curl -F content=@flower.jpg"


def _multipart(body: bytes, content_type: str) -> tuple[dict[str, Any], Any]:
    """Every part of a multipart body, repeated names kept in order: files are bytes, text fields str."""
    if "boundary=" not in content_type.lower():
        raise ApiError(
            400, f"the multipart/form-data body cannot be read (no boundary in its Content-Type); {_FORM_FIX}"
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts = list(message.iter_parts()) if message.is_multipart() else []
    if not parts:
        raise ApiError(400, f"the multipart/form-data body holds no part; {_FORM_FIX}")
    if len(parts) > MAX_IMAGES + 8:
        raise ApiError(400, f"the multipart/form-data body holds {len(parts)} parts; send at most {MAX_IMAGES} images")
    fields: dict[str, list[Any]] = {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        value: Any = data if part.get_filename() is not None else data.decode("utf-8", "replace")
        fields.setdefault(str(name), []).append(value)
    items = fields.get("content")
    if items is not None and len(items) == 1 and isinstance(items[0], str):
        items = items[0]  # one text field: a single image, answered as such
    return {key: values[-1] for key, values in fields.items()}, items


def _predict_input(fields: dict[str, Any], items: Any) -> PredictInput:
    flags = [_flag(fields.get(key), key) for key in ("need_visual_data", "need_visual_result")]
    return PredictInput([_image_bytes(item, where) for item, where in _contents(items)], *flags)


def _contents(items: Any) -> list[tuple[Any, str]]:
    if items is None:
        raise ApiError(400, f"the field 'content' is missing; {HOW}")
    if isinstance(items, (str, bytes)):
        return [(items, "content")]
    if not isinstance(items, list):
        raise ApiError(400, f"'content' must be a base64 string or a list of them, not {_kind(items)}")
    if not items:
        raise ApiError(400, "'content' is an empty list; send at least one image")
    if len(items) > MAX_IMAGES:
        raise ApiError(400, f"'content' holds {len(items)} images; send at most {MAX_IMAGES} per request")
    return [(item, f"content[{i}]") for i, item in enumerate(items)]


def _image_bytes(item: Any, where: str) -> bytes:
    if isinstance(item, bytes):  # an uploaded file
        data = item
    elif isinstance(item, str):
        data = decode_base64(item, where)
    else:
        raise ApiError(400, f"{where} must be a base64 string, not {_kind(item)}")
    if not data:
        raise ApiError(400, f"{where} is empty; {HOW}")
    check_image_header(data, where)
    return data


def read_image_body(body: bytes) -> PredictInput:
    """A direct TorchServe client's body (no nginx in front: KServe, curl on loopback): the image file itself, or
    its base64 text, TorchServe's own convention."""
    return PredictInput([_raw_image(body)])


def _raw_image(body: bytes) -> bytes:
    if not body:
        raise ApiError(400, "the request carries no image bytes; send the image file's bytes as the body")
    try:
        check_image_header(body, "the body")
        return body
    except ApiError as not_a_file:
        with contextlib.suppress(UnicodeDecodeError, ApiError):  # base64 text of the file, then?
            data = decode_base64(body.decode("ascii"), "the body")
            check_image_header(data, "the body")
            return data
        raise not_a_file from None


def decode_base64(text: str, where: str = "content") -> bytes:
    """Standard or URL-safe base64, padding optional, an optional data:<mime>;base64, prefix, MIME line breaks."""
    # The common case, strict standard base64, with pybase64's SIMD decoder: ~10 us for a 640x480 JPEG where the
    # standard library takes ~300 us of the worker's time (docs/benchmarks.md, "The front door: nginx").
    # Anything else takes the lenient path below.
    with contextlib.suppress(binascii.Error, ValueError):
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


def check_image_header(data: bytes, where: str = "content") -> None:
    """Reject what is not an image, or too many pixels to decode, from the header alone (no pixel is decoded):
    microseconds whatever the file size, before a batch-mate waits on its decoding."""
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


def decode_error(where: str, msg: str) -> ApiError:
    """A decoding failure of one image, with the fix where the decoder's words do not say it."""
    fix = "" if "send" in msg or "downscale" in msg else "; send a complete jpg, png, bmp, webp or tif file"
    return ApiError(400, f"{where}: {msg}{fix}")
