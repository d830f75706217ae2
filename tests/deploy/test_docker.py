"""Check the Dockerfiles and the compose file without a Docker daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qa_common.process import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
SERVICE_DOCKERFILES = sorted(ROOT.glob("*/Dockerfile"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is installed by requirements-test.txt"
    return path


@pytest.fixture(scope="module")
def compose_config() -> dict:
    result = subprocess.run(
        [
            _tool("docker-compose"),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


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
            assert condition["condition"] == "service_healthy", f"{name} waits for {dependency}"


def test_compose_publishes_only_on_localhost(compose_config: dict) -> None:
    for name, svc in compose_config["services"].items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1" or name == "gateway", (name, port)
