"""A corpus of bad requests and hypothesis fuzzing against a real client_infer.py + TorchServe, over real HTTP.

Every answer must be the SPEC's envelope ({"code": HTTP status, "msg": what is wrong, "data": []}) with the status
the SPEC gives (400 bad request / undecodable image, 404/405 wrong path or method, 413 body too large), in
well under a few seconds, and the service must keep answering good requests with the same TorchServe worker (a
bad input that crashed a worker would show as a new worker process).

    .venv/bin/pytest tests/test_bad_requests.py -q
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import psutil
import pytest
import requests
from bad_requests import PREDICT, Answer, assert_envelope, assert_predictions, encode, png_with_header, send
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serving_service import b64, image_bytes

pytestmark = pytest.mark.serving
MAX_SECONDS = 5.0  # per request: bad input is refused before any heavy work, good input is a 32-px model
JSON = {"Content-Type": "application/json"}
GOOD_JPEG = image_bytes((64, 48), seed=3)


def same_processes(svc) -> bool:
    """TorchServe's processes are those of the start (`family`, taken once ready): a worker that a bad input crashed
    would have been replaced by one with a new pid."""
    now = {p.pid for p in psutil.Process(svc.proc.pid).children(recursive=True)}
    return now == {p.pid for p in svc.family}


def assert_still_serving(svc) -> None:
    assert_predictions(send(svc.url, body=GOOD_BODY, headers=JSON))


# --- images ------------------------------------------------------------------------------------------------------


def jpeg_with_header(w: int, h: int) -> bytes:
    """A tiny JPEG whose SOF0 marker claims w x h pixels."""
    jpeg = bytearray(image_bytes((16, 16), seed=4))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(jpeg)


def png_bad_ihdr_crc() -> bytes:
    png = bytearray(encode(Image.new("RGB", (8, 8)), "PNG"))
    png[29] ^= 0xFF
    return bytes(png)


def png_corrupt_idat() -> bytes:
    png = bytearray(encode(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG"))
    i = png.index(b"IDAT")
    png[i + 6] ^= 0x55  # inside the zlib stream: the decoder fails, the header is fine
    return bytes(png)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
# PIL hands EPS to Ghostscript: the proxy must refuse it by format, before anything decodes it
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke showpage\n"


# --- the corpus --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One request: `json` (any JSON value, sent as application/json), or `data`/`files` (as requests builds a form
    or multipart body), or a raw `body` with `headers`; and the status and message words the SPEC asks for."""

    code: int
    words: tuple[str, ...] = ()
    method: str = "POST"
    path: str = PREDICT
    json: Any = None
    body: bytes | None = None
    data: Any = None
    files: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes | None, dict[str, str]]:
        if self.body is not None or (self.json is None and self.data is None and self.files is None):
            return self.body, self.headers
        if self.json is not None:
            return json.dumps(self.json).encode(), {**JSON, **self.headers}
        prepared = requests.Request("POST", "http://proxy/", data=self.data, files=self.files).prepare()
        body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
        return body, {"Content-Type": prepared.headers["Content-Type"], **self.headers}


def case(name: str, code: int, words: str = "", **kw: Any) -> Any:
    """`words`: '|'-separated, each must appear in `msg` (case-insensitive)."""
    return pytest.param(Case(code, tuple(w for w in words.split("|") if w), **kw), id=name)


