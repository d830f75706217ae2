"""Check the Dockerfiles and the compose file without a Docker daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from qa_common.process import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
SERVICE_DOCKERFILES = sorted(ROOT.glob("*/Dockerfile"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is installed by requirements-test.txt"
    return path


def _compose(*files: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = [_tool("docker-compose")]
    for name in files:
        args += ["-f", str(ROOT / name)]
    clean_env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**clean_env, **(env or {})},
    )


SECRETS = ("ADMIN_API_KEY", "INTERNAL_API_KEY")
KEYS = {"ADMIN_API_KEY": "test-key", "INTERNAL_API_KEY": "internal-key"}


@pytest.fixture(scope="module")
def compose_config() -> dict:
    result = _compose("docker-compose.yml", env=KEYS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_fails_fast_without_secrets() -> None:
    result = _compose("docker-compose.yml")
    assert result.returncode != 0
    assert "ADMIN_API_KEY" in result.stderr


def test_no_secret_has_a_default() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in SECRETS:
        assert re.search(rf"\$\{{{secret}:\?", text), f"{secret} must be required with ${{VAR:?}}"
    example = (ROOT / ".env.example").read_text()
    for secret in SECRETS:
        assert re.search(rf"^{secret}=$", example, re.MULTILINE), (
            f"{secret} is empty in .env.example"
        )


def test_gpu_override_reserves_a_gpu_for_the_generator() -> None:
    result = _compose("docker-compose.yml", "docker-compose.gpu.yml", env=KEYS)
    assert result.returncode == 0, result.stderr
    generator = json.loads(result.stdout)["services"]["generator"]
    devices = generator["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)


def test_there_is_a_dockerfile_per_built_service(compose_config: dict) -> None:
    built = {
        name: svc["build"]["dockerfile"]
        for name, svc in compose_config["services"].items()
        if "build" in svc
    }
    assert built, "compose builds the project's images"
    for dockerfile in built.values():
        assert (ROOT / dockerfile).is_file()


@pytest.mark.parametrize("dockerfile", SERVICE_DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [_tool("hadolint"), str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", SERVICE_DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_runs_what_the_tests_run(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    package = dockerfile.parent.name
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    tested = ServiceProcess(package).command()
    # The tests run `python -m gunicorn -c <package>/gunicorn.conf.py --bind ... <app factory>`.
    assert cmd[0] == "gunicorn"
    assert cmd[cmd.index("-c") + 1] == f"{package}/gunicorn.conf.py"
    assert tested[tested.index("-c") + 1].endswith(f"{package}/gunicorn.conf.py")
    assert cmd[-1] == tested[-1] == f"{package}.app:create_app()"
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE), "runs as a non-root user"
    assert "HEALTHCHECK" in text
    # Dependencies are installed before the code is copied, so code changes reuse that layer.
    assert text.index("pip install") < text.index(f"COPY {package}/ ")


def test_compose_services_have_healthchecks(compose_config: dict) -> None:
    for name, svc in compose_config["services"].items():
        if "tools" in svc.get("profiles", []):
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has a healthcheck"
        for dependency, condition in svc.get("depends_on", {}).items():
            if (name, dependency) == ("gateway", "generator"):
                # The gateway answers extractively while the generator downloads its model.
                assert condition["condition"] == "service_started"
            else:
                assert condition["condition"] == "service_healthy", f"{name} waits for {dependency}"


def test_only_the_gateway_is_published(compose_config: dict) -> None:
    published = {name for name, svc in compose_config["services"].items() if svc.get("ports")}
    assert published == {"gateway"}


@pytest.mark.parametrize("service", ["retriever", "generator"])
def test_scaled_services_can_scale(compose_config: dict, service: str) -> None:
    svc = compose_config["services"][service]
    assert "container_name" not in svc
    assert not svc.get("ports")


def test_state_and_models_live_on_named_volumes(compose_config: dict) -> None:
    assert {"chroma-data", "hf-cache"} <= set(compose_config["volumes"])
    services = compose_config["services"]
    assert any(v["source"] == "chroma-data" for v in services["chroma"]["volumes"])
    for name in ("retriever", "generator"):
        assert any(v["source"] == "hf-cache" for v in services[name]["volumes"])


def test_every_service_that_talks_to_another_shares_the_internal_key(
    compose_config: dict,
) -> None:
    for name in ("gateway", "retriever", "generator"):
        environment = compose_config["services"][name].get("environment", {})
        assert environment.get("INTERNAL_API_KEY") == "internal-key", name
    # The ingest tool sits in a profile (not in the default config): read the file itself.
    ingest = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["ingest"]
    assert ingest["environment"]["INTERNAL_API_KEY"].startswith("${INTERNAL_API_KEY:?")
    # `docker compose run --rm ingest` works before `up` has built anything.
    assert ingest["build"]["dockerfile"] == "retriever_service/Dockerfile"


def test_chroma_shares_a_network_with_the_retriever_only(compose_config: dict) -> None:
    services = compose_config["services"]
    networks = compose_config["networks"]
    member = {name: set(spec.get("networks", {})) for name, spec in services.items()}
    [store] = member["chroma"]
    assert networks[store].get("internal") is True
    assert {name for name, nets in member.items() if store in nets} == {"chroma", "retriever"}
    # The retriever and the generator are reached from the gateway, on a network with no way
    # out; only the gateway is on the network whose port is published.
    inner = member["gateway"] & member["retriever"] & member["generator"]
    assert inner
    assert all(networks[n].get("internal") is True for n in inner)
    published = {n for name, spec in services.items() if spec.get("ports") for n in member[name]}
    assert {name for name, nets in member.items() if nets & (published - inner)} == {"gateway"}
