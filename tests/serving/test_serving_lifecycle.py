"""client_infer.py's life cycle: a wrong model folder, 503 while loading, SIGTERM leaving nothing behind, TorchServe
dying."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import requests
from serving_service import REPO, alive, b64, image_bytes, start_service

from bench.stress import Stream, jpeg

pytestmark = pytest.mark.serving


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gone(family: list[psutil.Process]) -> list[psutil.Process]:
    psutil.wait_procs(family, timeout=10)
    return [p for p in family if alive(p)]


def test_wrong_model_folder_names_what_it_holds(trained_model, tmp_path):
    name = trained_model["gened_model_name"]
    for path, used, words in [
        (trained_model["model_path"], "SimSiam_nope", name),
        (str(tmp_path / "missing"), name, "not a folder"),
    ]:
        cmd = [sys.executable, "client_infer.py", "--model_path", path, "--used_model", used, "--device", "cpu"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr


def test_sigterm_stops_everything(trained_model, tmp_path):
    """--device cuda on a CPU machine falls back with a warning; SIGTERM leaves no process and no file behind."""
    before = sorted(p.name for p in REPO.iterdir())
    svc = start_service(trained_model, tmp_path / "client_infer.log", device="cuda")
    try:
        family = svc.snapshot()
        names = {p.name() for p in family}
        assert "java" in names and any("model_service_worker.py" in " ".join(p.cmdline()) for p in family), names
        assert requests.post(f"{svc.url}/autotable/predict", json={"content": b64(image_bytes())}, timeout=60).ok
        run_dir = Path(re.search(r"--model-store (\S+)/model-store", svc.output()).group(1))
        assert run_dir.is_dir()
        t0 = time.monotonic()
        assert svc.stop() == 0, svc.output()[-3000:]
        assert time.monotonic() - t0 < 30
    finally:
        if svc.proc.poll() is None:
            svc.kill()
    assert not _gone(family)
    assert not run_dir.exists()
    assert sorted(p.name for p in REPO.iterdir()) == before  # no key_file.json, no logs/
    if not _cuda():
        assert "falling back to CPU" in svc.output()


def test_torchserve_dying_stops_the_service(trained_model, tmp_path):
    """The Java frontend killed while 4 clients send: client_infer.py exits 1 naming the problem, leaves nothing.

    No request hangs or gets a 500: each is answered 200, or 503 in the envelope (TorchServe unreachable), or its
    connection is refused once the proxy has stopped.
    """
    svc = start_service(trained_model, tmp_path / "client_infer.log")
    try:
        family = svc.snapshot()
        [java] = [p for p in family if p.name() == "java"]
        with Stream(f"{svc.url}/autotable/predict", jpeg(), clients=4, max_seconds=120) as s:
            time.sleep(2)
            t_kill = time.monotonic()
            java.kill()
            assert svc.proc.wait(60) == 1
            exited_s = time.monotonic() - t_kill
    finally:
        svc.stop()
    statuses = Counter(r.status for r in s.records)
    print(f"frontend killed under load: exit 1 after {exited_s:.1f} s; statuses (0: refused) {dict(statuses)}")
    assert "TorchServe exited unexpectedly; stopping the service" in svc.output()
    assert not _gone(family)
    assert exited_s < 30
    assert {r.status for r in s.records if r.end < t_kill} == {200}
    for r in s.records:
        assert r.status in (200, 503, 0), r
        if r.status == 503:
            assert r.code == 503 and "retry" in r.msg, r
        if r.status == 0:  # after the proxy stopped: refused or closed, never a timeout
            assert "Timeout" not in r.msg and r.end - r.start < 30, r


def test_model_that_cannot_load_fails_fast(trained_model, tmp_path):
    """A .mar whose model.pt is corrupt: exit 1 with the worker's reason, not a wait for the start-up timeout."""
    import shutil

    from export.archive import build_mar

    folder, name = tmp_path / "broken", trained_model["gened_model_name"]
    folder.mkdir()
    for f in ("index_to_name.json", "preprocess.json", "model_info.json"):
        shutil.copy(Path(trained_model["model_path"]) / f, folder / f)
    (folder / "model.pt").write_bytes(b"not a TorchScript file")
    build_mar(folder, name)
    svc = start_service({"model_path": str(folder), "gened_model_name": name}, tmp_path / "log", wait=False)
    try:
        first = _first_answer(svc, "/health")
        assert svc.proc.wait(120) == 1
    finally:
        svc.stop()
    assert "cannot be loaded" in svc.output() and "Failed to load model" in svc.output()
    # The API listened while TorchServe tried: 503 in the envelope, not a refused connection.
    assert first.status_code == 503 and first.json()["code"] == 503 and "not ready" in first.json()["msg"], first.text


def test_api_answers_503_while_the_model_loads_then_200(trained_model, tmp_path):
    """SPEC: "503 while the model is not ready": the port answers from the start, before TorchServe has loaded."""
    svc = start_service(trained_model, tmp_path / "client_infer.log", wait=False)
    try:
        first = _first_answer(svc, "/autotable/predict", json={"content": b64(image_bytes())})
        assert first.status_code == 503, first.text
        assert first.json() == {"code": 503, "msg": first.json()["msg"], "data": []}
        assert "not ready" in first.json()["msg"] and "retry" in first.json()["msg"]
        deadline = time.monotonic() + 180
        while requests.get(f"{svc.url}/health", timeout=5).status_code != 200:
            assert svc.proc.poll() is None and time.monotonic() < deadline, svc.output()[-3000:]
            time.sleep(0.5)
        r = requests.post(f"{svc.url}/autotable/predict", json={"content": b64(image_bytes())}, timeout=60)
        assert r.status_code == 200 and r.json()["data"][0]["infer_data"][0], r.text
        assert svc.output().index("Uvicorn running") < svc.output().index("ready on cpu")
    finally:
        svc.stop()