GOOD = b64(GOOD_JPEG)
GOOD_BODY = json.dumps({"content": GOOD}).encode()
NESTED = b"[" * 5000 + b"]" * 5000
TIFF_BOMB = encode(Image.new("1", (9000, 9000)), "TIFF", compression="group4")  # 81 Mpx in about 1 kB
MULTIPART = "multipart/form-data"
CORPUS = [
    # the body is not the JSON object the API takes
    case("not-json", 400, "not valid JSON", body=b"{not json", headers=JSON),
    case("empty-body", 400, "not valid JSON", body=b"", headers=JSON),
    case("json-number", 400, "must be an object", body=b"42", headers=JSON),
    case("json-string", 400, "must be an object", json="content"),
    case("json-null", 400, "must be an object", body=b"null", headers=JSON),
    case("json-list", 400, "must be an object", json=[GOOD]),
    case("nested-10000-levels", 400, "nested too deeply", body=b"[" * 10_000 + b"]" * 10_000, headers=JSON),
    case("nested-in-content", 400, "nested too deeply", body=b'{"content": %s}' % NESTED, headers=JSON),
    case("not-utf8", 400, "not valid JSON|utf-8", body=b'{"content": "\xff\xfe"}', headers=JSON),
    case("5000-digit-number", 400, "not valid JSON|digits", body=b'{"content": ' + b"9" * 5000 + b"}", headers=JSON),
    # `content` of the wrong type
    case("content-number", 400, "base64 string or a list|a number", json={"content": 123}),
    case("content-nan", 400, "a number", body=b'{"content": NaN}', headers=JSON),
    case("content-boolean", 400, "a boolean", json={"content": True}),
    case("content-object", 400, "an object", json={"content": {"data": GOOD}}),
    case("content-null", 400, "'content' is null", json={"content": None}),
    case("content-list-of-numbers", 400, "content[0] must be a base64 string", json={"content": [1, 2, 3]}),
    case("content-list-with-null", 400, "content[1]", json={"content": [GOOD, None]}),
    case("content-nested-list", 400, "content[0]|a list", json={"content": [[GOOD]]}),
    case("content-empty-list", 400, "empty list", json={"content": []}),
    case("content-1000-images", 400, "1000 images|at most 64", json={"content": [GOOD] * 1000}),
    case("content-missing", 400, "'content' is missing", json={"image": GOOD}),
    # the flags
    case("flag-string", 400, "need_visual_data|true or false", json={"content": GOOD, "need_visual_data": "maybe"}),
    case("flag-number", 400, "need_visual_result|true or false", json={"content": GOOD, "need_visual_result": 2}),
    case("flag-list", 400, "need_visual_data", json={"content": GOOD, "need_visual_data": [True]}),
    case("flag-object", 400, "need_visual_result", json={"content": GOOD, "need_visual_result": {}}),
    # `content` is not base64 of an image file
    case("empty-string", 400, "empty", json={"content": ""}),
    case("whitespace-only", 400, "empty", json={"content": " \n\t "}),
    case("not-base64", 400, "not base64|'!'", json={"content": "this is not base64!"}),
    case("base64-cut-short", 400, "not base64|length", json={"content": GOOD[:41]}),
    case("data-uri-without-base64", 400, "data URI", json={"content": "data:image/png,iVBORw0KGgo"}),
    case("base64-of-text", 400, "not an image file", json={"content": b64(b"hello world, not an image")}),
    case("base64-of-random-bytes", 400, "not an image file", json={"content": b64(bytes(range(256)) * 4)}),
    case("null-byte", 400, "not base64", json={"content": GOOD[:40] + "\x00" + GOOD[40:]}),
    # broken or unsupported image files
    case("truncated-jpeg", 400, "truncated", json={"content": b64(image_bytes(seed=10)[:2000])}),
    case("jpeg-header-only", 400, "JPEG|damaged", json={"content": b64(GOOD_JPEG[:10])}),
    case("png-bad-ihdr-crc", 400, "PNG|damaged", json={"content": b64(png_bad_ihdr_crc())}),
    case("png-corrupt-data", 400, "cannot decode", json={"content": b64(png_corrupt_idat())}),
    case("png-zero-pixels", 400, "PNG|damaged", json={"content": b64(png_with_header(0, 16))}),
    case("animated-gif", 400, "GIF format|jpg, png", json={"content": b64(animated_gif())}),
    case("svg", 400, "not an image file", json={"content": b64(SVG)}),
    case("eps-never-reaches-ghostscript", 400, "EPS format", json={"content": b64(EPS)}),
    case("ico", 400, "ICO format", json={"content": b64(encode(Image.new("RGB", (16, 16)), "ICO"))}),
    case("bad-image-in-a-list", 400, "content[1]", json={"content": [GOOD, b64(image_bytes(seed=11)[:1500])]}),
    # decompression bombs: a few hundred bytes that claim billions of pixels
    case("png-bomb-12000x12000", 400, "144 Mpx|64 Mpx", json={"content": b64(png_with_header(12000, 12000))}),
    case("jpeg-bomb-65500x65500", 400, "4290 Mpx|64 Mpx limit", json={"content": b64(jpeg_with_header(65500, 65500))}),
    case("tiff-bomb-9000x9000", 400, "81 Mpx", json={"content": b64(TIFF_BOMB)}),
    # the pixel limit also holds after the model's resize: 1 x 100000 px would be resized to 37 x 3.7M px
    case("aspect-ratio-bomb-1x100000", 400, "aspect ratio|crop", json={"content": b64(png_with_header(1, 100_000))}),
    # bodies of the wrong type or size
    case("content-type-text", 400, "Content-Type", body=GOOD_BODY, headers={"Content-Type": "text/plain"}),
    case("content-type-xml", 400, "Content-Type|application/json", body=b"<a/>", headers={"Content-Type": "text/xml"}),
    case("raw-image-body", 400, "Content-Type", body=GOOD_JPEG, headers={"Content-Type": "image/jpeg"}),
    case("multipart-no-boundary", 400, "boundary", body=b"xx", headers={"Content-Type": MULTIPART}),
    case("multipart-garbage", 400, "multipart", body=b"junk\r\n", headers={"Content-Type": MULTIPART + ";boundary=a"}),
    case("multipart-65-files", 400, "64", files=[("content", (f"{i}.jpg", GOOD_JPEG)) for i in range(65)]),
    case("multipart-empty-file", 400, "empty", files={"content": ("x.jpg", b"")}),
    case("multipart-text-file", 400, "not an image file", files={"content": ("../../etc/passwd", b"hello, text")}),
    case("form-missing-content", 400, "'content' is missing", data={"image": GOOD}),
    case("form-bad-flag", 400, "need_visual_data", data={"content": GOOD, "need_visual_data": "perhaps"}),
    # a Content-Length over the limit is refused before a byte of the body is read (none is sent here)
    case("declared-over-32MiB", 413, "32 MiB limit", headers={**JSON, "Content-Length": str(33 * 2**20)}),
    # wrong method or path; the paths go out byte for byte
    case("get-predict", 405, "GET|use POST", method="GET"),
    case("put-predict", 405, "PUT|use POST", method="PUT", json={"content": GOOD}),
    case("delete-predict", 405, "DELETE|use POST", method="DELETE"),
    case("patch-predict", 405, "PATCH|use POST", method="PATCH", json={"content": GOOD}),
    case("post-health", 405, "POST|use GET", path="/health", json={}),
    case("wrong-path", 404, "no route|POST /autotable/predict", path="/autotable/predictions", json={"content": GOOD}),
    case("trailing-slash", 404, "no route|/autotable/predict/", path="/autotable/predict/", json={"content": GOOD}),
    case("root", 404, "no route", method="GET", path="/"),
    # a path above the root or with a NUL byte is not valid HTTP to nginx: refused before any route
    case("traversal", 400, "not valid HTTP", method="GET", path="/autotable/../../etc/passwd"),
    case("traversal-encoded", 400, "not valid HTTP", method="GET", path="/autotable/%2e%2e/%2e%2e/etc/passwd"),
    case("traversal-encoded-slash", 400, "not valid HTTP", method="GET", path="/autotable/..%2f..%2fetc%2fpasswd"),
    case("null-byte-in-path", 400, "not valid HTTP", path="/autotable/predict%00.jpg", json={"content": GOOD}),
    case("static-file-guess", 404, "no route", method="GET", path="/static/../config.properties"),
]

