"""Model versions and workers through TorchServe's management API (loopback only; README.md, "Serving").

    python -m serving.manage list
    python -m serving.manage describe [--version all]
    python -m serving.manage scale --min 2 --max 2 [--version 1.0]
    python -m serving.manage register-version --model_path runs/models/<uuid4> --version 2.0
    python -m serving.manage set-default 2.0
    python -m serving.manage retire 1.0        # drain its queue, then unregister it

--name defaults to the one model TorchServe serves; --management to config.properties' management_address
(client_infer.py logs the address it actually used).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serving.ts_config import DEFAULT_CONFIG, read_properties

MAR_INPUTS = ("model.pt", "index_to_name.json", "preprocess.json")  # what export.archive.build_mar packs


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = read_properties(DEFAULT_CONFIG)["management_address"]
    p.add_argument("--management", default=default, help="management API URL (default: %(default)s)")
    p.add_argument("--name", default=None, help="model name (default: the only model served)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="models served")
    d = sub.add_parser("describe", help="versions, workers, batching, queue")
    d.add_argument("--version", default=None, help="a version, or 'all' (default: the default version)")
    s = sub.add_parser("scale", help="set the number of workers of a version")
    s.add_argument("--min", type=int, required=True, help="min workers")
    s.add_argument("--max", type=int, default=None, help="max workers (default: = --min)")
    s.add_argument("--version", default=None, help="version (default: the default version)")
    r = sub.add_parser("register-version", help="serve another trained model folder as a new version of --name")
    r.add_argument("--model_path", required=True, help="model folder from client_train.py")
    r.add_argument("--version", required=True, help="new version, e.g. 2.0")
    r.add_argument("--workers", type=int, default=1, help="initial workers (default: %(default)s)")
    sd = sub.add_parser("set-default", help="route unversioned predictions (the proxy's) to this version")
    sd.add_argument("version")
    u = sub.add_parser("retire", help="wait until a (non-default) version's queue is empty, then unregister it")
    u.add_argument("version")
    u.add_argument("--grace", type=float, default=5.0, help="seconds for its last batch to finish (default: 5)")
    return p


def build_version_mar(model_dir: Path, name: str, version: str, out_dir: Path) -> Path:
    """Re-archive a model folder's files as `<name>` version `version`, named <name>-v<version>.mar.

    The file name must differ from the served .mar's: TorchServe copies it into its model store, which refuses
    a name it already holds.
    """
    from export.archive import build_mar  # model-archiver: only needed here

    missing = [f for f in MAR_INPUTS if not (model_dir / f).is_file()]
    if missing:
        raise SystemExit(f"--model_path {model_dir} lacks {', '.join(missing)}; pass a folder from client_train.py")
    for f in MAR_INPUTS:
        shutil.copy2(model_dir / f, out_dir / f)
    mar = build_mar(out_dir, name, version=version)
    return mar.rename(out_dir / f"{name}-v{version}.mar")


def main(args: argparse.Namespace) -> int:
    with httpx.Client(base_url=args.management, timeout=600.0) as http:  # registration waits for workers
        if args.command == "list":
            return _show(http.get("/models"))
        name = args.name or _only_model(http)
        if args.command == "describe":
            return _show(http.get(f"/models/{name}" + (f"/{args.version}" if args.version else "")))
        if args.command == "scale":
            path = f"/models/{name}" + (f"/{args.version}" if args.version else "")
            top = args.min if args.max is None else args.max
            params = {"min_worker": args.min, "max_worker": top, "synchronous": "true"}
            return _show(http.put(path, params=params))
        if args.command == "set-default":
            return _show(http.put(f"/models/{name}/{args.version}/set-default"))
        if args.command == "retire":
            drain(http, name, args.version, args.grace)
            return _show(http.delete(f"/models/{name}/{args.version}"))
        with tempfile.TemporaryDirectory(prefix="simsiam-version-") as staging:
            mar = build_version_mar(Path(args.model_path).resolve(), name, args.version, Path(staging))
            params = {
                "url": mar.as_uri(),  # file://: TorchServe copies it into its own (temporary) model store
                "model_name": name,
                "initial_workers": args.workers,
                "synchronous": "true",
            }
            return _show(http.post("/models", params=params))


def drain(http: httpx.Client, name: str, version: str, grace: float) -> None:
    """Wait until `version` gets no new work and has none queued, plus `grace` for the batch in its worker.

    TorchServe does not drain on scale-down or unregister: a job still queued for the version would never be
    answered, and the batch in a worker is failed.
    """
    default = http.get(f"/models/{name}").json()[0]["modelVersion"]
    if default == version:
        raise SystemExit(f"{name} {version} is the default version; set-default another version first")
    quiet = 0
    while quiet < 3:  # three empty looks in a row, 0.5 s apart
        status = http.get(f"/models/{name}/{version}").raise_for_status().json()[0]["jobQueueStatus"]
        quiet = quiet + 1 if status["pendingRequests"] == 0 else 0
        time.sleep(0.5)
    time.sleep(grace)


def _only_model(http: httpx.Client) -> str:
    models = http.get("/models").json().get("models", [])
    if len(models) != 1:
        raise SystemExit(f"TorchServe serves {[m['modelName'] for m in models]}; pass --name")
    return models[0]["modelName"]


def _show(r: httpx.Response) -> int:
    try:
        print(json.dumps(r.json(), indent=2))
    except ValueError:
        print(r.text)
    return 0 if r.is_success else 1


if __name__ == "__main__":
    try:
        sys.exit(main(get_args_parser().parse_args()))
    except httpx.ConnectError as e:
        sys.exit(f"cannot reach TorchServe's management API ({e}); is client_infer.py running? (--management)")
