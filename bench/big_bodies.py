"""Many large request bodies at once: the front door's memory stays bounded, TorchServe stays up, every client
gets an envelope.

    .venv/bin/python -m bench.big_bodies --model_path runs/models/<uuid4> --used_model SimSiam_<trial> \
        --clients 64 --mib 30

Starts client_infer.py on a free loopback port (stopped at the end); N clients each POST one JSON body of about
`--mib` MiB at the same moment (a small real image plus padding, so each is a valid request); nginx's processes'
RSS is sampled every 20 ms. Prints the peak beside the target (300 MiB), the statuses, and whether TorchServe's
Java frontend and workers are the same processes before and after. tests/serving/test_faults.py runs it smaller.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from bench.service import running_service
from bench.stress import family, jpeg

REPO = Path(__file__).resolve().parent.parent
TARGET_MIB = 300.0


@dataclass
class BigBodies:
    statuses: Counter = field(default_factory=Counter)
    codes_match: bool = True  # every answer is the envelope with code == HTTP status
    nginx_mib_before: float = 0.0
    nginx_mib_peak: float = 0.0
    seconds: float = 0.0
    torchserve_same: bool = True


def body_of(mib: float) -> bytes:
    content = base64.b64encode(jpeg(64, 48)).decode()
    pad = max(0, int(mib * 2**20) - len(content) - 40)
    return json.dumps({"pad": "x" * pad, "content": content}).encode()


def nginx_mib(pid: int) -> float:
    total = 0
    for p in family(pid)["nginx"]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def run(url: str, pid: int, clients: int, mib: float) -> BigBodies:
    """`clients` concurrent POSTs of `mib` MiB each to `url`'s API; client_infer.py's pid for the processes."""
    out = BigBodies()
    body = body_of(mib)
    parts = urlsplit(url)
    roles = family(pid)
    before = {p.pid for p in roles["frontend"] + roles["workers"]}
    out.nginx_mib_before = nginx_mib(pid)
    start, done = threading.Barrier(clients + 1), threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        try:
            start.wait()
            conn.request("POST", "/autotable/predict", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            answer = r.read()
            try:
                ok = json.loads(answer)["code"] == r.status
            except (ValueError, KeyError, TypeError):
                ok = False
            out.statuses[r.status] += 1
            out.codes_match &= ok
        except OSError as e:
            out.statuses[f"{type(e).__name__}"] += 1
            out.codes_match = False
        finally:
            conn.close()

    def sample() -> None:
        while not done.is_set():
            out.nginx_mib_peak = max(out.nginx_mib_peak, nginx_mib(pid))
            time.sleep(0.02)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    sampler = threading.Thread(target=sample)
    for t in threads:
        t.start()
    sampler.start()
    t0 = time.monotonic()
    start.wait()
    for t in threads:
        t.join()
    out.seconds = time.monotonic() - t0
    done.set()
    sampler.join()
    roles = family(pid)
    out.torchserve_same = before == {p.pid for p in roles["frontend"] + roles["workers"]}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", type=Path, required=True)
    p.add_argument("--used_model", required=True)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--mib", type=float, default=30.0, help="MiB per body (default 30; the limit is 32)")
    a = p.parse_args()
    with running_service(a.model_path, a.used_model) as svc:
        r = run(svc.url, svc.proc.pid, a.clients, a.mib)
    peak = r.nginx_mib_peak
    print(
        f"{a.clients} clients x {a.mib:.0f} MiB JSON bodies at once, answered in {r.seconds:.1f} s; "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'figure':<44}{'product':>10}{'target':>10}")
    print(
        f"{'nginx RSS peak (MiB, all processes)':<44}{peak:>10.0f}{TARGET_MIB:>10.0f}   (idle {r.nginx_mib_before:.0f})"
    )
    print(f"statuses: {dict(r.statuses)}; every answer an envelope with code = status: {r.codes_match}")
    print(f"TorchServe's frontend and workers the same processes after: {r.torchserve_same}")
    ok = peak < TARGET_MIB and r.codes_match and r.torchserve_same
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