# Valid inputs that look odd: the SPEC takes images "of any resolution", RGB, grey or with alpha, and the README
# also 16-bit; CMYK JPEGs (print workflows) are JPEGs. Unknown fields are ignored (the README says so).
VALID = [
    pytest.param({"content": b64(encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"))}, id="1x1-png"),
    pytest.param({"content": b64(encode(Image.new("I;16", (20, 20), 40000), "PNG"))}, id="16-bit-png"),
    pytest.param({"content": b64(encode(Image.new("CMYK", (20, 20), (0, 50, 100, 0)), "JPEG"))}, id="cmyk-jpeg"),
    pytest.param({"content": b64(encode(Image.new("LA", (20, 20), (90, 0)), "PNG"))}, id="transparent-grey-png"),
    pytest.param({"content": GOOD, "comment": "x", "need_visual_dat": False}, id="unknown-fields-ignored"),
]


@pytest.mark.parametrize("bad", CORPUS)
def test_bad_request(service, bad: Case) -> None:
    body, headers = bad.encode()
    a = send(service.url, bad.method, bad.path, body, headers)
    assert a.seconds < MAX_SECONDS, a.seconds
    assert_envelope(a, bad.code, bad.words)
    if bad.code == 405:
        assert a.headers["allow"] in ("POST", "GET"), a.headers
    assert_still_serving(service)


@pytest.mark.parametrize("payload", VALID)
def test_odd_but_valid_image(service, payload: dict) -> None:
    a = send(service.url, body=json.dumps(payload).encode(), headers=JSON)
    assert a.seconds < MAX_SECONDS, a.seconds
    [item] = assert_predictions(a)
    assert list(item) == ["infer_data", "visual_data", "visual_result"]  # the misspelt flag changed nothing


def test_body_streamed_over_the_limit(service) -> None:
    """Chunked, so no Content-Length to refuse up front: counted as it streams in and refused once over 32 MiB."""
    chunk = b"A" * 2**20
    a = send(service.url, body=(chunk for _ in range(40)), headers=JSON)
    assert_envelope(a, 413, ["32 MiB limit"])
    assert_still_serving(service)


# Below the routes: nginx refuses what is not HTTP/1.x with a 400 (the envelope, through its error page; a broken
# chunked body in the predict route gets nginx's plain 400) and closes; what matters is that the connection is
# refused at once and nothing else is disturbed.
MALFORMED_HTTP = {
    "null-byte-in-request-line": b"GET /autotable/predict\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls-client-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "negative-content-length": b"POST /autotable/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "bad-chunk-size": b"POST /autotable/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


def raw_exchange(service, raw: bytes, until: bytes | None = None) -> bytes:
    """Send `raw` in one packet; read until the connection closes (or `until` has arrived)."""
    parts = urlsplit(service.url)
    answer = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=MAX_SECONDS) as s:
        s.sendall(raw)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
                if until is not None and answer.count(until) >= 1:
                    break
    return answer


@pytest.mark.parametrize("raw", MALFORMED_HTTP.values(), ids=MALFORMED_HTTP.keys())
def test_malformed_http_is_refused(service, raw: bytes) -> None:
    answer = raw_exchange(service, raw)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    if b"chunked" not in raw:
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == 400, answer
    assert_still_serving(service)


def test_http_09_is_answered_without_a_route(service) -> None:
    """HTTP/0.9 (`GET /`, no version, no headers) gets what HTTP/0.9 can carry: the 404 envelope's body alone."""
    answer = raw_exchange(service, b"GET /\r\n\r\n")
    assert json.loads(answer)["code"] == 404, answer
    assert_still_serving(service)


def _predict_request(body: bytes) -> bytes:
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_pipelined_requests_are_each_answered_in_order(service) -> None:
    """Three requests in one packet (HTTP/1.1 pipelining): three answers, in order; then a fourth whose head
    never completes: the three 200s are not lost, the connection is closed after the head deadline."""
    one, bad = _predict_request(GOOD_BODY), _predict_request(b'{"content": "!"}')
    answer = raw_exchange(service, one + bad + one + b"POST /autotable/predict HTTP/1.1\r\nHost:")
    statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]
    assert statuses == [200, 400, 200], answer[:600]


def test_a_request_before_an_http09_line_is_answered(service) -> None:
    answer = raw_exchange(service, _predict_request(GOOD_BODY) + b"GET /\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    first = json.loads(answer.partition(b"\r\n\r\n")[2].split(b"HTTP/1.1", 1)[0][: int(
        re.search(rb"(?i)content-length: (\d+)", answer).group(1))])  # fmt: skip
    assert first["code"] == 200 and len(first["data"]) == 1


