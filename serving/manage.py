"""Model versions and workers through TorchServe's management API (loopback only; README.md, "Serving").

    python -m serving.manage list
    python -m serving.manage describe [--version all]
    python -m serving.manage scale --min 2 --max 2 [--version 1.0]
    python -m serving.manage register-version --model_path runs/models/<uuid4> --version 2.0
    python -m serving.manage set-default 2.0
    python -m serving.manage retire 1.0        # drain its queue, then unregister it

--name defaults to the one model TorchServe serves; --management to the running client_infer.py's (found through
its run folder, readable only by the user who started it, which also holds TorchServe's management key), else to
config.properties' management_address. Names and versions are checked before any call: letters, digits, '_',
'-' and '.' only, as TorchServe's own model names.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import requests

from serving.torchserve_process import bearer, read_keys
from serving.ts_config import DEFAULT_CONFIG, read_properties

MAR_INPUTS = ("model.pt", "index_to_name.json", "preprocess.json")  # what export.archive.build_mar packs


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def checked(value: str, what: str) -> str:
    """A model name or version as TorchServe names them: no '/', no '..', nothing a URL would read another way."""
    if not NAME.match(value) or ".." in value:
        raise argparse.ArgumentTypeError(
            f"{what} {value!r} is not a valid {what}: use letters, digits, '_', '-' and '.' (e.g. 2.0)"
        )
    return value


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--management", default=None, help="management API URL (default: the running service's)")
    p.add_argument(
        "--name", default=None, type=lambda v: checked(v, "name"), help="model name (default: the only model served)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="models served")
    d = sub.add_parser("describe", help="versions, workers, batching, queue")
    d.add_argument(
        "--version", default=None, type=version_arg, help="a version, or 'all' (default: the default version)"
    )
    s = sub.add_parser("scale", help="set the number of workers of a version")
    s.add_argument("--min", type=int, required=True, help="min workers")
    s.add_argument("--max", type=int, default=None, help="max workers (default: = --min)")
    s.add_argument("--version", default=None, type=version_arg, help="version (default: the default version)")
    r = sub.add_parser("register-version", help="serve another trained model folder as a new version of --name")
    r.add_argument("--model_path", required=True, help="model folder from client_train.py")
    r.add_argument("--version", required=True, type=version_arg, help="new version, e.g. 2.0")
    r.add_argument("--workers", type=int, default=1, help="initial workers (default: %(default)s)")
    sd = sub.add_parser("set-default", help="route unversioned predictions (the proxy's) to this version")
    sd.add_argument("version", type=version_arg)
    u = sub.add_parser("retire", help="wait until a (non-default) version's queue is empty, then unregister it")
    u.add_argument("version", type=version_arg)
    u.add_argument("--grace", type=float, default=5.0, help="seconds for its last batch to finish (default: 5)")
    return p


def version_arg(value: str) -> str:
    return checked(value, "version")


def find_service(management: str | None) -> dict:
    """The running client_infer.py's service.json (its management URL, model store and key file): the one whose
    management URL is `management`, or the only one running."""
    found = []
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "simsiam-serve-*", "service.json")):
        try:
            info = json.loads(Path(path).read_text())
            os.kill(int(info["pid"]), 0)  # a service that has stopped leaves nothing behind; a crashed one might
        except (OSError, ValueError, KeyError):
            continue
        found.append(info)
    if management:
        found = [i for i in found if i["management"].rstrip("/") == management.rstrip("/")]
    if len(found) == 1:
        return found[0]
    if not found:
        url = management or read_properties(DEFAULT_CONFIG)["management_address"]
        raise SystemExit(f"no running client_infer.py of this user serves {url}; start one, or pass --management")
    urls = ", ".join(i["management"] for i in found)
    raise SystemExit(f"several services run ({urls}); pass --management with one of them")


class Management:
    """TorchServe's management API with the service's key (token authorization is on)."""

    def __init__(self, service: dict) -> None:
        self.url = service["management"].rstrip("/")
        self.service = service
        self.http = requests.Session()
        self.http.headers.update(bearer(read_keys(Path(service["key_file"]))["management"]))

    def call(self, method: str, *parts: str, **params) -> requests.Response:
        path = "/".join(quote(p, safe="") for p in parts)  # names go into the URL escaped, never as paths
        return self.http.request(method, f"{self.url}/{path}", params=params or None, timeout=600)


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
    api = Management(find_service(args.management))
    if args.command == "list":
        return _show(api.call("GET", "models"))
    name = args.name or _only_model(api)
    version = [args.version] if getattr(args, "version", None) else []
    if args.command == "describe":
        return _show(api.call("GET", "models", name, *version))
    if args.command == "scale":
        top = args.min if args.max is None else args.max
        return _show(api.call("PUT", "models", name, *version, min_worker=args.min, max_worker=top, synchronous="true"))
    if args.command == "set-default":
        return _show(api.call("PUT", "models", name, args.version, "set-default"))
    if args.command == "retire":
        drain(api, name, args.version, args.grace)
        return _show(api.call("DELETE", "models", name, args.version))
    # register-version: the .mar goes into the service's own model store, the one place TorchServe registers from
    store = Path(api.service["store"])
    with tempfile.TemporaryDirectory(prefix="simsiam-version-") as staging:
        mar = build_version_mar(Path(args.model_path).resolve(), name, args.version, Path(staging))
        if (store / mar.name).exists():
            raise SystemExit(f"{name} {args.version} is registered already; choose another --version")
        shutil.move(mar, store / mar.name)
    r = api.call("POST", "models", url=mar.name, model_name=name, initial_workers=args.workers, synchronous="true")
    if not r.ok:
        (store / mar.name).unlink(missing_ok=True)
    return _show(r)


def drain(api: Management, name: str, version: str, grace: float) -> None:
    """Wait until `version` gets no new work and has none queued, plus `grace` for the batch in its worker.

    TorchServe does not drain on scale-down or unregister: a job still queued for the version would never be
    answered, and the batch in a worker is failed.
    """
    default = api.call("GET", "models", name).json()[0]["modelVersion"]
    if default == version:
        raise SystemExit(f"{name} {version} is the default version; set-default another version first")
    quiet = 0
    while quiet < 3:  # three empty looks in a row, 0.5 s apart
        r = api.call("GET", "models", name, version)
        r.raise_for_status()
        status = r.json()[0]["jobQueueStatus"]
        quiet = quiet + 1 if status["pendingRequests"] == 0 else 0
        time.sleep(0.5)
    time.sleep(grace)


def _only_model(api: Management) -> str:
    models = api.call("GET", "models").json().get("models", [])
    if len(models) != 1:
        raise SystemExit(f"TorchServe serves {[m['modelName'] for m in models]}; pass --name")
    return models[0]["modelName"]


def _show(r: requests.Response) -> int:
    try:
        print(json.dumps(r.json(), indent=2))
    except ValueError:
        print(r.text)
    return 0 if r.ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main(get_args_parser().parse_args()))
    except requests.ConnectionError as e:
        sys.exit(f"cannot reach TorchServe's management API ({e}); is client_infer.py running? (--management)")
