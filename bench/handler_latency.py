"""The served model's own latency on one device: the product's TorchServe handler, in process, on real JPEG bytes.

    .venv/bin/python -m bench.handler_latency --model_path runs/models/<uuid4> --used_model SimSiam_<trial> \
        --device cuda

The .mar is unpacked as TorchServe unpacks it and its handler (handler/simsiam_handler.py) is initialised with
TorchServe's MockContext on the device (gpu_id) or the CPU, so the figures are what one TorchServe worker spends
per batch, without HTTP (bench/serve_bench.py adds the proxy and TorchServe's frontend; it needs Java). For each
batch size: preprocess (decode + the eval preset, on the CPU) and inference + postprocess (the device's forward,
synchronised) p50 in ms per batch, and images/s of the whole handle().
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from dataset.demo import draw_image
from export.model_folder import open_model_folder
from jobs.device import resolve_device


def jpegs(n: int, side: int) -> list[bytes]:
    """Demo drawings as camera-sized JPEGs (decode is part of the handler's work)."""
    r = random.Random(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        draw_image(["dots", "stripes", "checkers"][i % 3], r, side, side).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def handler_on(mar: Path, model_dir: Path, device: torch.device):
    from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext

    from handler.simsiam_handler import SimSiamHandler

    with zipfile.ZipFile(mar) as z:
        z.extractall(model_dir)
    gpu_id = str(device.index or 0) if device.type == "cuda" else None
    context = MockContext(model_pt_file="model.pt", model_dir=str(model_dir), model_file=None, gpu_id=gpu_id)
    handler = SimSiamHandler()
    handler.initialize(context)
    assert handler.device.type == device.type, f"the handler chose {handler.device}, not {device}"
    return handler, context


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(handler, device: torch.device, images: list[bytes], batch: int, repeats: int) -> tuple[float, float, float]:
    """(preprocess ms p50, inference + postprocess ms p50, images/s) for `repeats` batches of `batch` requests."""
    rows = [{"data": images[i % len(images)]} for i in range(batch)]
    pre, inf, total = [], [], []
    for k in range(repeats + 3):  # 3 warm-up batches (cuDNN picks its kernels on the first)
        t0 = time.perf_counter()
        data = handler.preprocess(rows)
        t1 = time.perf_counter()
        out = handler.postprocess(handler.inference(data))
        _sync(device)
        t2 = time.perf_counter()
        assert len(out) == batch and all(o["code"] == 200 and o["data"] for o in out), out[:2]
        if k >= 3:
            pre.append((t1 - t0) * 1000)
            inf.append((t2 - t1) * 1000)
            total.append(t2 - t0)
    return statistics.median(pre), statistics.median(inf), batch * len(total) / sum(total)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="a model folder from client_train.py")
    p.add_argument("--used_model", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--side", type=int, default=640, help="JPEG side in pixels (default 640)")
    a = p.parse_args()
    device = resolve_device(a.device)
    folder = open_model_folder(a.model_path, a.used_model)
    images = jpegs(16, a.side)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    with tempfile.TemporaryDirectory(prefix="handler-latency-") as tmp:
        handler, _ = handler_on(folder.mar, Path(tmp), device)
        print(
            f"{a.used_model} ({handler.preset.input_size} px) on {name}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {a.side}x{a.side} JPEGs ({sum(map(len, images)) // len(images)} "
            f"bytes), {a.repeats} batches per size after 3 warm-up"
        )
        print(f"{'batch':>6}{'preprocess ms':>16}{'inference ms':>15}{'images/s':>11}")
        for batch in a.batch_sizes:
            pre, inf, rate = measure(handler, device, images, batch, a.repeats)
            print(f"{batch:>6}{pre:>16.2f}{inf:>15.2f}{rate:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
