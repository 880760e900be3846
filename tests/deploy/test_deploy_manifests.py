"""deploy/k8s and deploy/kserve checked offline against each other and the repository they deploy.

Kubernetes manifests are validated against the Kubernetes JSON schemas bundled in kubernetes-validate (strict: an
unknown or misspelt field fails); the KServe InferenceServices (a CRD, no bundled schema) have their KServe fields
checked here and their pod parts validated as Pods. Ports, probes and TorchServe configs are checked against each
other, the project's config.properties and the image (deploy/Dockerfile).

    .venv/bin/python -m pytest tests/test_deploy_manifests.py     # about 2 s
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from export.archive import MODEL_CONFIG, build_mar
from serving.ts_config import read_properties

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S, KSERVE = DEPLOY / "k8s", DEPLOY / "kserve"
KSERVE_CONFIG = KSERVE / "config" / "config.properties"
# An older Kubernetes and the newest the package knows: a field that either one lacks fails.
KUBE_VERSIONS = ("1.29.0", "1.37.0")
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(path: Path, kind: str) -> dict:
    (found,) = [d for d in docs(path) if d["kind"] == kind]
    return found


def validate_k8s(doc: dict, version: str, where: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(
            f"{where}: {doc['kind']}/{doc['metadata']['name']} fails Kubernetes {version} at {path}: {e.message}"
        )


def host_port(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    return u.hostname, u.port


def port_number(container: dict, port: int | str) -> int:
    """A probe's or Service's port, resolved through the container's named ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return number


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def dockerfile_api_port() -> int:
    """The image's --service_port (its CMD), which EXPOSE and HEALTHCHECK use (tests/test_deploy_image.py)."""
    return int(re.search(r'"--service_port",\s*"(\d+)"', (DEPLOY / "Dockerfile").read_text()).group(1))


def deployment() -> dict:
    return one(K8S / "base" / "deployment.yaml", "Deployment")


def container(dep: dict) -> dict:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


# ---- Kubernetes manifests ----


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("path", [p for p in MANIFESTS if "kserve" not in p.parts], ids=lambda p: p.name)
def test_manifest_matches_kubernetes_schema(path: Path, version: str) -> None:
    assert docs(path), f"{path} holds no manifest"
    for doc in docs(path):
        validate_k8s(doc, version, str(path.relative_to(REPO)))


def test_kustomizations_name_existing_files_and_every_base_manifest() -> None:
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    listed = set(base["resources"])
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"base/kustomization.yaml lists {sorted(listed)}, the folder holds {sorted(on_disk)}"
    gpu = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    for res in gpu["resources"]:
        assert (K8S / "gpu" / res / "kustomization.yaml").is_file(), f"gpu overlay: no kustomization in {res}"


