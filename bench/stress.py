"""Stress the served API on loopback: N clients for a bounded time, a model worker killed, a version switch.

    .venv/bin/python -m bench.stress --model_path runs/models/<uuid4> --used_model SimSiam_<trial> \
        --concurrency 16 --duration 60 --max_requests 20000

Starts client_infer.py on free loopback ports (stopped at the end), warms up, samples memory, then keeps N
closed-loop clients sending one 224x224 JPEG each for `--duration` s (at most `--max_requests`) while it
- `--kill_at` s in: freezes the TorchServe model worker for 1 s, then SIGKILLs it (TorchServe restarts it);
- `--switch_at` s in: registers the same model folder as version 2.0, makes it the default and retires 1.0.
It prints requests/s, p50/p95/p99, every failure with its status, the requests in flight at the kill, the
recovery time and the RSS of the proxy, the Java frontend and the workers at start and end. Exit code 0 when
only requests in flight at the kill failed, each with a 503 envelope, and memory grew less than 10 %.
The building blocks are reused by tests/serving/test_faults.py and tests/serving/test_load.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from bench.load import LoadResult, check_loopback
from bench.service import running_service

REPO = Path(__file__).resolve().parent.parent
MAX_SECONDS, MAX_REQUESTS = 600.0, 200_000  # hard bounds, whatever the arguments say


def jpeg(w: int = 224, h: int = 224, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth noise compresses like a photograph)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@dataclass(frozen=True)
class Record:
    """One request: monotonic start and end, HTTP status (0: transport error), the envelope's code and msg."""

    start: float
    end: float
    status: int
    code: int | None = None  # None: the body was not an envelope
    msg: str = ""


@dataclass
class Stream:
    """`with Stream(url, image, clients) as s:` N closed-loop clients post `image` until the block ends.

    Each client is a thread with its own keep-alive session, so the caller is free to kill, switch and measure.
    Bounded by `max_requests` and `max_seconds` as well as by the block. Every request sent leaves a record --
    whatever goes wrong in a client is recorded as a failure (status 0) -- and `lost()` counts the ones that
    did not, so a test can check that none was.
    """

    url: str
    image: bytes
    clients: int = 16
    max_requests: int = 20_000
    max_seconds: float = 120.0
    timeout: float = 60.0  # a request that hangs shows up as a transport error, not as a stuck test
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_loopback(self.url)
        self.max_requests = min(self.max_requests, MAX_REQUESTS)
        self.max_seconds = min(self.max_seconds, MAX_SECONDS)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.sent = 0
        self.started = self.stopped = 0.0

    def __enter__(self) -> Stream:
        import base64

        body = json.dumps({"content": base64.b64encode(self.image).decode(), "need_visual_data": True,
                           "need_visual_result": True}).encode()  # fmt: skip
        self.started = time.monotonic()
        deadline = self.started + self.max_seconds
        self._threads = [
            threading.Thread(target=self._client, args=(body, deadline), name=f"client-{i}", daemon=True)
            for i in range(self.clients)
        ]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 10)
        self.stopped = time.monotonic()

    def lost(self) -> int:
        """Requests sent that left no record (a client that died with one in flight): must be 0."""
        return self.sent - len(self.records) + sum(t.is_alive() for t in self._threads)

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self.sent >= self.max_requests:
                return False
            self.sent += 1
            return True

    def _client(self, body: bytes, deadline: float) -> None:
        with requests.Session() as http:
            while time.monotonic() < deadline and self._take():
                t0 = time.monotonic()
                try:
                    self.records.append(self._one(http, body, t0))
                except Exception as e:
                    self.records.append(Record(t0, time.monotonic(), 0, None, f"{type(e).__name__}: {e}"))

    def _one(self, http: requests.Session, body: bytes, t0: float) -> Record:
        r = http.post(self.url, data=body, headers={"Content-Type": "application/json"}, timeout=self.timeout)
        code, msg = None, ""
        if r.status_code != 200:  # keep what a failure said; successes only count
            try:
                envelope = r.json()
                code, msg = envelope["code"], envelope["msg"] if envelope["data"] == [] else "data not []"
            except (ValueError, KeyError, TypeError):
                msg = r.text[:300]
        elif r.json()["code"] != 200 or not r.json()["data"]:
            return Record(t0, time.monotonic(), 0, None, f"a 200 without predictions: {r.text[:300]}")
        return Record(t0, time.monotonic(), r.status_code, code, msg)

    def failures(self) -> list[Record]:
        return [r for r in self.records if r.status != 200]

    def in_flight(self, t: float) -> list[Record]:
        return [r for r in self.records if r.start <= t < r.end]

    def result(self) -> LoadResult:
        """bench.load's summary type: requests/s, p50/p95/p99, failures."""
        out = LoadResult(seconds=self.stopped - self.started)
        for r in self.records:
            out.latencies_ms.append((r.end - r.start) * 1000)
            if r.status:
                out.statuses[r.status] = out.statuses.get(r.status, 0) + 1
            else:
                out.errors += 1
        return out


