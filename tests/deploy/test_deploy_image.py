"""deploy/Dockerfile and .dockerignore against the repository: what the image copies, installs, runs and exposes.

docker build cannot run here, so this checks what a build would find: the files it copies exist and are not left out
of the build context, the requirements cut keeps the serving packages, and the image agrees with deploy/k8s.

    .venv/bin/python -m pytest tests/test_deploy_image.py
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
# The files the service runs from: the image must hold them.
RUNTIME_FILES = [
    "client_infer.py",
    "config.properties",
    "requirements.txt",
    "serving/nginx.py",
    "serving/nginx.conf.template",
    "serving/torchserve.conf.template",
    "serving/openapi.json",
    "handler/api.py",
    "handler/classifier.py",
    "serving/torchserve_process.py",
    "handler/simsiam_handler.py",
    "handler/eval_preset.py",
    "export/model_folder.py",
    "jobs/device.py",
    "export/archive.py",
]


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def deployment_pod() -> dict:
    (dep,) = [d for d in yaml.safe_load_all((REPO / "deploy/k8s/base/deployment.yaml").read_text()) if d]
    return dep["spec"]["template"]["spec"]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in joined.splitlines() if ln.strip()]


def instruction(name: str) -> list[str]:
    return [args for ins, args in dockerfile() if ins == name]


def dockerfile_api_port() -> int:
    (cmd,) = instruction("CMD")
    return int(arg(json.loads(cmd), "--service_port"))


def test_dockerfile_copies_existing_files_and_runs_the_service() -> None:
    assert instruction("FROM")[0].startswith("python:3.11-slim")
    for args in instruction("COPY"):
        *sources, _ = [t for t in shlex.split(args) if not t.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"
    (entry,) = instruction("ENTRYPOINT")
    assert "client_infer.py" in json.loads(entry) and (REPO / "client_infer.py").is_file()
    (expose,) = instruction("EXPOSE")
    assert int(expose) == dockerfile_api_port()
    (health,) = instruction("HEALTHCHECK")
    assert f"http://127.0.0.1:{dockerfile_api_port()}/health" in health
    (user,) = instruction("USER")
    assert int(user.split(":")[0]) == deployment_pod()["securityContext"]["runAsUser"]
    cmd = json.loads(instruction("CMD")[0])
    (container,) = deployment_pod()["containers"]
    # The Deployment's model comes from kustomization.yaml's simsiam-model literals, through env references.
    kustomization = yaml.safe_load((REPO / "deploy" / "k8s" / "base" / "kustomization.yaml").read_text())
    literals = dict(item.split("=", 1) for item in kustomization["configMapGenerator"][0]["literals"])
    env = {e["name"]: literals[e["valueFrom"]["configMapKeyRef"]["key"]] for e in container["env"] if "valueFrom" in e}
    dep_args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    for flag in ("--model_path", "--used_model"):
        assert arg(cmd, flag) == arg(dep_args, flag), f"image and Deployment disagree on {flag}"


def test_image_installs_the_serving_requirements_only() -> None:
    (run,) = [r for r in instruction("RUN") if "requirements" in r]
    marker = re.search(r"sed '/\^(.+?)/,\$d'", run).group(1)
    text = (REPO / "requirements.txt").read_text()
    assert marker + "\n" in text, f"requirements.txt lost the line {marker!r} that the image cuts at"
    serving, rest = text.split(marker, 1)
    for package in ("torch==", "torchserve==", "psutil==", "requests==", "pillow=="):
        assert package in serving, f"{package} is cut out of the image"
    assert "kubernetes-validate==" in rest and "pytest==" in rest


def dockerignored(path: str) -> bool:
    """Docker's rule: a path is left out if it or a parent folder matches a pattern (the last match wins)."""
    out = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        keep = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!").strip("/"))
        regex = regex.replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            out = not keep
    return out


def test_dockerignore_keeps_models_and_environments_out_and_the_code_in() -> None:
    for path in (".venv/bin/python", "runs/x.json", ".git/HEAD", "model.pt", "a/b/x.mar", "a/b/m.pt", "a/last.ckpt"):
        assert dockerignored(path), f"{path} would be sent to the Docker build"
    for path in RUNTIME_FILES:
        assert (REPO / path).is_file(), path
        assert not dockerignored(path), f".dockerignore leaves {path} out of the image"


def test_image_installs_the_front_door_and_java() -> None:
    """client_infer.py starts nginx (the public port) and TorchServe (Java 17): both come from Debian's packages."""
    (run,) = [r for r in instruction("RUN") if "apt-get install" in r]
    assert "nginx-light" in run and "openjdk-17-jre-headless" in run
