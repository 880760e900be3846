"""client_infer.py's life cycle: a wrong model folder, 503 while loading, SIGTERM leaving nothing behind, TorchServe
dying."""

from __future__ import annotations

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
        r = requests.post(f"{svc.url}/autotable/predict", json={"content": b64(image_bytes())}, timeout=60)
        assert r.ok, (r.status_code, r.text, svc.output()[-3000:])
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
        log_then = svc.output()
        assert first.status_code == 503, first.text
        assert first.json() == {"code": 503, "msg": first.json()["msg"], "data": []}
        assert "not ready" in first.json()["msg"] and "retry" in first.json()["msg"]
        deadline = time.monotonic() + 180
        with requests.Session() as http:  # one client, keep-alive: no connection of the loading state lingers
            while http.get(f"{svc.url}/health", timeout=5).status_code != 200:
                assert svc.proc.poll() is None and time.monotonic() < deadline, svc.output()[-3000:]
                time.sleep(0.5)
            for _ in range(3):
                r = http.post(f"{svc.url}/autotable/predict", json={"content": b64(image_bytes())}, timeout=60)
                assert r.status_code == 200 and r.json()["data"][0]["infer_data"][0], r.text
        # The 503 came while TorchServe was loading (not from a fast load or a failure): the log said nothing of
        # readiness yet when it arrived, and the model became ready after it.
        assert "starting TorchServe" in log_then and "ready on" not in log_then
        assert "ready on cpu" in svc.output()
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


def test_nginx_serves_with_a_worker_per_core_and_stops_gracefully_on_sigint_to_the_group(trained_model, tmp_path):
    """Ctrl-C in a terminal signals the whole foreground group: requests in flight still get their 200 (nginx and
    TorchServe run in their own groups; client_infer.py drains nginx first), then everything is gone."""
    import os
    import signal
    import threading

    svc = start_service(trained_model, tmp_path / "client_infer.log", new_session=True)
    family = svc.snapshot()
    nginx = [p for p in family if p.name() == "nginx"]
    assert len(nginx) == 1 + len(os.sched_getaffinity(0)), [p.cmdline() for p in nginx]  # master + a worker a core
    body = {"content": [b64(image_bytes(seed=i)) for i in range(64)], "need_visual_data": False}
    answers: list[requests.Response] = []
    sender = threading.Thread(
        target=lambda: answers.append(requests.post(f"{svc.url}/autotable/predict", json=body, timeout=60))
    )
    try:
        sender.start()
        time.sleep(0.3)  # the 64 images are in flight
        os.killpg(svc.proc.pid, signal.SIGINT)
        assert svc.proc.wait(60) == 0, svc.output()[-3000:]
        sender.join(60)
    finally:
        svc.stop()
    assert answers and answers[0].status_code == 200, answers[0].text if answers else "no answer"
    assert len(answers[0].json()["data"]) == 64
    assert "SIGINT: stopping" in svc.output() and "nginx stopped" in svc.output()
    assert not _gone(family)


def test_a_signal_while_torchserve_starts_leaves_nothing(trained_model, tmp_path):
    """SIGTERM the moment TorchServe's launcher has been started (before Java is up): nothing is orphaned."""
    import signal

    svc = start_service(trained_model, tmp_path / "client_infer.log", wait=False)
    try:
        deadline = time.monotonic() + 60
        while "starting TorchServe" not in svc.output():
            assert svc.proc.poll() is None and time.monotonic() < deadline, svc.output()[-3000:]
            time.sleep(0.01)
        family = svc.snapshot()
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(60) == 0, svc.output()[-3000:]
        run_dir = re.search(r"--model-store (\S+)/model-store", svc.output()).group(1)
    finally:
        svc.stop()
    time.sleep(1)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if run_dir in " ".join(p.info["cmdline"] or [])]
    assert not _gone(family) and not leftovers, leftovers
    assert not Path(run_dir).exists()


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
