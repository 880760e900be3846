"""The product's HTTP API alone, in front of a TorchServe that another container runs (KServe's transformer).

    python serving/kserve_proxy.py --inference http://127.0.0.1:8085 --management http://127.0.0.1:8086 \
        --used_model SimSiam_autotables-2503-train-1 --service_port 8080

client_infer.py starts TorchServe itself and is the entry point everywhere else. Under KServe the predictor
container runs TorchServe, and this process (deploy/kserve/inferenceservice-product-api.yaml) serves
POST /autotable/predict and GET /health on the pod's port, with the same app (serving.app) as client_infer.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, where serving/ lives


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--inference", default="http://127.0.0.1:8085", help="TorchServe's inference API (default: %(default)s)"
    )
    p.add_argument(
        "--management", default="http://127.0.0.1:8086", help="TorchServe's management API (default: %(default)s)"
    )
    p.add_argument(
        "--used_model",
        default="SimSiam_autotables-2503-train-1",
        help="model name registered in TorchServe (default: %(default)s)",
    )
    p.add_argument("--service_port", type=int, default=8080, help="port of the HTTP API (default: %(default)s)")
    p.add_argument("--host", default="0.0.0.0", help="address of the HTTP API (default: %(default)s)")
    return p


def build_app(args: argparse.Namespace):
    from serving.app import create_app

    return create_app(args.inference.rstrip("/"), args.management.rstrip("/"), args.used_model)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from serving.server import server_config

    # /health answers 503 until TorchServe has a READY worker, so the pod turns ready only then. The same server
    # settings as client_infer.py: the slow-client deadlines, the C parser, uvloop.
    uvicorn.Server(server_config(build_app(args), args.host, args.service_port)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