def json_patch(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 add/replace/test, as kustomize applies them; replacing a path that does not exist, or a test that
    does not hold, fails, as there."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        assert op["op"] in ("add", "replace", "test"), f"unsupported patch op {op['op']}"
        if op["op"] == "test":
            assert node[key] == op["value"], f"patch test {op['path']}: {node[key]!r}, not {op['value']!r}"
            continue
        if op["op"] == "replace":
            assert isinstance(node, list) or key in node, f"replace of a missing path {op['path']}"
        node[key] = op["value"]
    return doc


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_gpu_overlay_patches_apply_and_give_a_valid_gpu_pod(version: str) -> None:
    overlay = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    base = {d["kind"]: d for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml" for d in docs(p)}
    for patch in overlay["patches"]:
        kind = patch["target"]["kind"]
        assert base[kind]["metadata"]["name"] == patch["target"]["name"]
        base[kind] = json_patch(base[kind], yaml.safe_load(patch["patch"]))
        validate_k8s(base[kind], version, f"gpu overlay of {kind}")
    c = container(base["Deployment"])
    assert arg(c["args"], "--device") == "cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1", "one GPU per pod: client_infer.py sets number_of_gpu=1"


def test_probes_ask_health_on_the_api_port_of_image_and_service() -> None:
    c = container(deployment())
    api_port = int(arg(c["args"], "--service_port"))
    assert port_number(c, "http") == api_port == dockerfile_api_port()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health", f"{probe} asks {get['path']}"
        assert port_number(c, get["port"]) == api_port, f"{probe} asks port {get['port']}"
    # The startup window outlasts client_infer.py's own start timeout, so it reports TorchServe's log first.
    startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    start_timeout = {e["name"]: e.get("value") for e in c["env"]}["SIMSIAM_TS_START_TIMEOUT"]
    assert startup > float(start_timeout)
    service = one(K8S / "base" / "service.yaml", "Service")
    assert service["spec"]["selector"].items() <= deployment()["spec"]["template"]["metadata"]["labels"].items()
    (sp,) = service["spec"]["ports"]
    assert port_number(c, sp["targetPort"]) == api_port


def test_metrics_scrape_targets_torchserve_metrics_port() -> None:
    dep = deployment()
    c = container(dep)
    notes = dep["spec"]["template"]["metadata"]["annotations"]
    props = pod_config()
    host, port = host_port(props["metrics_address"])
    assert host == "0.0.0.0", "Prometheus reaches the pod IP, not the pod's loopback"
    assert int(notes["prometheus.io/port"]) == port == port_number(c, "metrics")
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
    assert props["metrics_mode"] == "prometheus"
    policy = one(K8S / "base" / "networkpolicy.yaml", "NetworkPolicy")
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert open_ports == {port_number(c, "http"), port}
    mount = {m["mountPath"]: m for m in c["volumeMounts"]}["/app/config.properties"]
    assert mount["subPath"] == "config.properties"
    scrape = yaml.safe_load(one(K8S / "prometheus-scrape.yaml", "ConfigMap")["data"]["prometheus.yml"])
    relabels = json.dumps(scrape["scrape_configs"][0]["relabel_configs"])
    for note in notes:
        label = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9]", "_", note)
        assert label in relabels, f"the scrape job ignores the pod's {note} annotation"


def pod_config() -> dict[str, str]:
    cm = one(K8S / "base" / "configmap.yaml", "ConfigMap")
    lines = cm["data"]["config.properties"].splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_pod_config_is_the_project_config_with_metrics_on_the_pod_ip() -> None:
    project, pod = read_properties(REPO / "config.properties"), pod_config()
    differ = {k for k in project.keys() | pod.keys() if project.get(k) != pod.get(k)}
    assert differ == {"metrics_address"}, (
        f"deploy/k8s/base/configmap.yaml differs from config.properties in {sorted(differ)}; regenerate it "
        "with the command in its header"
    )
    assert host_port(pod["metrics_address"])[1] == host_port(project["metrics_address"])[1]


def test_project_config_keeps_torchserve_on_loopback_off_the_api_port() -> None:
    props = read_properties(REPO / "config.properties")
    api_port = dockerfile_api_port()
    for key in ("inference_address", "management_address", "metrics_address"):
        host, port = host_port(props[key])
        assert host == "127.0.0.1" and port != api_port, f"{key}={props[key]}"
    for key in ("grpc_inference", "grpc_management"):
        assert props[f"{key}_address"] == "127.0.0.1" and int(props[f"{key}_port"]) != api_port


def resource_names(node) -> list[str]:
    """Every key of every requests/limits map in a manifest (the schema allows any key there)."""
    if isinstance(node, list):
        return [n for item in node for n in resource_names(item)]
    if not isinstance(node, dict):
        return []
    names = [k for key in ("requests", "limits") if isinstance(node.get(key), dict) for k in node[key]]
    return names + [n for v in node.values() for n in resource_names(v)]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_resource_names_are_ones_the_api_server_accepts(path: Path) -> None:
    for name in resource_names(docs(path)):
        assert name in {"cpu", "memory", "ephemeral-storage", "storage"} or "/" in name, f"{path.name}: {name}"


# ---- KServe ----


def kserve_config() -> dict[str, str]:
    props = read_properties(KSERVE_CONFIG)
    for line in KSERVE_CONFIG.read_text().splitlines():
        assert "#" not in line or line.lstrip().startswith("#"), f"a .properties value keeps a trailing # : {line}"
    return props


def snapshot_model() -> tuple[str, str, dict]:
    """(model name, version, its model_snapshot entry) of the one model the KServe config serves."""
    snapshot = json.loads(kserve_config()["model_snapshot"])
    assert snapshot["modelCount"] == len(snapshot["models"]) == 1
    ((name, versions),) = snapshot["models"].items()
    ((version, entry),) = versions.items()
    return name, version, entry


def test_kserve_config_binds_what_kserve_needs() -> None:
    props = kserve_config()
    # KServe's wrapper, in the same container, calls TorchServe on 8085: loopback is enough. Only the metrics port
    # leaves the pod's loopback, and the NetworkPolicy lets only Prometheus reach it.
    assert host_port(props["inference_address"]) == ("127.0.0.1", 8085)
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert host_port(props["metrics_address"])[0] == "0.0.0.0"
    assert props["allowed_urls"] == "^$", "models register from the model store only"
    assert host_port(props["management_address"])[0] == "127.0.0.1", "model control stays inside the pod"
    ports = {host_port(props[k])[1] for k in ("inference_address", "management_address", "metrics_address")}
    ports |= {int(props["grpc_inference_port"]), int(props["grpc_management_port"])}
    assert len(ports) == 5 and not ports & {8080, 8081}, "8080/8081 are KServe's wrapper's ports"
    assert props["enable_envvars_config"] == "true", "KServe sets the request envelope through TS_SERVICE_ENVELOPE"
    assert props["enable_metrics_api"] == "true" and props["metrics_mode"] == "prometheus"
    assert props["model_store"] == "/mnt/models/model-store"


def test_kserve_snapshot_serves_the_exported_mar_with_its_settings() -> None:
    name, version, entry = snapshot_model()
    assert entry["marName"] == f"{name}.mar" and entry["defaultVersion"] is True
    assert version == inspect.signature(build_mar).parameters["version"].default
    for key in ("minWorkers", "maxWorkers", "maxBatchDelay", "responseTimeout"):
        assert entry[key] == MODEL_CONFIG[key], f"model_snapshot {key}={entry[key]}, the .mar says {MODEL_CONFIG[key]}"
    assert entry["batchSize"] == 1, "TorchServe's KServe envelope answers only the first request of a batch"


# KServe v1beta1: fields of a component beside its pod spec, and of a model beside its container fields.
COMPONENT_KEYS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}
MODEL_KEYS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "runtimeVersion", "storage"}


