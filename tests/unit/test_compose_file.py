"""docker/compose.yaml holds together: what it names exists, its settings are real settings,
its imaging-cloud commands parse. `docker compose config` runs too where the plugin exists
(it does not on every machine this suite runs on; the checks here do not need it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from imaging_cloud.settings import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_every_named_service_network_volume_and_secret_is_declared(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for other in depends:  # a list of names or a mapping keyed by them
            assert other in services, f"{name} depends on unknown service {other}"
        for network in service.get("networks", []):
            assert network in compose["networks"], f"{name}: unknown network {network}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: unknown secret {secret}"


def test_every_imaging_cloud_variable_is_a_setting(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    named = set()
    for service in _services(compose).values():
        environment = service.get("environment", {})
        if isinstance(environment, dict):
            named |= {k for k in environment if k.startswith("IMAGING_CLOUD_")}
    named.discard("IMAGING_CLOUD_LOG_LEVEL")  # read by the command line, not a setting
    named.discard("IMAGING_CLOUD_GATEWAY_CREDENTIAL")  # the gateway's own settings
    unknown = {k for k in named if k.removeprefix("IMAGING_CLOUD_").lower() not in fields}
    gateway_only = {k for k in unknown if "GATEWAY" in k or "SPOOL" in k or "CLOUD_URL" in k}
    assert unknown - gateway_only == set(), "typo'd or removed settings in compose.yaml"
    assert "IMAGING_CLOUD_JOB_QUEUE_URL" in named and "IMAGING_CLOUD_COLD_BLOB_URL" in named


def test_imaging_cloud_commands_in_the_file_exist(compose: dict[str, Any]) -> None:
    from imaging_cloud.cli import main

    for name, service in _services(compose).items():
        if not str(service.get("image", "")).startswith("imaging-cloud"):
            continue
        command = service.get("command") or []
        if service.get("entrypoint") or not command:
            continue
        with pytest.raises(SystemExit) as shown:  # --help: parsed, nothing run
            main([*command[:1], "--help"])
        assert shown.value.code == 0, f"service {name}: imaging-cloud {command[0]} is unknown"


def test_the_queue_is_persistent_and_the_cache_is_not(compose: dict[str, Any]) -> None:
    services = _services(compose)
    queue = " ".join(services["redis-queue"]["command"])
    cache = " ".join(services["redis"]["command"])
    assert re.search(r"--appendonly yes", queue) and "noeviction" in queue
    assert "allkeys-lru" in cache
    assert services["jobs"]["command"] == ["worker"]


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed",
)
def test_docker_compose_config_accepts_it() -> None:
    env_file = str(DOCKER / ".env.example")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", env_file, "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
