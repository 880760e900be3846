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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serving.readiness import wait_until_healthy

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
        ready_s = wait_until_healthy(base, proc, a.timeout)
        if ready_s is None:
            print(f"client_infer.py was not ready within {a.timeout:.0f} s (exit code {proc.poll()})", file=sys.stderr)
            return 1
        print(f"service ready in {ready_s:.1f} s on {base}")
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
