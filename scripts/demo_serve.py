"""Serve a model with client_infer.py, send it the spec's example request once, stop it.

.venv/bin/python scripts/demo_serve.py --model_path runs/models/<uuid> --used_model SimSiam_demo --image x.jpg
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True)
    p.add_argument("--used_model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)")
    a = p.parse_args()
    port = free_port()
    cmd = [
        sys.executable,
        str(REPO / "client_infer.py"),
        "--model_path",
        a.model_path,
        "--used_model",
        a.used_model,
        "--device",
        a.device,
        "--service_port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                print(f"client_infer.py exited with {proc.returncode} before it was ready", file=sys.stderr)
                return 1
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() - t0 > a.timeout:
                print("the service was not ready in time", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"service ready in {time.monotonic() - t0:.1f} s on {base}")
        post_data = {
            "content": base64.b64encode(a.image.read_bytes()).decode(),
            "need_visual_data": True,
            "need_visual_result": True,
        }
        t1 = time.monotonic()
        r = requests.post(f"{base}/autotable/predict", json=post_data, timeout=60)
        print(
            f"POST /autotable/predict {a.image.name} -> HTTP {r.status_code} in {1000 * (time.monotonic() - t1):.0f} ms"
        )
        print(json.dumps(r.json(), ensure_ascii=False, indent=2))
        return 0 if r.status_code == 200 else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
