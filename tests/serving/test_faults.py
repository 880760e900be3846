"""Faults the service must survive (issue 6): a model worker killed under load, and slow clients (slowloris).

One real client_infer.py + TorchServe for the module. TorchServe's Java frontend dying is in
test_serving_lifecycle.py; 16 clients for a minute with a version switch in test_load.py (-m load).
"""

from __future__ import annotations

import json
import select
import signal
import socket
import statistics
import threading
import time
from dataclasses import dataclass

import psutil
import pytest
import requests
from serving_service import b64, image_bytes

from bench.stress import Stream, jpeg, kill_worker, wait_recovered, worker_pids
from serving.timeouts import BODY_GRACE_S, HEAD_TIMEOUT_S

pytestmark = pytest.mark.serving


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_killed_worker_recovers_and_only_in_flight_requests_fail(service, sig):
    """8 clients keep sending; the worker is frozen with a batch in it, then killed (507 or 500 in TorchServe).

    TorchServe starts a new worker by itself (minWorkers 1); the requests of the lost batch get a 503 envelope
    the client can act on (retry), every other request -- queued during the restart or sent later -- gets 200.
    """
    pid = service.proc.pid
    [old] = worker_pids(pid)
    with Stream(f"{service.url}/autotable/predict", jpeg(), clients=8, max_requests=5000, max_seconds=240) as s:
        time.sleep(2)
        dead, t_kill = kill_worker(pid, sig)
        recovery_s, unready = wait_recovered(service.url, pid, dead)
        t_recovered = time.monotonic()
        time.sleep(3)  # traffic on the new worker
    in_flight, failures = s.in_flight(t_kill), s.failures()
    after_kill = [r for r in s.records if r.start > t_kill]
    print(
        f"{sig.name}: {len(s.records)} requests, {len(in_flight)} in flight at the kill, {len(failures)} failed, "
        f"{len(after_kill)} sent after it (all 200), recovered in {recovery_s:.1f} s"
    )
    assert dead == old and psutil.Process(pid).is_running()
    assert failures, "the kill hit no request in flight: the fault was not injected"
    assert len(failures) <= len(in_flight) and all(r in in_flight for r in failures), failures
    for r in failures:  # the envelope, 503, a message that says what to do; and promptly, not after a timeout
        assert (r.status, r.code) == (503, 503) and "worker restarted" in r.msg and "retry" in r.msg, r
        assert r.end - t_kill < 10, r
    assert after_kill and {r.status for r in after_kill} == {200}
    assert sum(r.start > t_recovered for r in s.records) >= 5
    assert unready  # /health told load balancers while no worker was ready
    assert len(worker_pids(pid)) == 1 and old not in worker_pids(pid)
    assert "TorchServe lost a worker mid-batch" in service.output()


@dataclass
class Slow:
    """A raw connection that sends `first` at once, then `rest` a byte every `interval` s until answered."""

    name: str
    first: bytes
    rest: bytes
    interval: float
    answer: bytes = b""
    sent: int = 0
    seconds: float = 0.0

    def run(self, port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            t0 = time.monotonic()
            s.sendall(self.first)
            while time.monotonic() - t0 < BODY_GRACE_S + 60:  # the test's own bound
                if select.select([s], [], [], self.interval)[0]:
                    try:
                        while chunk := s.recv(65536):
                            self.answer += chunk
                    except ConnectionResetError:
                        self.answer += b"<reset>"
                    break
                if self.sent < len(self.rest):
                    s.sendall(self.rest[self.sent : self.sent + 1])
                    self.sent += 1
            self.seconds = time.monotonic() - t0

    def envelope(self) -> tuple[int, dict]:
        head, _, body = self.answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)


def test_slow_clients_block_no_one_and_are_cut_off(service):
    """Slowloris: 50 connections that send nothing, one trickling its headers, one its body (a byte at a time).

    Meanwhile another client's requests all answer with their usual latency; the silent connections are closed
    after HEAD_TIMEOUT_S, the trickled head and body get a 408 envelope (BODY_GRACE_S for a body).
    """
    port = int(service.url.rsplit(":", 1)[1])
    body = json.dumps({"content": b64(image_bytes(seed=40))}).encode()
    head = (
        f"POST /autotable/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    good = {"content": b64(image_bytes(seed=41))}

    def timed_predict(http: requests.Session) -> float:
        t0 = time.monotonic()
        r = http.post(f"{service.url}/autotable/predict", json=good, timeout=60)
        assert r.status_code == 200, r.text
        return time.monotonic() - t0

    with requests.Session() as http:
        before = [timed_predict(http) for _ in range(10)]
        slow = [Slow(f"silent {i}", b"", b"", 0.5) for i in range(50)]
        slow += [Slow("head", b"POST /autotable/predict HTTP/1.1\r\n", b"X-Slow: " + b"x" * 200, 0.5)]
        slow += [Slow("body", head, body, 0.25)]
        threads = [threading.Thread(target=c.run, args=(port,)) for c in slow]
        for t in threads:
            t.start()
        during = []
        while any(t.is_alive() for t in threads):
            during.append(timed_predict(http))
            time.sleep(0.2)
        for t in threads:
            t.join()
    print(
        f"{len(during)} requests beside {len(slow)} slow connections: p50 {statistics.median(during) * 1000:.0f} ms "
        f"(before {statistics.median(before) * 1000:.0f} ms); silent closed after "
        f"{max(c.seconds for c in slow[:50]):.1f} s, head 408 after {slow[50].seconds:.1f} s, "
        f"body 408 after {slow[51].seconds:.1f} s ({slow[51].sent} bytes)"
    )
    assert len(during) >= 20  # the other client was served throughout
    assert statistics.median(during) < 5 * statistics.median(before) + 1.0  # a sanity bound: the box is shared
    for c in slow[:50]:  # closed without a word: they never sent a request
        assert c.answer == b"" and HEAD_TIMEOUT_S - 1 < c.seconds < HEAD_TIMEOUT_S + 10, (c.name, c.seconds)
    for c, words, limit in [(slow[50], "headers", HEAD_TIMEOUT_S), (slow[51], "body", BODY_GRACE_S)]:
        status, envelope = c.envelope()
        assert status == 408 and envelope["code"] == 408 and envelope["data"] == [], c.answer
        assert f"request {words}" in envelope["msg"] and "send the whole request" in envelope["msg"]
        assert limit - 1 < c.seconds < limit + 10, (c.name, c.seconds)
        assert 0 < c.sent < len(c.rest)  # it was still sending: cut off, not answered after completing
    assert requests.get(f"{service.url}/health", timeout=10).status_code == 200
