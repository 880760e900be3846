"""deploy/kserve/config/config.properties at run time: a real TorchServe on the KServe config.

.venv/bin/python -m pytest tests/deploy/test_deploy_runtime.py -m slow
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from serving.torchserve_process import find_torchserve, probe_image
from serving.ts_config import free_port, read_properties

REPO = Path(__file__).resolve().parents[2]
KSERVE_CONFIG = REPO / "deploy" / "kserve" / "config" / "config.properties"


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
        workers = requests.get(describe_url, timeout=5).json()[0]["workers"]
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return False
    return any(w["status"] == "READY" for w in workers)


@pytest.mark.slow
@pytest.mark.serving
def test_kserve_config_answers_kserve_v1(trained_model: dict, tmp_path: Path) -> None:
    """inferenceservice.yaml: the model_snapshot loads, and the handler answers through KServe's v1 envelope."""
    name = trained_model["gened_model_name"]
    image = base64.b64encode(probe_image()).decode()
    with torchserve_on_kserve_config(trained_model, tmp_path, envelope="kserve") as props:
        body = {"instances": [{"data": image}] * 2}
        r = requests.post(f"{props['inference_address']}/predictions/{name}", json=body, timeout=60)
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert len(predictions) == 2 and predictions[0]["code"] == 200 and predictions[0]["data"][0]["infer_data"]
        assert "ts_inference_requests_total" in requests.get(f"{props['metrics_address']}/metrics", timeout=10).text
