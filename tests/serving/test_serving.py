"""The served API (SPEC.md, "POST /autotable/predict"): a real client_infer.py, TorchServe and HTTP, started once."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image
from serving_service import REPO, b64, image_bytes

pytestmark = pytest.mark.serving
PROB = re.compile(r"^[01]\.\d{4}$")


@pytest.fixture(scope="module")
def classes(trained_model) -> list[str]:
    return json.loads((Path(trained_model["model_path"]) / "model_info.json").read_text())["classes"]


def predict(service, payload=None, **kw) -> requests.Response:
    if payload is not None:
        kw["json"] = payload
    return requests.post(f"{service.url}/autotable/predict", timeout=60, **kw)


def assert_error(r: requests.Response, code: int, words: str) -> None:
    body = r.json()
    assert r.status_code == code and body["code"] == code and body["data"] == [], (r.status_code, body)
    assert words in body["msg"], body["msg"]


def test_spec_example(service, classes):
    jpeg = image_bytes(seed=1)
    post_data = {"content": base64.b64encode(jpeg).decode(), "need_visual_data": True, "need_visual_result": True}
    r = requests.post(f"{service.url}/autotable/predict", json=post_data, timeout=60)
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["code", "msg", "data"] and body["code"] == 200 and body["msg"] == "ok"
    [item] = body["data"]
    assert list(item) == ["infer_data", "visual_data", "visual_result"]
    cls, prob = item["infer_data"]
    assert cls in classes and PROB.match(prob)
    assert item["visual_data"] == {"output_type": "text", "annotation_type": None, "data": f"{cls}_{prob}"}
    assert item["visual_result"] == f"{cls}_{prob}"


def test_form_multipart_and_base64_variants(service):
    jpeg = image_bytes(seed=2)
    expected = predict(service, {"content": b64(jpeg)}).json()["data"]
    text = base64.urlsafe_b64encode(jpeg).decode()
    variants = [
        {"data": {"content": b64(jpeg)}},  # application/x-www-form-urlencoded
        {"files": {"content": ("x.jpg", jpeg, "image/jpeg")}},  # multipart file
        {"files": {"content": (None, b64(jpeg))}},  # multipart text field
        {"json": {"content": text.rstrip("=")}},  # URL-safe, no padding
        {"json": {"content": "data:image/jpeg;base64," + b64(jpeg)}},
        {"json": {"content": base64.encodebytes(jpeg).decode()}},  # MIME line breaks
        {"data": f"content={b64(jpeg)}", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},  # raw '+'
    ]
    for kw in variants:
        r = predict(service, **kw)
        assert r.status_code == 200 and r.json()["data"] == expected, (kw.keys(), r.text[:300])


def test_flags(service):
    jpeg = b64(image_bytes(seed=3))
    cases = [
        ({"need_visual_data": False, "need_visual_result": False}, ["infer_data"]),
        ({"need_visual_data": False}, ["infer_data", "visual_result"]),
        ({"need_visual_result": False}, ["infer_data", "visual_data"]),
    ]
    for flags, keys in cases:
        assert list(predict(service, {"content": jpeg, **flags}).json()["data"][0]) == keys
        form = {"content": jpeg, **{k: str(v).lower() for k, v in flags.items()}}
        assert list(predict(service, data=form).json()["data"][0]) == keys
        assert list(predict(service, files={k: (None, v) for k, v in form.items()}).json()["data"][0]) == keys


def test_list_of_images_in_order(service):
    images = [image_bytes(seed=s) for s in (4, 5, 6)] + [image_bytes((64, 48), "PNG", "L", seed=7)]
    singles = [predict(service, {"content": b64(im)}).json()["data"][0] for im in images]
    r = predict(service, {"content": [b64(im) for im in images]})
    assert r.status_code == 200 and r.json()["data"] == singles
    files = [("content", (f"{i}.img", im)) for i, im in enumerate(images)]
    assert predict(service, files=files).json()["data"] == singles


def test_large_jpeg_and_grey_png(service):
    big = image_bytes((4000, 3000), seed=8)
    t0 = time.monotonic()
    r = predict(service, {"content": b64(big)})
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 20  # decoded at reduced DCT scale by the handler
    grey = image_bytes((300, 200), "PNG", "L", seed=9)
    assert predict(service, {"content": b64(grey)}).status_code == 200


def _bomb_png(w: int = 12000, h: int = 12000) -> bytes:
    """A tiny PNG whose header claims w x h pixels."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())  # signature (8), IHDR length (4), b"IHDR", width, height, ..., CRC at 29
    png[16:24] = struct.pack(">II", w, h)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


