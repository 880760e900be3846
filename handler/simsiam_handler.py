"""TorchServe handler: the product's predict request -> shared eval preset -> batched forward -> the envelope.

A list of N requests in, a list of N envelopes out (SPEC.md, "POST /autotable/predict"); a request may carry
several images, and every image of the batch goes through one forward pass. A request that is bad in any way gets
its own 400 envelope through the context's per-request status; the rest of the batch is answered normally.
TorchServe is touched only here (BaseHandler, the context); parsing and the envelope live in api.py.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from ts.torch_handler.base_handler import BaseHandler

try:  # inside the .mar the helpers sit flat beside this file
    from api import (
        API_CONTENT_TYPE,
        API_ROUTE,
        ApiError,
        PredictInput,
        decode_error,
        envelope,
        prediction,
        read_image_body,
        read_predict_request,
    )
    from classifier import load_classifier
    from eval_preset import EvalPreset, ImageDecodeError, load_for_eval
    from worker_threads import torch_threads
except ImportError:  # in the repository (tests)
    from handler.api import (
        API_CONTENT_TYPE,
        API_ROUTE,
        ApiError,
        PredictInput,
        decode_error,
        envelope,
        prediction,
        read_image_body,
        read_predict_request,
    )
    from handler.classifier import load_classifier
    from handler.eval_preset import EvalPreset, ImageDecodeError, load_for_eval
    from handler.worker_threads import torch_threads

log = logging.getLogger(__name__)
JSON = "application/json"


class SimSiamHandler(BaseHandler):
    def initialize(self, context) -> None:
        super().initialize(context)  # loads model.pt through _load_torchscript_model, and index_to_name.json
        model_dir = context.system_properties["model_dir"]
        self.preset = EvalPreset.load(os.path.join(model_dir, "preprocess.json"))
        self.classes = [self.mapping[str(i)] for i in range(len(self.mapping))]
        threads = torch_threads(getattr(context, "model_yaml_config", None) or {})
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        # A batch's images are decoded in parallel (PIL releases the GIL while it decodes): one after another they
        # kept all but one core idle between forward passes.
        self.decoders = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode")
        model = (getattr(context, "manifest", None) or {}).get("model") or {}
        self.identity = {"model": model.get("modelName"), "version": model.get("modelVersion")}
        log.info("SimSiam handler ready: %d classes, input %d, %d threads", len(self.classes),
                 self.preset.input_size, torch.get_num_threads())  # fmt: skip

    def _load_torchscript_model(self, model_pt_path: str) -> torch.jit.ScriptModule:
        return load_classifier(model_pt_path, self.device)

    # BaseHandler.handle runs preprocess -> inference -> postprocess and records HandlerTime. Each row travels as
    # a PredictInput, a health question (None) or the ApiError that answers it.
    def preprocess(self, data: list[dict]) -> tuple[list[PredictInput | ApiError | None], torch.Tensor | None]:
        rows = [self._read(i, row) for i, row in enumerate(data)]
        jobs = [(i, k, image) for i, r in enumerate(rows) if isinstance(r, PredictInput) for k, image in
                enumerate(r.images)]  # fmt: skip
        loaded = list(self.decoders.map(self._load, jobs)) if len(jobs) > 1 else [self._load(j) for j in jobs]
        tensors = []
        for (i, k, _), t in zip(jobs, loaded):
            if isinstance(rows[i], ApiError):
                continue  # an earlier image of the request failed
            if isinstance(t, str):
                rows[i] = decode_error("content" if len(rows[i].images) == 1 else f"content[{k}]", t)
            else:
                tensors.append((i, t))
        tensors = [t for i, t in tensors if isinstance(rows[i], PredictInput)]
        return rows, torch.stack(tensors) if tensors else None

    def _read(self, i: int, row: dict) -> PredictInput | ApiError | None:
        route = self._header(i, API_ROUTE)
        if route == "health":
            return None
        body = row.get("data") if row.get("data") is not None else row.get("body")
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, (bytes, bytearray)):  # TorchServe decoded a JSON body itself: not from nginx
            return ApiError(400, "send the image with Content-Type application/octet-stream (the file's bytes)")
        try:
            if route == "predict":
                return read_predict_request(bytes(body), self._header(i, API_CONTENT_TYPE) or "")
            return read_image_body(bytes(body))
        except ApiError as e:
            return e

    def _status(self, i: int, code: int) -> None:
        """Request i's HTTP status and type (TorchServe's Context; a unit test's MockContext may lack them)."""
        if hasattr(self.context, "set_response_status"):
            self.context.set_response_status(code, "OK" if code == 200 else "Bad Request", i)
        if hasattr(self.context, "set_response_content_type"):
            self.context.set_response_content_type(i, JSON)

    def _header(self, i: int, name: str) -> str | None:
        get = getattr(self.context, "get_request_header", None)
        return None if get is None else get(i, name)

    def _load(self, job: tuple[int, int, bytes]) -> torch.Tensor | str:
        """The image through the eval preset, or why it cannot be read."""
        try:
            return load_for_eval(job[2], self.preset)
        except (ImageDecodeError, ValueError) as e:
            return str(e)

    def inference(self, data, *args, **kwargs) -> tuple[list[PredictInput | ApiError | None], torch.Tensor | None]:
        rows, batch = data
        if batch is None:
            return rows, None
        with torch.inference_mode():
            return rows, torch.softmax(self.model(batch.to(self.device)).float(), dim=1).cpu()

    def postprocess(self, data: tuple[list[PredictInput | ApiError | None], torch.Tensor | None]) -> list[str | dict]:
        """The envelope as JSON text for nginx's route; as a dict for a direct client, so that an envelope of
        TorchServe's own (KServe's v1 `predictions`) holds it as an object."""
        rows, probs = data
        top = probs.max(dim=1) if probs is not None else None
        out, j = [], 0
        for i, row in enumerate(rows):
            self._status(i, row.code if isinstance(row, ApiError) else 200)
            if row is None:
                out.append(envelope(200, "ok", [self.identity]))
            elif isinstance(row, ApiError):
                out.append(envelope(row.code, row.msg))
            else:
                n = len(row.images)
                p, k = top.values[j : j + n].tolist(), top.indices[j : j + n].tolist()
                j += n
                items = [prediction(self.classes[c], q, row.need_visual_data, row.need_visual_result)
                         for q, c in zip(p, k)]  # fmt: skip
                out.append(envelope(200, "ok", items))
        return [r if self._header(i, API_ROUTE) else json.loads(r) for i, r in enumerate(out)]