def test_sigterm_while_the_model_loads_stops_everything(trained_model, tmp_path):
    import signal

    svc = start_service(trained_model, tmp_path / "client_infer.log", wait=False)
    try:
        assert _first_answer(svc, "/health").status_code == 503
        # The proxy answers before TorchServe's launcher has started Java: wait for the JVM, still before ready.
        deadline = time.monotonic() + 60
        while "java" not in {p.name() for p in svc.snapshot()}:
            assert svc.proc.poll() is None and time.monotonic() < deadline, svc.output()[-3000:]
            time.sleep(0.1)
        family = svc.family
        assert requests.get(f"{svc.url}/health", timeout=5).status_code == 503, "loaded before the signal"
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(30) == 0, svc.output()[-3000:]
        stopped_s = time.monotonic() - t0
    finally:
        svc.stop()
    assert not _gone(family) and stopped_s < 30
    assert "SIGTERM: stopping" in svc.output() and "ready on" not in svc.output()


def test_several_proxy_processes_serve_one_port(trained_model, tmp_path):
    """SIMSIAM_PROXY_PROCESSES=2: both processes answer 503 while the model loads, then both take connections
    and answer 200; a proxy child killed is restarted while the other serves; SIGTERM stops all of them."""
    svc = start_service(trained_model, tmp_path / "client_infer.log", wait=False, env={"SIMSIAM_PROXY_PROCESSES": "2"})
    port = int(svc.url.rsplit(":", 1)[1])
    body = {"content": b64(image_bytes())}
    try:
        first = _first_answer(svc, "/autotable/predict", json=body)
        assert first.status_code == 503 and "not ready" in first.json()["msg"], first.text
        children = _proxy_children(svc)
        assert len(children) == 1, [p.cmdline() for p in svc.snapshot()]
        # New connections go to either socket: while loading, each of them says 503 (the child follows the parent).
        loading = [requests.get(f"{svc.url}/health", timeout=10).status_code for _ in range(8)]
        assert set(loading) == {503} or "ready on" in svc.output(), loading
        sessions = [requests.Session() for _ in range(16)]
        deadline = time.monotonic() + 120
        while any(s.post(f"{svc.url}/autotable/predict", json=body, timeout=60).status_code != 200 for s in sessions):
            assert time.monotonic() < deadline, svc.output()[-3000:]
            time.sleep(0.5)
        # 16 keep-alive connections spread over the two sockets by the kernel: each process holds some of them
        # (matched by the client side's ports, so a one-off connection still closing is not counted).
        mine = {c.laddr.port for c in psutil.Process().net_connections("tcp") if _to(c, port)}
        held = {p.pid: _established(p, port, mine) for p in [psutil.Process(svc.proc.pid), *children]}
        assert len(mine) >= 16 and all(n > 0 for n in held.values()) and sum(held.values()) == len(mine), held
        assert all(s.post(f"{svc.url}/autotable/predict", json=body, timeout=60).ok for s in sessions)

        children[0].kill()
        for s in sessions:  # the parent's connections go on; the child's were cut: a client reconnects
            with contextlib.suppress(requests.ConnectionError):
                s.post(f"{svc.url}/autotable/predict", json=body, timeout=60)
        deadline = time.monotonic() + 60
        while not (restarted := [p for p in _proxy_children(svc) if p.pid != children[0].pid]):
            assert time.monotonic() < deadline, svc.output()[-3000:]
            time.sleep(0.2)
        assert "restarting it" in svc.output()
        fresh = [requests.post(f"{svc.url}/autotable/predict", json=body, timeout=60).status_code for _ in range(16)]
        assert fresh == [200] * 16, fresh
        family = svc.snapshot()
        assert svc.stop() == 0, svc.output()[-3000:]
    finally:
        if svc.proc.poll() is None:
            svc.kill()
    assert not _gone(family) and not any(alive(p) for p in restarted)


def _proxy_children(svc) -> list[psutil.Process]:
    return [p for p in svc.snapshot() if "spawn_main" in " ".join(p.cmdline()) and alive(p)]


def _to(conn, port: int) -> bool:
    return conn.status == psutil.CONN_ESTABLISHED and bool(conn.raddr) and conn.raddr.port == port


def _established(proc: psutil.Process, port: int, clients: set[int]) -> int:
    """Connections `proc` accepted on `port` from the given client ports."""
    return sum(
        c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port and bool(c.raddr) and c.raddr.port in clients
        for c in proc.net_connections("tcp")
    )


def _first_answer(svc, path: str, **kw) -> requests.Response:
    """The first HTTP answer on `path` once the proxy listens (GET without a body, POST with one)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if kw:
                return requests.post(f"{svc.url}{path}", timeout=10, **kw)
            return requests.get(f"{svc.url}{path}", timeout=10)
        except requests.ConnectionError:
            assert svc.proc.poll() is None and time.monotonic() < deadline, svc.output()[-3000:]
            time.sleep(0.05)
