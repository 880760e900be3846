"""The serving pieces without a server (so no `serving` mark): TorchServe's run config, the serving plan, the front
door's nginx config (rendered and checked by nginx itself), and `serving.manage`'s argument checks."""

from __future__ import annotations

import argparse
import re
import subprocess

import pytest

from handler.api import MAX_BODY
from serving.nginx import FrontDoor, Nginx, nginx_binary, render
from serving.ts_config import port_is_free, read_properties, write_run_config


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


def test_project_config_is_loopback_only_and_locked():
    from serving.ts_config import DEFAULT_CONFIG

    props = read_properties(DEFAULT_CONFIG)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:") and not props[key].endswith(":8080"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert "disable_token_authorization" not in props  # TorchServe's token authorization stays on
    assert props["allowed_urls"] == "^$"  # no URL: registration by a file name in the run's own model store
    assert props["enable_model_api"] == "true" and props["enable_envvars_config"] == "false"
    assert props["metrics_mode"] == "prometheus" and int(props["max_request_size"]) >= MAX_BODY


def test_front_door_config_is_valid_nginx_with_every_value_filled(tmp_path):
    """Both states (loading, ready) render completely and nginx itself accepts them (`nginx -t`)."""
    door = Nginx(tmp_path, "127.0.0.1", 18999, "SimSiam_a b/c")
    for loading in (True, False):
        conf = door.write_config(loading, torchserve="127.0.0.1:8085", inference_key="k3y")
        text = conf.read_text() + (conf.parent / "torchserve.conf").read_text()
        assert "{{" not in text and f"default {int(loading)};" in text
        assert "/predictions/SimSiam_a%20b%2Fc;" in text  # the model name escaped in the URL
        assert oct(conf.stat().st_mode & 0o777) == "0o600"  # the hop holds TorchServe's inference key
        check = subprocess.run([nginx_binary(), "-p", str(conf.parent), "-c", "nginx.conf", "-t"], capture_output=True)
        assert check.returncode == 0, check.stderr.decode()


def test_front_door_limits_are_the_handlers_and_below_torchserves_heap():
    limits = FrontDoor()
    assert limits.max_body == MAX_BODY
    from serving.ts_config import DEFAULT_CONFIG

    heap = re.search(r"-Xmx(\d+)g", read_properties(DEFAULT_CONFIG)["vmargs"])
    in_flight = limits.small_conns * 10**6 + limits.large_conns * limits.max_body
    assert in_flight < int(heap[1]) * 2**30 // 2, "bytes in flight to TorchServe must stay well below its heap"


def test_render_names_a_missing_value(tmp_path):
    template = tmp_path / "t.conf"
    template.write_text("listen {{listen}}; {{other}}")
    with pytest.raises(KeyError, match="other"):
        render(template, {"listen": 1})


@pytest.mark.parametrize("value", ["../SimSiam_x", "1.0/../2.0", "a b", "", "..", "x" * 200, "v%2F1"])
def test_manage_refuses_names_and_versions_that_are_not_names(value):
    from serving.manage import checked, get_args_parser

    with pytest.raises(argparse.ArgumentTypeError, match="letters, digits"):
        checked(value, "version")
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["retire", value])


def test_manage_accepts_usual_versions():
    from serving.manage import get_args_parser

    assert get_args_parser().parse_args(["set-default", "2.0"]).version == "2.0"
    assert get_args_parser().parse_args(["--name", "SimSiam_my-trial", "list"]).name == "SimSiam_my-trial"
