"""The proxy on its own, no TorchServe (so no `serving` mark): request parsing, envelopes, limits, run config."""

from __future__ import annotations

import asyncio
import base64
import math

import httpx
import pytest
from serving_service import b64, image_bytes

from serving.app import create_app
from serving.envelope import ApiError, prediction
from serving.payload import MAX_IMAGE_PIXELS, _flag, check_image_header, decode_base64
from serving.ts_config import port_is_free, read_properties, write_run_config

JPEG = image_bytes((40, 30), seed=1)


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(JPEG).decode(),
        base64.urlsafe_b64encode(JPEG).decode().rstrip("="),
        "data:image/jpeg;base64," + base64.b64encode(JPEG).decode(),
        base64.encodebytes(JPEG).decode(),  # MIME line breaks
        base64.b64encode(JPEG).decode().replace("+", " "),  # a form that did not percent-encode '+'
    ],
)
def test_base64_variants(text):
    assert decode_base64(text) == JPEG


@pytest.mark.parametrize(
    "text, words", [("abc$", "'$' at position 3"), ("abcde", "length"), ("data:image/png,xyz", "data URI")]
)
def test_base64_errors_say_what_and_how(text, words):
    with pytest.raises(ApiError) as e:
        decode_base64(text)
    assert e.value.code == 400 and words in e.value.msg and "base64" in e.value.msg


def test_image_header_check():
    check_image_header(JPEG)
    for data, words in [(b"GIF8 no", "known format"), (JPEG[:10], "content")]:
        with pytest.raises(ApiError, match=words):
            check_image_header(data)


def test_pixel_limit_is_the_handlers():
    from handler.eval_preset import MAX_IMAGE_PIXELS as HANDLER_LIMIT

    assert MAX_IMAGE_PIXELS == HANDLER_LIMIT


def test_flags_and_prediction_format():
    assert [_flag(v, "f") for v in (None, True, False, "true", "False", "0", "1", 1, 0)] == [
        True, True, False, True, False, False, True, True, False,
    ]  # fmt: skip
    with pytest.raises(ApiError, match="'f' must be true or false"):
        _flag("maybe", "f")
    assert prediction("daisy", 0.55749, True, True) == {
        "infer_data": ["daisy", "0.5575"],
        "visual_data": {"output_type": "text", "annotation_type": None, "data": "daisy_0.5575"},
        "visual_result": "daisy_0.5575",
    }
    assert prediction("daisy", 1.0, False, False) == {"infer_data": ["daisy", "1.0000"]}