def family(pid: int) -> dict[str, list[psutil.Process]]:
    """client_infer.py's processes by role: nginx (the front door), TorchServe's Java frontend, its model workers."""
    children = psutil.Process(pid).children(recursive=True)
    roles: dict[str, list[psutil.Process]] = {"nginx": [], "frontend": [], "workers": []}
    for p in children:
        with contextlib.suppress(psutil.Error):
            if p.name() == "nginx":
                roles["nginx"].append(p)
            elif p.name().startswith("java"):
                roles["frontend"].append(p)
            elif "model_service_worker" in " ".join(p.cmdline()):
                roles["workers"].append(p)
    return roles


def rss_mib(pid: int) -> dict[str, float]:
    """RSS in MiB of nginx, the frontend, the workers and TorchServe as a whole (frontend + workers)."""
    out: dict[str, float] = {}
    for role, procs in family(pid).items():
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        out[role] = total / 2**20
    out["torchserve"] = out["frontend"] + out["workers"]
    return out


def worker_pids(pid: int) -> list[int]:
    return [p.pid for p in family(pid)["workers"]]


def kill_worker(pid: int, sig: signal.Signals = signal.SIGKILL, freeze_s: float = 1.0) -> tuple[int, float]:
    """Freeze the (first) model worker for `freeze_s` so that a batch is surely in it, then send `sig`.

    Returns (worker pid, monotonic time of the kill). SIGSTOP first makes the fault deterministic: the frontend
    hands the frozen worker its next batch and waits, so the kill always hits requests in flight.
    """
    [worker, *_] = family(pid)["workers"]
    worker.send_signal(signal.SIGSTOP)
    time.sleep(freeze_s)
    t = time.monotonic()
    worker.send_signal(sig)
    worker.send_signal(signal.SIGCONT)  # a stopped process keeps other signals than SIGKILL pending
    return worker.pid, t


def wait_recovered(url: str, pid: int, dead: int, timeout: float = 120.0) -> tuple[float, bool]:
    """Block until /health is 200 again with a new worker; (seconds taken, whether /health said 503 meanwhile)."""
    t0, unready = time.monotonic(), False
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(requests.RequestException, ValueError):  # not up, or not JSON yet
            r = requests.get(f"{url}/health", timeout=5)
            unready |= r.status_code == 503 and r.json()["code"] == 503
            workers = worker_pids(pid)
            if r.status_code == 200 and workers and dead not in workers:
                return time.monotonic() - t0, unready
        time.sleep(0.1)
    raise TimeoutError(f"the service did not recover within {timeout:.0f} s")


