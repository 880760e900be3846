"""The TorchServe handler without a server, through TorchServe's own MockContext."""

import base64
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext

from handler.simsiam_handler import SimSiamHandler
from handler.worker_threads import torch_threads


class StatusContext(MockContext):
    """MockContext plus the per-request headers and status calls TorchServe's real Context has."""

    def __init__(self, **kw):
        super().__init__(**{"gpu_id": None, **kw})  # the CPU handler (threads, CPU scores) on a GPU host too
        self.statuses: dict[int, tuple[int, str]] = {}
        self.headers: dict[int, dict[str, str]] = {}

    def set_response_status(self, code=200, phrase="", idx=0):
        if code != 200:
            self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        assert value == "application/json"

    def get_request_header(self, idx, key):
        return self.headers.get(idx, {}).get(key)


def api(ctx, rows: list[tuple[bytes, str]]) -> list[dict]:
    """Rows as nginx sends them: the client's body untouched, its Content-Type in a header."""
    ctx.headers = {i: {"x-api-route": "predict", "x-api-content-type": ctype} for i, (_, ctype) in enumerate(rows)}
    return [{"body": bytearray(body)} for body, _ in rows]


def read(out: list[str | dict]) -> list[dict]:
    """The envelopes: JSON text on nginx's route, a dict for a direct TorchServe client."""
    return [r if isinstance(r, dict) else json.loads(r) for r in out]


@pytest.fixture(scope="module")
def handler_and_context(trained_model, tmp_path_factory):
    # Serve from an unpacked copy of the real .mar, as TorchServe does.
    folder = Path(trained_model["model_path"])
    model_dir = tmp_path_factory.mktemp("mar")
    with zipfile.ZipFile(folder / f"{trained_model['gened_model_name']}.mar") as z:
        z.extractall(model_dir)
    ctx = StatusContext(
        model_pt_file="model.pt", model_dir=str(model_dir), model_file=None, model_yaml_config_file="model-config.yaml"
    )
    h = SimSiamHandler()
    h.initialize(ctx)
    return h, ctx


def _jpeg(colour=(200, 10, 10), size=(50, 40), fmt="JPEG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, fmt)
    return buf.getvalue()


def test_batch_of_good_images(handler_and_context):
    h, ctx = handler_and_context
    ctx.statuses.clear()
    ctx.headers = {}
    rows = [
        {"data": _jpeg()},
        {"body": bytearray(_jpeg((0, 0, 0), fmt="PNG"))},
        {"data": _jpeg(128, mode="L", fmt="PNG")},
    ]
    out = read(h.handle(rows, ctx))
    assert len(out) == 3
    for r in out:
        assert r["code"] == 200 and len(r["data"]) == 1
        cls, prob = r["data"][0]["infer_data"]
        assert cls in h.classes and 0 < float(prob) <= 1
    assert ctx.statuses == {}


def test_requests_with_several_images_share_one_batch(handler_and_context):
    h, ctx = handler_and_context
    ctx.statuses.clear()
    one = json.dumps({"content": base64.b64encode(_jpeg()).decode()}).encode()
    three = json.dumps({"content": [base64.b64encode(_jpeg(c)).decode() for c in (1, 2, 3)],
                        "need_visual_data": False}).encode()  # fmt: skip
    out = read(h.handle(api(ctx, [(one, "application/json"), (three, "application/json")]), ctx))
    assert [len(r["data"]) for r in out] == [1, 3] and "visual_data" not in out[1]["data"][0]
    alone = read(h.handle(api(ctx, [(one, "application/json")]), ctx))
    assert alone[0] == out[0]  # batch-mates do not change an answer
    assert ctx.statuses == {}


def test_health_row_answers_who_it_is(handler_and_context):
    h, ctx = handler_and_context
    ctx.headers = {0: {"x-api-route": "health"}}
    [r] = read(h.handle([{"body": bytearray(b"health")}], ctx))
    assert r["code"] == 200 and set(r["data"][0]) == {"model", "version"}


def test_base64_text_body_is_accepted(handler_and_context):
    h, ctx = handler_and_context
    ctx.headers = {}
    out = read(h.handle([{"body": base64.b64encode(_jpeg()).decode()}], ctx))
    assert out[0]["code"] == 200


def test_one_bad_request_fails_only_itself(handler_and_context):
    h, ctx = handler_and_context
    ctx.statuses.clear()
    good = json.dumps({"content": base64.b64encode(_jpeg()).decode()}).encode()
    half = json.dumps({"content": [base64.b64encode(_jpeg()).decode(),
                                   base64.b64encode(_jpeg()[:200]).decode()]}).encode()  # fmt: skip
    rows = [(good, "application/json"), (b"{", "application/json"), (half, "application/json"), (good, "")]
    out = read(h.handle(api(ctx, rows), ctx))
    assert out[0] == out[3] and out[0]["code"] == 200
    assert out[1]["code"] == 400 and "not valid JSON" in out[1]["msg"] and out[1]["data"] == []
    assert out[2]["code"] == 400 and out[2]["msg"].startswith("content[1]")
    assert set(ctx.statuses) == {1, 2} and all(code == 400 for code, _ in ctx.statuses.values())


def test_all_bad_batch(handler_and_context):
    h, ctx = handler_and_context
    ctx.headers = {}
    out = read(h.handle([{"data": b""}, {"data": None}], ctx))
    assert [r["code"] for r in out] == [400, 400]


def test_frozen_model_answers_as_the_exported_one(handler_and_context):
    """The handler serves model.pt frozen and optimised for inference; its logits equal the file's to 1e-4."""
    import torch

    h, _ = handler_and_context
    exported = torch.jit.load(h.model_pt_path).eval()
    x = torch.randn(5, 3, h.preset.input_size, h.preset.input_size)
    with torch.inference_mode():
        assert torch.allclose(h.model(x), exported(x), atol=1e-4)
    assert "prim::GetAttr" not in str(h.model.graph)  # frozen: the weights are constants


def test_threads_are_capped_per_worker(monkeypatch):
    monkeypatch.delenv("SIMSIAM_TORCH_THREADS", raising=False)
    assert torch_threads({"handler": {"threads": 3}}) == 3
    monkeypatch.setenv("SIMSIAM_TORCH_THREADS", "2")
    assert torch_threads({}) == 2


def test_base_handle_records_handler_time(handler_and_context):
    # The handler overrides preprocess/inference/postprocess only: BaseHandler.handle runs them and records
    # TorchServe's HandlerTime metric.
    h, ctx = handler_and_context
    assert "handle" not in vars(SimSiamHandler)
    fresh = StatusContext(
        model_pt_file="model.pt", model_dir=ctx.system_properties["model_dir"], model_file=None
    )  # a context whose metrics store is empty
    [row] = read(h.handle([{"data": _jpeg()}], fresh))
    assert row["code"] == 200
    assert [m.name for m in fresh.metrics.store] == ["HandlerTime"]
