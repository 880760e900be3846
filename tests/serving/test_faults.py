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
from serving.nginx import FrontDoor

LIMITS = FrontDoor()

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


@dataclass
class Slow:
    """A raw connection that sends `first` at once, then `rest` a byte every `interval` s (the first `stop_after`
    bytes of it, if given) until answered or closed."""

    name: str
    first: bytes
    rest: bytes
    interval: float
    stop_after: int | None = None
    answer: bytes = b""
    sent: int = 0
    seconds: float = 0.0

    def run(self, port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            t0 = time.monotonic()
            s.sendall(self.first)
            while time.monotonic() - t0 < 60:  # the test's own bound
                if select.select([s], [], [], self.interval)[0]:
                    try:
                        while chunk := s.recv(65536):
                            self.answer += chunk
                    except ConnectionResetError:
                        self.answer += b"<reset>"
                    break
                if self.sent < len(self.rest) and (self.stop_after is None or self.sent < self.stop_after):
                    try:
                        s.sendall(self.rest[self.sent : self.sent + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    self.sent += 1
            self.seconds = time.monotonic() - t0

    def envelope(self) -> tuple[int, dict]:
        head, _, body = self.answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)


def test_slow_clients_block_no_one_and_are_cut_off(service):
    """Slowloris: 50 connections that send nothing, one trickling its headers, one whose body stalls, one trickling
    a whole (bad) body, and one that keeps sending after an early 413 -- while another client's requests all
    answer with their usual latency.

    nginx closes without an answer a connection whose head is not complete within head_timeout_s or whose body
    pauses longer than body_timeout_s (a client that is not sending is not reading either); a body that keeps
    coming holds only its connection (never a model worker) and is answered once complete; after an early answer
    the rest of a body is read for at most lingering_s (test below).
    """
    port = int(service.url.rsplit(":", 1)[1])
    body = json.dumps({"content": b64(image_bytes(seed=40))}).encode()
    head = (
        f"POST /autotable/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    bad = b'{"content": "not an image"}'
    bad_head = head.replace(f"Content-Length: {len(body)}".encode(), f"Content-Length: {len(bad)}".encode())
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
        slow += [Slow("stalled body", head, body, 0.25, stop_after=8)]
        slow += [Slow("trickled body", bad_head, bad, 0.25)]
        threads = [threading.Thread(target=c.run, args=(port,)) for c in slow]
        for t in threads:
            t.start()
        during = []
        while any(t.is_alive() for t in threads):
            during.append(timed_predict(http))
            time.sleep(0.2)
        for t in threads:
            t.join()
    silent, trickled_head, stalled, trickled = slow[:50], *slow[50:]
    print(
        f"{len(during)} requests beside {len(slow)} slow connections: p50 {statistics.median(during) * 1000:.0f} ms "
        f"(before {statistics.median(before) * 1000:.0f} ms); silent closed after "
        f"{max(c.seconds for c in silent):.1f} s, head after {trickled_head.seconds:.1f} s, stalled body after "
        f"{stalled.seconds:.1f} s, trickled body answered after {trickled.seconds:.1f} s"
    )
    assert len(during) >= 20  # the other client was served throughout
    assert statistics.median(during) < 5 * statistics.median(before) + 1.0  # a sanity bound: the box is shared
    for c, limit in [*((c, LIMITS.head_timeout_s) for c in silent), (trickled_head, LIMITS.head_timeout_s)]:
        assert c.answer == b"" and limit - 1 < c.seconds < limit + 5, (c.name, c.seconds, c.answer[:200])
    assert 0 < trickled_head.sent < len(trickled_head.rest)  # still sending its head: cut off
    assert stalled.answer == b"" and stalled.sent == 8  # the body paused: closed, no model worker ever saw it
    assert LIMITS.body_timeout_s - 1 < stalled.seconds < LIMITS.body_timeout_s + 8, stalled.seconds
    status, envelope = trickled.envelope()  # answered once complete, by the handler, like any other request
    assert status == 400 and envelope["code"] == 400 and trickled.sent == len(bad), trickled.answer[:300]
    assert requests.get(f"{service.url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize("path", ["/autotable/predict", "/nope"])
def test_an_early_answer_then_a_trickled_body_is_closed(service, path):
    """A body declared at 100 MB gets its 413 (or a wrong path its 404) at once; the client then sends a byte a
    second: the connection is closed after lingering_s, not held while the client keeps trickling."""
    port = int(service.url.rsplit(":", 1)[1])
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        t0 = time.monotonic()
        s.sendall(head.encode())
        answer, closed = b"", None
        while closed is None and time.monotonic() - t0 < 40:  # the test's own bound
            try:
                chunk = s.recv(65536)
                answer += chunk
                closed = "eof" if not chunk else None
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = "reset"
            if closed is None:
                try:
                    s.sendall(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    closed = "send failed"
        seconds = time.monotonic() - t0
    status = int(answer.split()[1])
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    print(f"{path}: {status} at once, connection closed ({closed}) after {seconds:.1f} s of trickling")
    assert status == body["code"] == 413 and body["data"] == []  # over the limit, whatever the path
    assert closed and seconds < LIMITS.lingering_s + 3, (closed, seconds)


def test_many_large_bodies_at_once_cost_disk_not_memory(service):
    """12 clients each send a 30 MiB body at the same moment (the hand-built proxy grew by ~100 MiB each): nginx
    spools them to disk and stays small, TorchServe keeps its processes, every client gets an envelope (200, or
    a prompt 503 when the pool of large requests to TorchServe is full). bench/big_bodies.py runs 64."""
    from bench.big_bodies import run

    r = run(service.url, service.proc.pid, clients=12, mib=30)
    print(f"12 x 30 MiB: nginx {r.nginx_mib_before:.0f} -> peak {r.nginx_mib_peak:.0f} MiB, {dict(r.statuses)}, "
          f"{r.seconds:.1f} s")  # fmt: skip
    assert r.codes_match and set(r.statuses) <= {200, 503} and r.statuses[200] >= 1, r.statuses
    assert r.nginx_mib_peak - r.nginx_mib_before < 100, (r.nginx_mib_before, r.nginx_mib_peak)
    assert r.torchserve_same
    assert requests.get(f"{service.url}/health", timeout=10).status_code == 200