def manage(management_url: str, *args: str) -> dict | list:
    """python -m serving.manage, as an operator runs it; its JSON answer."""
    cmd = [sys.executable, "-m", "serving.manage", "--management", management_url, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"serving.manage {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout)


def switch_version(management_url: str, model_path: str, new: str = "2.0", old: str = "1.0") -> float:
    """Serve `model_path` as version `new` beside `old`, make it the default, retire `old`; seconds taken."""
    t0 = time.monotonic()
    manage(management_url, "register-version", "--model_path", model_path, "--version", new)
    manage(management_url, "set-default", new)
    manage(management_url, "retire", old, "--grace", "2")
    return time.monotonic() - t0


def growth(before: dict[str, float], after: dict[str, float], role: str) -> float:
    return after[role] / before[role] - 1 if before[role] else float("nan")


def report(stream: Stream, kill: tuple[float, float, bool] | None, switch_s: float | None, mem: tuple) -> bool:
    """Print the figures; True when the run met the promises (see the module docstring)."""
    result, failures = stream.result(), stream.failures()
    print(result.summary("front door under stress"))
    ok = True
    in_flight: list[Record] = []
    if kill is not None:
        t_kill, recovery_s, unready = kill
        in_flight = stream.in_flight(t_kill)
        first_ok = min((r.end for r in stream.records if r.start > t_kill and r.status == 200), default=float("nan"))
        print(
            f"worker kill: {len(in_flight)} requests in flight, {len(failures)} failed; /health back to 200 after "
            f"{recovery_s:.1f} s (503 meanwhile: {unready}); first new request answered {first_ok - t_kill:.1f} s "
            "after the kill"
        )
    stray = [r for r in failures if r not in in_flight or r.status != 503 or r.code != 503]
    for r in failures:
        print(f"  failed: {r.status} code={r.code} {r.msg[:120]!r} ({r.end - r.start:.2f} s)")
    if stray:
        print(f"FAIL: {len(stray)} failures were not 503 envelopes of requests in flight at the kill")
        ok = False
    if switch_s is not None:
        print(f"version switch (register 2.0, set-default, retire 1.0) took {switch_s:.1f} s under load")
    before, after = mem
    if stream.lost():
        print(f"FAIL: {stream.lost()} requests were lost by their clients")
        ok = False
    for role in ("nginx", "frontend", "workers", "torchserve"):
        g = growth(before, after, role)
        print(f"RSS {role:<10} {before[role]:7.0f} -> {after[role]:7.0f} MiB ({g:+.1%})")
    for role in ("nginx", "torchserve"):
        if growth(before, after, role) >= 0.10:
            print(f"FAIL: {role} memory grew by 10 % or more")
            ok = False
    print("PASS" if ok else "FAIL")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", type=Path, required=True)
    p.add_argument("--used_model", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0, help=f"seconds of load (default 60, at most {MAX_SECONDS})")
    p.add_argument("--max_requests", type=int, default=20_000, help=f"(default 20000, at most {MAX_REQUESTS})")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before memory is sampled (default 10)")
    p.add_argument("--kill_at", type=float, default=15.0, help="seconds into the load; < 0: no kill (default 15)")
    p.add_argument("--switch_at", type=float, default=30.0, help="seconds into the load; < 0: no switch (default 30)")
    a = p.parse_args()
    with running_service(a.model_path, a.used_model) as svc:
        return 0 if stress(a, svc.url, svc.logged_url("management"), svc.proc.pid) else 1


def stress(a: argparse.Namespace, url: str, management: str, pid: int) -> bool:
    image, predict = jpeg(), f"{url}/autotable/predict"
    with Stream(predict, image, a.concurrency, a.max_requests, a.warmup) as warm:
        time.sleep(a.warmup)
    print(warm.result().summary("warm-up"))
    mem0 = rss_mib(pid)
    kill = switch_s = None
    events = sorted((t, name) for t, name in ((a.kill_at, "kill"), (a.switch_at, "switch")) if 0 <= t < a.duration)
    with Stream(predict, image, a.concurrency, a.max_requests, a.duration) as s:
        for at, name in events:
            time.sleep(max(0.0, s.started + at - time.monotonic()))
            if name == "kill":
                dead, t_kill = kill_worker(pid)
                recovery_s, unready = wait_recovered(url, pid, dead)
                kill = (t_kill, recovery_s, unready)
            else:
                switch_s = switch_version(management, str(a.model_path))
        time.sleep(max(0.0, s.started + a.duration - time.monotonic()))
    mem1 = rss_mib(pid)
    print(f"{a.concurrency} clients, {a.duration:.0f} s, model {a.used_model} on CPU ({os.cpu_count()} cores)")
    return report(s, kill, switch_s, (mem0, mem1))


if __name__ == "__main__":
    sys.exit(main())
