"""serving/kserve_proxy.py and deploy/kserve/config/config.properties at run time.

.venv/bin/python -m pytest tests/test_deploy_runtime.py            # the proxy alone, about 2 s
.venv/bin/python -m pytest tests/test_deploy_runtime.py -m slow    # + a real TorchServe on the KServe config
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.torchserve_process import find_torchserve, probe_image
from serving.ts_config import free_port, read_properties

REPO = Path(__file__).resolve().parents[2]
PROXY = REPO / "serving" / "kserve_proxy.py"
KSERVE_CONFIG = REPO / "deploy" / "kserve" / "config" / "config.properties"


def test_proxy_alone_reports_503_while_torchserve_is_absent() -> None:
    spec = importlib.util.spec_from_file_location("deploy_proxy", PROXY)
    proxy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proxy)
    args = proxy.get_args_parser().parse_args(
        ["--inference", "http://127.0.0.1:9", "--management", "http://127.0.0.1:9"]
    )
    app = proxy.build_app(args)

    async def health() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            return await c.get("/health")

    r = asyncio.run(health())
    assert r.status_code == 503 and r.json()["code"] == 503


@contextlib.contextmanager
def torchserve_on_kserve_config(trained: dict, tmp: Path, envelope: str | None) -> Iterator[dict[str, str]]:
    """TorchServe started as KServe's runtime starts it, on the KServe config moved to free loopback ports.

    Yields the config it runs with. The file's one model is served under the trained model's name.
    """
    name = trained["gened_model_name"]
    store = tmp / "model-store"
    store.mkdir()
    (store / f"{name}.mar").symlink_to(Path(trained["model_path"]) / f"{name}.mar")
    props = read_properties(KSERVE_CONFIG)
    snapshot = json.loads(props["model_snapshot"])
    ((version, entry),) = next(iter(snapshot["models"].values())).items()
    snapshot["models"] = {name: {version: entry | {"marName": f"{name}.mar"}}}
    props["model_snapshot"] = json.dumps(snapshot)
    for key in ("inference_address", "management_address", "metrics_address"):
        props[key] = f"http://127.0.0.1:{free_port()}"
    props |= {"grpc_inference_address": "127.0.0.1", "grpc_inference_port": str(free_port())}
    props |= {"grpc_management_port": str(free_port()), "model_store": str(store)}
    config = tmp / "config.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    env = {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "CUDA_VISIBLE_DEVICES": "", "SIMSIAM_TORCH_THREADS": "1"}
    env |= {"LOG_LOCATION": str(tmp / "logs"), "METRICS_LOCATION": str(tmp / "logs")}
    env.pop("TS_SERVICE_ENVELOPE", None)
    if envelope:
        env["TS_SERVICE_ENVELOPE"] = envelope
    cmd = [find_torchserve(), "--start", "--foreground", f"--model-store={store}", f"--ts-config={config}"]
    with (tmp / "torchserve.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            describe = f"{props['management_address']}/models/{name}"
            deadline = time.monotonic() + 240
            while not _ready(describe):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp / "torchserve.log").read_text()[-3000:]
                time.sleep(1)
            yield props
        finally:
            # SIGTERM runs Java's shutdown hook, which stops the workers; then nothing of the group may be left.
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait)


def _ready(describe_url: str) -> bool:
    try:
        workers = httpx.get(describe_url, timeout=5).json()[0]["workers"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return False
    return any(w["status"] == "READY" for w in workers)


@pytest.mark.slow
@pytest.mark.serving
def test_kserve_config_answers_kserve_v1(trained_model: dict, tmp_path: Path) -> None:
    """inferenceservice.yaml: the model_snapshot loads, and the handler answers through KServe's v1 envelope."""
    name = trained_model["gened_model_name"]
    image = base64.b64encode(probe_image()).decode()
    with torchserve_on_kserve_config(trained_model, tmp_path, envelope="kserve") as props:
        r = httpx.post(f"{props['inference_address']}/predictions/{name}", json={"instances": [{"data": image}] * 2})
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert len(predictions) == 2 and set(predictions[0]) == {"class", "index", "probability"}
        assert "ts_inference_requests_total" in httpx.get(f"{props['metrics_address']}/metrics").text


@pytest.mark.slow
@pytest.mark.serving
def test_kserve_config_behind_the_proxy_answers_the_product_api(trained_model: dict, tmp_path: Path) -> None:
    """inferenceservice-product-api.yaml: the KServe proxy before TorchServe on the KServe config, no envelope."""
    name = trained_model["gened_model_name"]
    with torchserve_on_kserve_config(trained_model, tmp_path, envelope=None) as props:
        port = free_port()
        args = ["--inference", props["inference_address"], "--management", props["management_address"]]
        args += ["--used_model", name, "--service_port", str(port), "--host", "127.0.0.1"]
        proxy = subprocess.Popen([sys.executable, str(PROXY), *args], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                    break
                except httpx.TransportError:
                    assert proxy.poll() is None and time.monotonic() < deadline, "serving/kserve_proxy.py did not start"
                    time.sleep(0.3)
            assert health.status_code == 200, health.text
            body = {"content": base64.b64encode(probe_image()).decode()}
            r = httpx.post(f"http://127.0.0.1:{port}/autotable/predict", json=body, timeout=60)
            assert r.status_code == 200 and r.json()["data"][0]["infer_data"][0], r.text
        finally:
            proxy.terminate()
            proxy.wait(30)