BAD = {
    "not base64": ({"content": "this is not base64!"}, 400, "not base64"),
    "not an image": ({"content": b64(b"hello world, not an image")}, 400, "not an image file"),
    "truncated jpeg": ({"content": b64(image_bytes(seed=10)[:2000])}, 400, "truncated"),
    "empty string": ({"content": ""}, 400, "empty"),
    "missing field": ({"image": "abc"}, 400, "'content' is missing"),
    "content a number": ({"content": 123}, 400, "base64 string or a list"),
    "list of numbers": ({"content": [1, 2]}, 400, "content[0] must be a base64 string"),
    "empty list": ({"content": []}, 400, "empty list"),
    "flag not boolean": ({"content": b64(image_bytes()), "need_visual_data": "maybe"}, 400, "need_visual_data"),
    "body a list": ([b64(image_bytes())], 400, "must be an object"),
    "bomb": ({"content": b64(_bomb_png())}, 400, "Mpx"),
    "bad image in a list": ({"content": [b64(image_bytes()), b64(image_bytes()[:1500])]}, 400, "content[1]"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs(service, name):
    payload, code, words = BAD[name]
    assert_error(predict(service, payload), code, words)
    assert predict(service, {"content": b64(image_bytes())}).status_code == 200  # the service still answers


def test_bad_bodies(service):
    assert_error(predict(service, data=b"{not json", headers={"Content-Type": "application/json"}), 400, "JSON")
    assert_error(predict(service, data=b"x", headers={"Content-Type": "text/plain"}), 400, "Content-Type")
    over = b"A" * (33 * 2**20)
    assert_error(predict(service, data=over, headers={"Content-Type": "application/json"}), 413, "MiB limit")
    chunked = (over[i : i + 2**20] for i in range(0, len(over), 2**20))  # no Content-Length
    assert_error(predict(service, data=chunked, headers={"Content-Type": "application/json"}), 413, "MiB limit")
    assert_error(requests.get(f"{service.url}/autotable/predict", timeout=10), 405, "use POST")
    for path in ("/nope", "/models", "/metrics", "/ping", "/predictions/x"):  # TorchServe's APIs stay unreachable
        assert_error(requests.get(f"{service.url}{path}", timeout=10), 404, "no route")
    assert predict(service, {"content": b64(image_bytes())}).status_code == 200


def test_concurrent_bad_requests_fail_alone(service):
    good = [image_bytes(seed=s) for s in range(20, 28)]
    expected = [predict(service, {"content": b64(g)}).json()["data"] for g in good]
    jobs = [("good", i, {"content": b64(g)}) for i, g in enumerate(good)]
    jobs += [("bad", i, {"content": b64(g[:1500])}) for i, g in enumerate(good[:4])]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: (job, predict(service, job[2])), jobs))
    for (kind, i, _), r in results:
        if kind == "good":
            assert r.status_code == 200 and r.json()["data"] == expected[i]
        else:
            assert_error(r, 400, "content")


def test_health_and_openapi(service, trained_model):
    body = requests.get(f"{service.url}/health", timeout=10).json()
    assert body["code"] == 200 and body["data"][0]["model"] == trained_model["gened_model_name"]
    paths = requests.get(f"{service.url}/openapi.json", timeout=10).json()["paths"]
    assert set(paths) == {"/autotable/predict", "/health"}
    content = paths["/autotable/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-www-form-urlencoded", "multipart/form-data"}


def test_served_equals_offline(service, trained_model, tiny_dataset, tmp_path):
    """Served == the handler through TorchServe's MockContext on the .mar's own files == client_test.py, per image."""
    from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext

    from handler.simsiam_handler import SimSiamHandler

    name = trained_model["gened_model_name"]
    with zipfile.ZipFile(Path(trained_model["model_path"]) / f"{name}.mar") as z:
        z.extractall(tmp_path / "mar")
    ctx = MockContext(model_pt_file="model.pt", model_dir=str(tmp_path / "mar"), model_file=None, gpu_id=None)
    handler = SimSiamHandler()
    handler.initialize(ctx)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "client_test.py", "--dataset_path", str(tiny_dataset), "--device", "cpu"]
    cmd += ["--model_path", trained_model["model_path"], "--used_model", name]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "SIMSIAM_RUNS_DIR": str(runs)}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    rows = json.loads((Path(trial["model_path"]) / trial["predict_result_filename"]).read_text())["predictions"]
    assert len(rows) == len([p for p in (tiny_dataset / "test" / "images").rglob("*") if p.is_file()])
    for row in rows:
        data = (tiny_dataset / "test" / "images" / row["path"]).read_bytes()
        [offline] = handler.handle([{"body": data}], ctx)  # a direct client's answer: the envelope as a dict
        served = predict(service, {"content": b64(data)}).json()["data"][0]["infer_data"]
        assert served == offline["data"][0]["infer_data"], row["path"]
        cls, prob = served
        assert cls == row["predicted_class"], row["path"]
        assert abs(float(prob) - row["probability"]) <= 5e-5 + 1e-6, (row["path"], prob, row["probability"])


def manage(service, *args: str) -> dict:
    cmd = [sys.executable, "-m", "serving.manage", "--management", service.management_url, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_version_switch_under_stream_loses_nothing(service, trained_model):
    """Register 2.0, make it the default and retire 1.0 while clients keep sending: every request answers 200."""
    assert "registered" in manage(service, "register-version", "--model_path", trained_model["model_path"],
                                  "--version", "2.0")["status"]  # fmt: skip
    codes: Counter[int] = Counter()
    stop = threading.Event()
    image = b64(image_bytes(seed=30))

    def client() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                codes[s.post(f"{service.url}/autotable/predict", json={"content": image}, timeout=60).status_code] += 1

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        assert "2.0" in manage(service, "set-default", "2.0")["status"]
        time.sleep(1)
        manage(service, "retire", "1.0", "--grace", "2")
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(codes) == {200} and codes[200] > 10, codes
    assert requests.get(f"{service.url}/health", timeout=10).json()["data"][0]["version"] == "2.0"
    versions = manage(service, "describe", "--version", "all")
    assert [v["modelVersion"] for v in versions] == ["2.0"]
