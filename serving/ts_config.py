"""The TorchServe config a run uses: the project's config.properties with this run's ports, model store and GPUs."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "config.properties"
# address keys holding a URL (http://host:port) and gRPC keys holding a bare port
URL_KEYS = ("inference_address", "management_address", "metrics_address")
PORT_KEYS = ("grpc_inference_port", "grpc_management_port")


@dataclass(frozen=True)
class TorchServeConfig:
    path: Path  # the generated file handed to torchserve --ts-config
    props: dict[str, str]

    @property
    def inference_url(self) -> str:
        return self.props["inference_address"]

    @property
    def management_url(self) -> str:
        return self.props["management_address"]

    @property
    def metrics_url(self) -> str:
        return self.props["metrics_address"]


def read_properties(path: Path) -> dict[str, str]:
    """Java .properties as TorchServe reads them: key=value lines, '#' comments."""
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_run_config(
    run_dir: Path,
    model_store: Path,
    num_gpus: int,
    always_free_ports: bool = False,
    source: Path = DEFAULT_CONFIG,
    reserved: frozenset[int] = frozenset(),
    model: tuple[str, str] | None = None,
) -> TorchServeConfig:
    """Write `run_dir/config.properties` from `source`; a taken port (or every port, if asked) becomes a free one.

    `reserved`: ports TorchServe must leave alone although they are free now (the proxy's, bound after it starts).
    `model`: (name, .mar file in the store) registered at start.
    """
    props = read_properties(source)
    taken: set[int] = set(reserved)

    def pick(host: str, port: int) -> int:
        if always_free_ports or port in taken or not port_is_free(host, port):
            new = free_port(host)
            while new in taken:
                new = free_port(host)
            if not always_free_ports:
                log.warning("port %s:%d is taken; TorchServe uses %d instead", host, port, new)
            port = new
        taken.add(port)
        return port

    for key in URL_KEYS:
        url = urlsplit(props[key])
        host = url.hostname or "127.0.0.1"
        props[key] = f"{url.scheme}://{host}:{pick(host, url.port or 80)}"
    for key in PORT_KEYS:
        host = props.get(key.replace("_port", "_address"), "127.0.0.1")
        props[key] = str(pick(host, int(props[key])))
    props["model_store"] = str(model_store)
    props["number_of_gpu"] = str(num_gpus)
    if model is not None:
        props["load_models"] = f"{model[0]}={model[1]}"
    path = run_dir / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return TorchServeConfig(path, props)
