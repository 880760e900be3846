"""The product's API inside the handler, without a server: request bodies (JSON, form, multipart), base64 in its
variants, image headers, flags and the envelope."""

from __future__ import annotations

import base64
import json

import pytest
import requests
from serving_service import b64, image_bytes

from handler.api import (
    MAX_IMAGES,
    ApiError,
    _flag,
    check_image_header,
    decode_base64,
    envelope,
    prediction,
    read_image_body,
    read_predict_request,
)

JPEG = image_bytes((40, 30), seed=1)
PNG = image_bytes((20, 10), "PNG", seed=2)


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(JPEG).decode(),
        base64.urlsafe_b64encode(JPEG).decode().rstrip("="),
        "data:image/jpeg;base64," + base64.b64encode(JPEG).decode(),
        base64.encodebytes(JPEG).decode(),  # MIME line breaks
        base64.b64encode(JPEG).decode().replace("+", " "),  # a form that did not percent-encode '+'
    ],
)
def test_base64_variants(text):
    assert decode_base64(text) == JPEG


@pytest.mark.parametrize(
    "text, words", [("abc$", "'$' at position 3"), ("abcde", "length"), ("data:image/png,xyz", "data URI")]
)
def test_base64_errors_say_what_and_how(text, words):
    with pytest.raises(ApiError) as e:
        decode_base64(text)
    assert e.value.code == 400 and words in e.value.msg and "base64" in e.value.msg


def test_image_header_check():
    check_image_header(JPEG)
    for data, words in [(b"GIF8 no", "known format"), (JPEG[:10], "content")]:
        with pytest.raises(ApiError, match=words):
            check_image_header(data)


def test_flags_and_prediction_format():
    assert [_flag(v, "f") for v in (None, True, False, "true", "False", "0", "1", 1, 0)] == [
        True, True, False, True, False, False, True, True, False,
    ]  # fmt: skip
    with pytest.raises(ApiError, match="'f' must be true or false"):
        _flag("maybe", "f")
    assert prediction("daisy", 0.55749, True, True) == {
        "infer_data": ["daisy", "0.5575"],
        "visual_data": {"output_type": "text", "annotation_type": None, "data": "daisy_0.5575"},
        "visual_result": "daisy_0.5575",
    }
    assert prediction("daisy", 1.0, False, False) == {"infer_data": ["daisy", "1.0000"]}


def multipart(files: list[tuple[str, bytes]], data: dict | None = None) -> tuple[bytes, str]:
    """A real multipart body, as requests builds it."""
    prepared = requests.Request("POST", "http://x/", files=files, data=data).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def test_multipart_keeps_every_file_of_one_field_in_order():
    """Two files named `content` are two images (TorchServe's own form parsing would keep one)."""
    body, ctype = multipart([("content", ("a.jpg", JPEG)), ("content", ("b.png", PNG))], {"need_visual_data": "false"})
    req = read_predict_request(body, ctype)
    assert req.images == [JPEG, PNG] and req.need_visual_data is False and req.need_visual_result is True
    body, ctype = multipart([("content", ("a.jpg", JPEG))])
    assert read_predict_request(body, ctype).images == [JPEG]


def test_form_and_json_bodies():
    form = f"content={b64(JPEG).replace('+', '%2B').replace('/', '%2F')}&need_visual_result=0".encode()
    req = read_predict_request(form, "application/x-www-form-urlencoded")
    assert req.images == [JPEG] and req.need_visual_result is False
    req = read_predict_request(json.dumps({"content": [b64(JPEG), b64(PNG)]}).encode(), "application/json")
    assert req.images == [JPEG, PNG]
    assert read_predict_request(json.dumps({"content": b64(JPEG)}).encode(), "").images == [JPEG]  # no type: JSON


@pytest.mark.parametrize(
    ("body", "ctype", "words"),
    [
        (b"{", "application/json", "not valid JSON"),
        (b"[1]", "application/json", "must be an object"),
        (b"{}", "application/json", "'content' is missing"),
        (b'{"content": []}', "application/json", "empty list"),
        (json.dumps({"content": ["QQ=="] * (MAX_IMAGES + 1)}).encode(), "application/json", f"at most {MAX_IMAGES}"),
        (b"x", "text/plain", "unsupported Content-Type"),
        (b"--b\r\n", "multipart/form-data", "no boundary"),
        (b"garbage", "multipart/form-data; boundary=zz", "no part"),
        (b"[" * 100000, "application/json", "nested too deeply"),
    ],
)
def test_bad_bodies_say_what_and_how(body, ctype, words):
    with pytest.raises(ApiError) as e:
        read_predict_request(body, ctype)
    assert e.value.code == 400 and words in e.value.msg


def test_a_direct_client_sends_the_file_or_its_base64():
    assert read_image_body(JPEG).images == [JPEG]
    assert read_image_body(b64(PNG).encode()).images == [PNG]
    with pytest.raises(ApiError, match="no image bytes"):
        read_image_body(b"")


def test_envelope_is_the_specs():
    assert json.loads(envelope(400, "bad")) == {"code": 400, "msg": "bad", "data": []}
    assert json.loads(envelope(200, "ok", [prediction("daisy", 0.5, False, False)]))["data"] == [
        {"infer_data": ["daisy", "0.5000"]}
    ]