def test_run_config_moves_taken_ports(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        source = tmp_path / "source.properties"
        lines = [f"inference_address=http://127.0.0.1:{port}", "management_address=http://127.0.0.1:0"]
        lines += ["metrics_address=http://127.0.0.1:0", "grpc_inference_port=0", "grpc_management_port=0"]
        source.write_text("\n".join(lines))
        cfg = write_run_config(tmp_path, tmp_path / "store", num_gpus=1, source=source)
    assert not cfg.inference_url.endswith(f":{port}")
    assert read_properties(cfg.path)["number_of_gpu"] == "1"
    assert read_properties(cfg.path)["model_store"] == str(tmp_path / "store")
    assert port_is_free("127.0.0.1", port)


def test_run_config_leaves_the_proxys_port_to_the_proxy(tmp_path):
    """--service_port 8085 is free when TorchServe starts, but the proxy binds it after: TorchServe must not take it."""
    from serving.ts_config import free_port

    wanted = free_port()
    source = tmp_path / "source.properties"
    lines = [f"inference_address=http://127.0.0.1:{wanted}", "management_address=http://127.0.0.1:0"]
    lines += ["metrics_address=http://127.0.0.1:0", "grpc_inference_port=0", "grpc_management_port=0"]
    source.write_text("\n".join(lines))
    cfg = write_run_config(tmp_path, tmp_path / "store", num_gpus=0, source=source, reserved=frozenset({wanted}))
    props = read_properties(cfg.path)
    used = [int(v.rsplit(":", 1)[1]) for k, v in props.items() if k.endswith("_address") and "://" in v]
    used += [int(props[k]) for k in ("grpc_inference_port", "grpc_management_port")]
    assert wanted not in used, props


def test_project_config_is_loopback_only_and_deliberate():
    from serving.ts_config import DEFAULT_CONFIG

    props = read_properties(DEFAULT_CONFIG)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:") and not props[key].endswith(":8080"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "true" and props["enable_model_api"] == "true"
    assert props["metrics_mode"] == "prometheus" and int(props["max_request_size"]) >= 32 * 2**20


def call(app, method: str, path: str, **kw) -> httpx.Response:
    async def go() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
                return await client.request(method, path, **kw)

    return asyncio.run(go())


def test_proxy_without_torchserve_answers_in_the_envelope():
    app = create_app("http://127.0.0.1:9", "http://127.0.0.1:9", "SimSiam_x", max_body=2**20)
    cases = [
        (call(app, "GET", "/health"), 503, "not reachable"),
        (call(app, "POST", "/autotable/predict", json={"content": b64(JPEG)}), 503, "not reachable"),
        (call(app, "POST", "/autotable/predict", json={"content": "!"}), 400, "not base64"),
        (call(app, "POST", "/autotable/predict", content=b"x" * (2**20 + 1)), 413, "1 MiB limit"),
        (call(app, "PUT", "/autotable/predict"), 405, "use POST"),
        (call(app, "GET", "/models"), 404, "no route"),
    ]
    for r, code, words in cases:
        assert r.status_code == code and r.json()["code"] == code and r.json()["data"] == [], r.text
        assert words in r.json()["msg"], r.text


def test_while_the_model_loads_the_api_answers_503_and_still_checks_requests():
    app = create_app("http://127.0.0.1:9", "http://127.0.0.1:9", "SimSiam_x", max_body=2**20)
    app.state.loading = "TorchServe is loading it"
    cases = [
        (call(app, "GET", "/health"), 503, "not ready: TorchServe is loading it"),
        (call(app, "POST", "/autotable/predict", json={"content": b64(JPEG)}), 503, "retry shortly"),
        (call(app, "POST", "/autotable/predict", json={"content": "!"}), 400, "not base64"),
    ]
    for r, code, words in cases:
        assert r.status_code == code and r.json()["code"] == code and r.json()["data"] == [], r.text
        assert words in r.json()["msg"], r.text


def test_byte_budget_serialises_what_does_not_fit():
    from serving.ts_client import ByteBudget

    async def go() -> list[str]:
        budget, events = ByteBudget(100), []

        async def job(name: str, n: int) -> None:
            async with budget.hold(n):
                events.append(f"+{name}")
                await asyncio.sleep(0.01)
                events.append(f"-{name}")

        await asyncio.gather(job("a", 60), job("b", 60), job("c", 500))  # c is over the limit: it goes alone
        return events

    assert asyncio.run(go()) == ["+a", "-a", "+b", "-b", "+c", "-c"]


def test_a_request_that_finds_no_room_gets_a_prompt_503(monkeypatch):
    """Every in-flight slot taken: the next request waits ADMISSION_WAIT_S at most, then 503 -- not a 90-s queue."""
    import time

    import serving.ts_client as tsc

    monkeypatch.setattr(tsc, "ADMISSION_WAIT_S", 0.3)

    async def go() -> tuple[ApiError, float]:
        ts = tsc.TorchServeClient("http://127.0.0.1:9", "http://127.0.0.1:9", "SimSiam_x")
        for _ in range(tsc.MAX_IN_FLIGHT):
            await ts.slots.acquire()
        t0 = time.monotonic()
        try:
            await ts.predict(JPEG)
        except ApiError as e:
            return e, time.monotonic() - t0
        finally:
            await ts.aclose()
        raise AssertionError("admitted although every slot was taken")

    e, waited = asyncio.run(go())
    assert e.code == 503 and "overloaded" in e.msg and "retry" in e.msg
    assert 0.25 < waited < 2.0


def test_byte_budget_gives_up_after_its_wait():
    from serving.ts_client import ByteBudget, Overloaded

    async def go() -> None:
        budget = ByteBudget(100)
        async with budget.hold(80):
            with pytest.raises(Overloaded):
                async with budget.hold(50, wait_s=0.05):
                    pass
        async with budget.hold(50, wait_s=0.05):  # room again
            pass

    asyncio.run(go())


@pytest.mark.parametrize(
    ("cpus", "gpus", "env", "workers", "threads"),
    [
        (2, 0, {}, 2, 1),  # measured: 2 workers x 1 thread beat 1 x 2 and 4 x ... on 2 cores
        (16, 0, {}, 4, 4),  # at most 4 CPU workers, the cores shared out
        (1, 0, {}, 1, 1),
        (16, 1, {}, 2, 8),  # a GPU: one worker decodes while the other's batch runs
        (2, 0, {"SIMSIAM_TS_WORKERS": "1", "SIMSIAM_TORCH_THREADS": "1"}, 1, 1),
    ],
)
def test_the_serving_plan(monkeypatch, cpus, gpus, env, workers, threads):
    from serving.plan import serving_plan

    monkeypatch.delenv("SIMSIAM_TS_WORKERS", raising=False)
    monkeypatch.delenv("SIMSIAM_TORCH_THREADS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plan = serving_plan(cpus, gpus)
    assert (plan.workers, plan.threads) == (workers, threads)


@pytest.mark.parametrize(("cpus", "env", "proxies"), [(2, "", 1), (8, "", 1), (16, "", 2), (64, "", 4), (2, "3", 3)])
def test_the_proxy_process_count(monkeypatch, cpus, env, proxies):
    """One proxy process per 8 cores (it costs ~0.5 ms of CPU per request), at most 4; the setting overrides."""
    from serving.proxies import proxy_count

    monkeypatch.setenv("SIMSIAM_PROXY_PROCESSES", env)
    assert proxy_count(cpus) == proxies


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_a_bad_proxy_process_count_names_the_setting(monkeypatch, value):
    from serving.proxies import proxy_count

    monkeypatch.setenv("SIMSIAM_PROXY_PROCESSES", value)
    with pytest.raises(ValueError, match="SIMSIAM_PROXY_PROCESSES"):
        proxy_count(2)


def test_the_fast_paths_accept_what_the_lenient_ones_do():
    """pybase64 takes the common case; what it refuses goes through the lenient path, so the results and the
    error messages are the ones the bad-request corpus was written for. JSON stays the standard library's."""
    from serving.payload import parse_json

    assert decode_base64(base64.b64encode(JPEG).decode()) == JPEG  # fast path
    assert decode_base64(base64.urlsafe_b64encode(JPEG).decode().rstrip("=")) == JPEG  # lenient path
    assert math.isnan(parse_json(b'{"n": NaN}')["n"])  # orjson would refuse NaN
    assert parse_json(b'{"n": 1' + b"0" * 30 + b"}")["n"] == 10**30  # orjson would read a float
    with pytest.raises(ValueError):
        parse_json(b'{"content": ')
