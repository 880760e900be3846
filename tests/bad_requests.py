"""Test helpers for hostile clients: send any request byte for byte and check that the answer is the SPEC's envelope.

`send` uses http.client rather than requests, so that a path such as `/autotable/../etc/passwd` or `%2e%2e` reaches
the server as written (urllib3 would normalise it) and the headers are exactly the ones given.
"""

from __future__ import annotations

import http.client
import io
import json
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

PREDICT = "/autotable/predict"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    url: str,
    method: str = "POST",
    path: str = PREDICT,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One request on a fresh connection; an iterable body goes out chunked (no Content-Length)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, data, time.monotonic() - t0)
    finally:
        conn.close()


def assert_envelope(a: Answer, code: int, words: Iterable[str] = ()) -> str:
    """The SPEC's error envelope: HTTP status == code, `data` == [], a short `msg` holding every word; returns msg."""
    assert a.status == code, (a.status, a.body[:400])
    assert a.headers.get("content-type") == "application/json", a.headers
    body = a.json()
    assert isinstance(body, dict) and list(body) == ["code", "msg", "data"], body
    assert body["code"] == code and body["data"] == [], body
    msg = body["msg"]
    # short: an error must not echo a hostile body back (a 10,000-level JSON, 1,000 images)
    assert isinstance(msg, str) and 0 < len(msg) <= 600, msg
    assert "Traceback" not in msg and "root:x:0:0" not in msg, msg
    for word in words:
        assert word.lower() in msg.lower(), (word, msg)
    return msg


def assert_predictions(a: Answer, n: int = 1) -> list[dict]:
    """A 200 envelope with one prediction per image."""
    assert a.status == 200, (a.status, a.body[:400])
    body = a.json()
    assert body["code"] == 200 and body["msg"] == "ok" and len(body["data"]) == n, body
    for item in body["data"]:
        cls, prob = item["infer_data"]
        assert isinstance(cls, str) and 0.0 <= float(prob) <= 1.0, item
    return body["data"]


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_with_header(w: int, h: int) -> bytes:
    """A tiny 8x8 PNG whose IHDR (with a valid CRC) claims w x h pixels: a decompression bomb's header."""
    png = bytearray(encode(Image.new("L", (8, 8)), "PNG"))  # signature (8), length (4), b"IHDR", w, h, ..., CRC at 29
    png[16:24] = struct.pack(">II", w, h)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)
