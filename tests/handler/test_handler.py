"""The TorchServe handler without a server, through TorchServe's own MockContext."""

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext

from handler.simsiam_handler import SimSiamHandler
from handler.worker_threads import torch_threads


class StatusContext(MockContext):
    """MockContext plus the per-request status calls TorchServe's real Context has."""

    def __init__(self, **kw):
        super().__init__(**{"gpu_id": None, **kw})  # the CPU handler (threads, CPU scores) on a GPU host too
        self.statuses: dict[int, tuple[int, str]] = {}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = (code, phrase)


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
    rows = [
        {"data": _jpeg()},
        {"body": bytearray(_jpeg((0, 0, 0), fmt="PNG"))},
        {"data": _jpeg(128, mode="L", fmt="PNG")},
    ]
    out = h.handle(rows, ctx)
    assert len(out) == 3
    for r in out:
        assert r["class"] in h.classes and 0 < r["probability"] <= 1 and r["index"] == h.classes.index(r["class"])
    assert ctx.statuses == {}


def test_base64_text_body_is_accepted(handler_and_context):
    import base64

    h, ctx = handler_and_context
    out = h.handle([{"body": base64.b64encode(_jpeg()).decode()}], ctx)
    assert "class" in out[0]


def test_one_bad_image_fails_only_its_own_request(handler_and_context):
    h, ctx = handler_and_context
    ctx.statuses.clear()
    good = _jpeg()
    out = h.handle([{"data": good}, {"data": b"not an image"}, {"data": good[: len(good) // 2]}, {"data": good}], ctx)
    assert len(out) == 4
    assert "class" in out[0] and "class" in out[3] and out[0] == out[3]
    assert "error" in out[1] and "error" in out[2]
    assert set(ctx.statuses) == {1, 2} and all(code == 400 for code, _ in ctx.statuses.values())


def test_all_bad_batch(handler_and_context):
    h, ctx = handler_and_context
    out = h.handle([{"data": b""}, {"data": None}], ctx)
    assert [list(r) for r in out] == [["error"], ["error"]]


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
    [row] = h.handle([{"data": _jpeg()}], fresh)
    assert set(row) == {"class", "index", "probability"}
    assert [m.name for m in fresh.metrics.store] == ["HandlerTime"]