def inference_services() -> list[tuple[Path, dict]]:
    found = [(p, d) for p in MANIFESTS if "kserve" in p.parts for d in docs(p) if d["kind"] == "InferenceService"]
    assert len(found) == 1
    return found


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_kserve_network_policy_opens_only_the_wrapper_and_the_metrics(version: str) -> None:
    (policy,) = docs(KSERVE / "networkpolicy.yaml")
    validate_k8s(policy, version, "networkpolicy.yaml")
    [(_, isvc)] = inference_services()
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]
    }
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {8080, host_port(kserve_config()["metrics_address"])[1]}, ports
    assert all(rule.get("from") for rule in policy["spec"]["ingress"]), "every port is open to named namespaces only"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_inference_services_are_well_formed(version: str) -> None:
    for path, isvc in inference_services():
        where = path.name
        assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService"), where
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,43}[a-z0-9])?", isvc["metadata"]["name"]), where
        assert set(isvc["spec"]) <= {"predictor", "transformer", "explainer"}, where
        predictor = isvc["spec"]["predictor"]
        assert ("model" in predictor) != ("containers" in predictor), f"{where}: a model or containers, not both"
        pod = {k: v for k, v in predictor.items() if k not in COMPONENT_KEYS | {"model"}}
        if "model" in predictor:
            model = predictor["model"]
            assert model["modelFormat"]["name"] == "pytorch", "the TorchServe runtime serves modelFormat pytorch"
            assert model.get("protocolVersion", "v1") in {"v1", "v2", "grpc-v2"}
            assert model["storageUri"].startswith(("pvc://", "s3://", "gs://", "https://")), where
            pod["containers"] = [{"name": "kserve-container"} | {k: v for k, v in model.items() if k not in MODEL_KEYS}]
        # Everything else is a pod spec: validate it as a Pod, so a misspelt field fails here too.
        validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "isvc"}, "spec": pod}, version, where)
        notes = isvc["metadata"]["annotations"]
        assert int(notes["prometheus.io/port"]) == host_port(kserve_config()["metrics_address"])[1], where


def test_inference_services_serve_the_configured_model() -> None:
    name, _, _ = snapshot_model()
    for path, isvc in inference_services():
        predictor = isvc["spec"]["predictor"]
        if "model" in predictor:
            assert predictor["model"]["storageUri"].rstrip("/").endswith(name), path.name
            continue
        raise AssertionError(f"{path.name}: the InferenceService serves a model folder's .mar (storageUri)")


def test_the_kustomization_parameters_reach_the_pod() -> None:
    """The image, the model and the namespace are set in kustomization.yaml only: the Deployment reads the model
    from the generated ConfigMap (names it, and its keys), the image is the one `images` rewrites, and the
    Namespace resource is the kustomization's namespace."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (namespace,) = docs(K8S / "base" / "namespace.yaml")
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == kustomization["namespace"]
    (generated,) = kustomization["configMapGenerator"]
    literals = dict(item.split("=", 1) for item in generated["literals"])
    assert set(literals) == {"model_id", "used_model"}
    (deployment,) = docs(K8S / "base" / "deployment.yaml")
    c = container(deployment)
    assert c["image"].split(":")[0] == kustomization["images"][0]["name"]
    env = {e["name"]: e["valueFrom"]["configMapKeyRef"] for e in c["env"] if "valueFrom" in e}
    refs = {ref["key"]: name for name, ref in env.items() if ref["name"] == generated["name"]}
    assert set(refs) == set(literals)
    assert arg(c["args"], "--model_path") == f"/models/$({refs['model_id']})"
    assert arg(c["args"], "--used_model") == f"$({refs['used_model']})"
