"""Security of the served API, against a real client_infer.py + TorchServe: only the product's routes are public,
TorchServe listens on loopback only, no request reaches the filesystem, and the size, image-count and pixel limits
hold at the values README.md documents.

    .venv/bin/pytest tests/test_security.py -q
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests
from bad_requests import assert_envelope, assert_predictions, png_with_header, send
from serving_service import REPO, b64, image_bytes

from handler.api import MAX_BODY, MAX_IMAGES
from handler.eval_preset import ALLOWED_FORMATS, MAX_IMAGE_PIXELS
from serving.ts_config import read_properties

pytestmark = pytest.mark.serving
JSON = {"Content-Type": "application/json"}
SMALL = image_bytes((40, 30), seed=5)


def post_json(service, payload: object) -> object:
    return send(service.url, body=json.dumps(payload).encode(), headers=JSON)


# TorchServe's inference, management, metrics and KServe routes: none may answer on the public port.
TORCHSERVE_PATHS = [
    "/ping", "/metrics", "/api-description", "/models", "/models/{m}", "/models/{m}/all", "/models/{m}/1.0/set-default",
    "/predictions/{m}", "/predictions/{m}/1.0", "/explanations/{m}", "/v1/models/{m}:predict", "/v2/models/{m}/infer",
    "/workflows", "/token",
]  # fmt: skip
# What TorchServe's own answers hold: none of it may come back through the proxy.
TORCHSERVE_WORDS = ("modelName", "Healthy", "ts_inference", "workers", "openapi")


def test_torchserve_apis_are_not_reachable_through_the_proxy(service, trained_model) -> None:
    model = trained_model["gened_model_name"]
    mgmt = service.management_url
    # TorchServe is up and answering on loopback, so the 404s below mean "not exposed", not "TorchServe is down"
    assert model in service.management("GET", "/models").text
    for path in TORCHSERVE_PATHS:
        for method in ("GET", "POST", "PUT", "DELETE"):
            a = send(service.url, method, path.format(m=model), body=b"{}" if method != "GET" else None)
            assert_envelope(a, 404, ["no route"])
            assert not any(w.encode() in a.body for w in TORCHSERVE_WORDS), (method, path, a.body)
            assert a.headers.get("server", "nginx") == "nginx"  # no version in the banner
    # The proxy is no forward proxy: an absolute-form target or a Host header naming TorchServe reaches no route.
    netloc = urlsplit(mgmt).netloc
    for method, target in [("GET", f"{mgmt}/models"), ("POST", f"{mgmt}/models?url=file:///etc/passwd")]:
        a = send(service.url, method, target, headers={"Host": netloc})
        assert_envelope(a, 404, ["no route"])
        assert b"modelName" not in a.body and b"status" not in a.body
    a = send(service.url, "GET", "/models", headers={"Host": netloc})
    assert_envelope(a, 404, ["no route"])


def refused(r: requests.Response) -> bool:
    """TorchServe 0.12 answers a missing or wrong key with 400 InvalidKeyException."""
    return r.status_code in (400, 401) and "Token Authorization failed" in r.text


def test_torchserve_refuses_calls_without_its_keys(service, trained_model) -> None:
    """Token authorization is on: loopback is not trusted. Without the key (or with the other API's), the
    management and inference APIs refuse; the key file is the owner's alone."""
    model = trained_model["gened_model_name"]
    keys = service.keys()
    for url in (f"{service.management_url}/models", f"{service.management_url}/models/{model}"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {keys['inference']}"}):
            r = requests.get(url, headers=headers, timeout=10)
            assert refused(r), (url, headers, r.status_code, r.text[:200])
    r = requests.post(f"{service.inference_url}/predictions/{model}", data=SMALL, timeout=30,
                      headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert refused(r), r.text[:200]
    assert service.management("GET", "/models").status_code == 200
    key_file = Path(re.search(r"token authorization: (\S+)\)", service.output()).group(1))
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_only_the_runs_own_model_store_registers(service, trained_model, tmp_path) -> None:
    """With the key, a .mar from anywhere else (file:// or a path) is refused: allowed_urls allows no URL."""
    mar = Path(trained_model["model_path"]) / f"{trained_model['gened_model_name']}.mar"
    copy = tmp_path / "elsewhere.mar"
    copy.write_bytes(mar.read_bytes())
    for url in (copy.as_uri(), str(copy), "../../../../" + str(copy), "http://127.0.0.1:9/x.mar"):
        r = service.management("POST", "/models", params={"url": url, "model_name": "intruder"})
        assert r.status_code in (400, 404), (url, r.status_code, r.text[:300])
    assert "intruder" not in service.management("GET", "/models").text


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # Java listens on IPv6 sockets: ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


def test_torchserve_listens_on_loopback_only(service) -> None:
    family = psutil.Process(service.proc.pid).children(recursive=True)
    [java] = [p for p in family if p.name() == "java"]
    # the config TorchServe was started with (-f <run folder>/config.properties) binds every API to 127.0.0.1
    cmd = java.cmdline()
    props = read_properties(Path(cmd[cmd.index("-f") + 1]))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert urlsplit(props[key]).hostname == "127.0.0.1", (key, props[key])
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    # ...and so do the sockets the processes actually listen on
    listening = [
        (p.name(), c.laddr.ip, c.laddr.port)
        for p in family
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    ts_ports = {urlsplit(props[k]).port for k in ("inference_address", "management_address", "metrics_address")}
    ts_ports |= {int(props["grpc_inference_port"]), int(props["grpc_management_port"])}
    assert ts_ports <= {port for name, _, port in listening if name == "java"}, (ts_ports, listening)
    assert all(is_loopback(ip) for _, ip, _ in listening), listening
    # from this host's other addresses, those ports are closed
    others = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback
    ]
    for ip in others:
        for port in ts_ports:
            with pytest.raises(OSError), socket.create_connection((ip, port), timeout=2):
                pass


def test_no_request_reaches_the_filesystem(service, tiny_dataset, tmp_path) -> None:
    """`content` is bytes, never a name: a path or URL of a real image on the server's own disk is a 400."""
    real = min(p for p in (tiny_dataset / "test" / "images").rglob("*") if p.is_file()).resolve()
    assert_predictions(post_json(service, {"content": b64(real.read_bytes())}))  # the file itself is a good image
    names = [
        str(real), f"file://{real}", b64(str(real).encode()), "/etc/passwd", "file:///etc/passwd",
        "../../../../../../etc/passwd", "/proc/self/environ", "~/.ssh/id_rsa", "\\\\host\\share\\x.jpg",
        f"{service.management_url}/models", "data:image/png;base64,/etc/passwd",
    ]  # fmt: skip
    for name in names:
        for payload in ({"content": name}, {"content": [name]}):
            a = post_json(service, payload)
            assert_envelope(a, 400, ["content"])
            assert not any(w in a.body for w in (b"root:", b"PATH=", b"modelName")), (name, a.body)
        assert_envelope(send(service.url, body=f"content={name}".encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"}), 400)  # fmt: skip
    # an uploaded file's name is never used as a path: nothing is written where it points
    target = tmp_path / "written-by-the-proxy.jpg"
    for filename in (str(target), f"../../../../../..{target}"):
        r = requests.post(f"{service.url}/autotable/predict", files={"content": (filename, SMALL)}, timeout=30)
        assert r.status_code == 200, r.text
        assert not target.exists()


def test_body_limit_is_exact(service) -> None:
    """MAX_BODY bytes are read and parsed (400: empty content); one byte more is 413, declared or streamed."""
    tail = b'{"content": ""}'
    at_limit = b" " * (MAX_BODY - len(tail)) + tail
    assert_envelope(send(service.url, body=at_limit, headers=JSON), 400, ["empty"])
    assert_envelope(send(service.url, body=at_limit + b" ", headers=JSON), 413, [f"{MAX_BODY // 2**20} MiB limit"])
    # declared over the limit: answered at once, without waiting for (or reading) the body, which never comes
    a = send(service.url, headers={**JSON, "Content-Length": str(MAX_BODY + 1)}, timeout=5)
    assert_envelope(a, 413, ["MiB limit"])
    assert a.seconds < 2


def test_image_count_and_pixel_limits(service) -> None:
    ok = post_json(service, {"content": [b64(SMALL)] * MAX_IMAGES, "need_visual_data": False})
    assert len(assert_predictions(ok, MAX_IMAGES)) == MAX_IMAGES
    over = post_json(service, {"content": [b64(SMALL)] * (MAX_IMAGES + 1)})
    assert_envelope(over, 400, [f"{MAX_IMAGES + 1} images", f"at most {MAX_IMAGES}"])
    # a header claiming exactly the limit passes the pixel check (and then fails to decode: its data is 8x8 px)...
    side = int(MAX_IMAGE_PIXELS**0.5)
    assert side * side == MAX_IMAGE_PIXELS
    msg = assert_envelope(post_json(service, {"content": b64(png_with_header(side, side))}), 400)
    assert "Mpx" not in msg, msg
    # ...one row more is refused from the header, before any decoding; so is a bomb of billions of pixels
    limit = f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit"
    assert_envelope(post_json(service, {"content": b64(png_with_header(side, side + 1))}), 400, [limit])
    assert_envelope(post_json(service, {"content": b64(png_with_header(60000, 60000))}), 400, ["Mpx"])
    assert_predictions(post_json(service, {"content": b64(SMALL)}))


def test_limits_are_documented_in_the_serving_docs() -> None:
    """docs/serving.md's Limits table states the limits the code enforces (a change to either must update both)."""
    readme = (REPO / "docs" / "serving.md").read_text()
    section = readme.split("### Limits", 1)[1].split("\n#", 1)[0]
    rows = {m[1].strip(): m[2] for m in re.finditer(r"^\|([^|]+)\|([^|]+)\|", section, re.MULTILINE)}
    assert f"{MAX_BODY // 2**20} MiB" in rows["request body"] and "413" in rows["request body"]
    assert rows["images per request"].strip() == str(MAX_IMAGES)
    assert f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx" in rows["pixels per image"]
    assert "aspect ratio" in rows
    for fmt in ALLOWED_FORMATS - {"MPO"}:  # MPO is a kind of JPEG
        assert {"JPEG": "jpg", "TIFF": "tif"}.get(fmt, fmt.lower()) in rows["image formats"], fmt
