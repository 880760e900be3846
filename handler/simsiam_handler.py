"""TorchServe handler: image bytes -> shared eval preset -> batched TorchScript forward -> top-1.

A list of N requests in, a list of N results out. A request whose bytes are not a readable image
gets its own 400 (through the context's per-request status) and `{"error": ...}`; the rest of the
batch is answered normally.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from ts.torch_handler.base_handler import BaseHandler

try:  # inside the .mar the helpers sit flat beside this file
    from eval_preset import EvalPreset, ImageDecodeError, load_for_eval
    from worker_threads import torch_threads
except ImportError:  # in the repository (tests, client_test.py)
    from handler.eval_preset import EvalPreset, ImageDecodeError, load_for_eval
    from handler.worker_threads import torch_threads

log = logging.getLogger(__name__)


class SimSiamHandler(BaseHandler):
    def initialize(self, context) -> None:
        super().initialize(context)  # loads model.pt (TorchScript) and index_to_name.json
        model_dir = context.system_properties["model_dir"]
        self.preset = EvalPreset.load(os.path.join(model_dir, "preprocess.json"))
        self.classes = [self.mapping[str(i)] for i in range(len(self.mapping))]
        threads = torch_threads(getattr(context, "model_yaml_config", None) or {})
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        # A batch's images are decoded in parallel (PIL releases the GIL while it decodes): one after another they
        # kept all but one core idle between forward passes.
        self.decoders = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode")
        log.info(
            "SimSiam handler ready: %d classes, input %d, %d threads",
            len(self.classes),
            self.preset.input_size,
            torch.get_num_threads(),
        )

    # BaseHandler.handle runs preprocess -> inference -> postprocess and records HandlerTime; a request's decode
    # error travels beside the batch as (batch, errors) so that one bad image fails only its own row.
    def preprocess(self, data: list[dict]) -> tuple[torch.Tensor | None, list[str | None]]:
        rows = list(self.decoders.map(self._load, data)) if len(data) > 1 else [self._load(data[0])]
        tensors = [r for r in rows if isinstance(r, torch.Tensor)]
        errors = [None if isinstance(r, torch.Tensor) else r for r in rows]
        batch = torch.stack(tensors) if tensors else None
        return batch, errors

    def _load(self, row: dict) -> torch.Tensor | str:
        """The row's image through the eval preset, or why it cannot be read."""
        try:
            return load_for_eval(_payload(row), self.preset)
        except (ImageDecodeError, ValueError) as e:
            return str(e)

    def inference(
        self, data: tuple[torch.Tensor | None, list[str | None]], *args, **kwargs
    ) -> tuple[torch.Tensor | None, list[str | None]]:
        batch, errors = data
        if batch is None:
            return None, errors
        with torch.inference_mode():
            return torch.softmax(self.model(batch.to(self.device)).float(), dim=1).cpu(), errors

    def postprocess(self, data: tuple[torch.Tensor | None, list[str | None]]) -> list[dict]:
        probs, errors = data
        out, j = [], 0
        for i, err in enumerate(errors):
            if err is not None:
                self._reject(i, err)
                out.append({"error": err})
                continue
            p, k = probs[j].max(0)
            j += 1
            out.append({"class": self.classes[int(k)], "index": int(k), "probability": float(p)})
        return out

    def _reject(self, i: int, err: str) -> None:
        if self.context is None or not hasattr(self.context, "set_response_status"):
            return
        # An envelope (KServe) may pack several instances into one request: then the error stays in its row.
        with contextlib.suppress(IndexError, TypeError):
            self.context.set_response_status(400, err, idx=i)


def _payload(row: dict) -> bytes:
    """The request's image bytes: raw bytes, or base64 text for direct TorchServe JSON clients."""
    body = row.get("data") if row.get("data") is not None else row.get("body")
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        try:
            return base64.b64decode(body.split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"the request body is text but not base64: {e}") from e
    raise ValueError("the request carries no image bytes; send the image file's bytes as the body")