def test_corpus_left_the_service_whole(service) -> None:
    """After every case above: healthy, and the same TorchServe processes (no worker crashed and was replaced)."""
    assert requests.get(f"{service.url}/health", timeout=10).json()["code"] == 200
    assert_still_serving(service)
    assert same_processes(service)


# --- fuzzing -----------------------------------------------------------------------------------------------------

FUZZ_EXAMPLES = 600
SEED_IMAGES = [
    image_bytes((40, 30), "JPEG", seed=1),
    image_bytes((40, 30), "PNG", "RGBA", seed=2),
    image_bytes((33, 17), "BMP", seed=3),
    image_bytes((24, 24), "WEBP", seed=4),
    image_bytes((20, 28), "TIFF", "L", seed=5),
    animated_gif(),
]
# what may answer 200: the API and its OpenAPI pages (README, "Security choices")
PUBLIC_ROUTES = {("POST", PREDICT), ("GET", "/health"), ("GET", "/openapi.json")}
# no framing or connection headers: a random Content-Length would make the server wait for bytes that never come
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A seed image with a few bytes overwritten and maybe cut short: gets past some checks, not all."""
    data = bytearray(draw(st.sampled_from(SEED_IMAGES)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


b64_texts = st.one_of(
    st.sampled_from(SEED_IMAGES).map(b64),
    mutated_images().map(b64),
    mutated_images().map(lambda b: "data:image/png;base64," + base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.binary(max_size=200).map(b64),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n:;,.!%", max_size=60),
    st.text(max_size=30),
)
flags = st.booleans() | st.sampled_from(["true", "false", "yes", "0", "1", "", "maybe"]) | json_values


@st.composite
def predict_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A predict request whose fields may each be right or wrong, as JSON, a url-encoded form or multipart."""
    fields: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2))
    if draw(st.booleans()):
        fields["content"] = draw(b64_texts | st.lists(b64_texts, max_size=4) | json_values)
    for name in ("need_visual_data", "need_visual_result"):
        if draw(st.booleans()):
            fields[name] = draw(flags)
    kind = draw(st.sampled_from(["json", "form", "multipart"]))
    if kind == "json":
        return json.dumps(fields).encode(), dict(JSON)
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    files = None
    if kind == "multipart":
        images = draw(st.lists(mutated_images() | st.binary(max_size=100), min_size=1, max_size=3))
        files = [("content", (f"{i}.img", im)) for i, im in enumerate(images)]
        form.pop("content", None)
    prepared = requests.Request("POST", "http://proxy/", data=form, files=files).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body or b""
    return body, {"Content-Type": prepared.headers.get("Content-Type", "application/x-www-form-urlencoded")}


