"""Serve a model with client_infer.py, send it the whole test split through the product's API, stop it.

.venv/bin/python scripts/demo_serve.py --model_path runs/models/<uuid> --used_model SimSiam_demo \
    --dataset_path runs/demo_dataset --evaluation runs/models/<uuid of client_test's run>/evaluation_<t>.json

Prints the service's start-up time, one answer in the API's format, and the served accuracy over the test split
beside client_test.py's (they must agree: the same TorchScript model and preset), with where the logs are.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dataset.reader import read_labelled
from serving.readiness import wait_until_healthy
from serving.ts_config import free_port

REPO = Path(__file__).resolve().parent.parent
PER_REQUEST = 16  # images per request: the API takes a list, and TorchServe batches them together


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True)
    p.add_argument("--used_model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset_path", required=True, type=Path)
    p.add_argument("--evaluation", type=Path, help="client_test.py's evaluation JSON, to compare with")
    p.add_argument("--logs", type=Path, default=REPO / "runs", help="folder for the service's logs (default runs/)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)")
    a = p.parse_args()
    port = free_port()
    cmd = [sys.executable, str(REPO / "client_infer.py"), "--model_path", a.model_path, "--used_model", a.used_model,
           "--device", a.device, "--service_port", str(port)]  # fmt: skip
    a.logs.mkdir(parents=True, exist_ok=True)
    service_log, ts_log = a.logs / "client_infer.log", a.logs / "torchserve.log"
    ts_log.unlink(missing_ok=True)
    env = {**os.environ, "SIMSIAM_TS_LOG": str(ts_log.resolve())}
    with open(service_log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        ready_s = wait_until_healthy(base, proc, a.timeout)
        if ready_s is None:
            print(service_log.read_text()[-3000:], file=sys.stderr)
            print(f"client_infer.py was not ready within {a.timeout:.0f} s (exit code {proc.poll()})", file=sys.stderr)
            return 1
        print(f"service ready in {ready_s:.1f} s on {base} (its log: {service_log}; TorchServe's: {ts_log})")
        test = read_labelled(a.dataset_path, "test")
        classes = test.classes
        served, t0 = {}, time.monotonic()
        with requests.Session() as http:
            for start in range(0, len(test.paths), PER_REQUEST):
                chunk = test.paths[start : start + PER_REQUEST]
                body = {"content": [base64.b64encode(p.read_bytes()).decode() for p in chunk]}
                r = http.post(f"{base}/autotable/predict", json=body, timeout=120)
                if r.status_code != 200:
                    print(f"POST /autotable/predict -> HTTP {r.status_code}: {r.text[:300]}", file=sys.stderr)
                    return 1
                if start == 0:
                    one = {**r.json(), "data": r.json()["data"][:1]}
                    print(f"one answer ({chunk[0].name}):", json.dumps(one, ensure_ascii=False))
                for path, item in zip(chunk, r.json()["data"]):
                    served[test.rel(path)] = item["infer_data"]
        took = time.monotonic() - t0
        right = sum(served[test.rel(p)][0] == classes[y] for p, y in zip(test.paths, test.labels))
        print(f"served accuracy on the test split: {right / len(test.paths):.4f} = {right}/{len(test.paths)} "
              f"({len(test.paths)} images in {took:.1f} s through the API)")  # fmt: skip
        if a.evaluation:
            offline = json.loads(a.evaluation.read_text())
            rows = {r["path"]: r for r in offline["predictions"]}
            # The served probability has 4 decimals; the batches differ (TorchServe's vs client_test.py's), which
            # moves float sums by ~1e-7: one unit of the 4th decimal is the tolerance.
            same = sum(
                rows[k]["predicted_class"] == v[0] and abs(rows[k]["probability"] - float(v[1])) <= 1.1e-4
                for k, v in served.items()
                if k in rows
            )
            print(
                f"client_test.py's accuracy: {offline['accuracy']:.4f}; the same class and probability (to 1e-4) "
                f"for {same} of {len(served)} images"
            )
            return 0 if same == len(served) else 1
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