content_types = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
     "multipart/form-data; boundary=xyz", "image/jpeg", "application/octet-stream", "application/problem+json", ""]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz/+-;= ", max_size=30)  # fmt: skip
header_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,15}\Z").filter(lambda h: h.lower() not in FRAMING)
header_values = st.from_regex(r"\A[!-~]([ -~]{0,38}[!-~])?\Z")  # printable ASCII, no CR/LF, no edge spaces
paths = st.sampled_from([PREDICT, "/health", "/", "/models", "/metrics", "/predictions/x", "/docs"]) | st.text(
    max_size=30
).map(lambda t: "/" + quote(t, safe="/"))


@st.composite
def requests_(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    """(method, path, body, headers): mostly predict requests, some raw bodies, some wrong routes."""
    kind = draw(st.sampled_from(["predict", "predict", "predict", "raw", "route"]))
    method, path = "POST", PREDICT
    if kind == "predict":
        body, headers = draw(predict_bodies())
    elif kind == "raw":
        body = draw(st.binary(max_size=2000) | json_values.map(lambda v: json.dumps(v).encode()))
        headers = {"Content-Type": draw(content_types)}
    else:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
        path, body, headers = draw(paths), draw(st.binary(max_size=200)), {}
    extra = draw(st.dictionaries(header_names, header_values, max_size=3))
    return method, path, body, {**extra, **headers} if draw(st.booleans()) else {**headers, **extra}


def test_fuzz(service) -> None:
    """FUZZ_EXAMPLES generated requests: never a 5xx, always the envelope, never slow; the service stays whole."""
    sent: list[tuple[int, float]] = []

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,  # the same requests on every run and machine
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(requests_())
    def one(request: tuple[str, str, bytes, dict[str, str]]) -> None:
        method, path, body, headers = request
        a: Answer = send(service.url, method, path, body, headers)
        sent.append((a.status, a.seconds))
        assert a.seconds < MAX_SECONDS, (request, a.seconds)
        assert a.status == 200 or 400 <= a.status < 500, (request, a.status, a.body[:300])
        if a.status != 200:
            assert_envelope(a, a.status)
        elif path == PREDICT:
            assert_predictions(a, len(a.json()["data"]))
        else:
            assert (method, path) in PUBLIC_ROUTES, (request, a.body[:300])

    one()
    statuses = Counter(s for s, _ in sent)
    slowest = max(t for _, t in sent)
    print(f"fuzz: {len(sent)} requests, statuses {dict(sorted(statuses.items()))}, slowest {slowest:.2f} s")
    assert len(sent) >= 500
    assert statuses[200] >= 20 and statuses[400] >= 200  # the mix reached the model, not only the parser
    assert_still_serving(service)
    assert same_processes(service)
