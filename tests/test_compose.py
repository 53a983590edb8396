"""docker-compose.yml stays valid and its commands match the CLI flags (no Docker engine needed)."""
from __future__ import annotations

from pathlib import Path

import yaml

from gateway import service as gateway_service
from workers import service as worker_service

REPO = Path(__file__).resolve().parents[1]


def test_compose_services_and_commands_parse():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "redis", "gateway", "worker"}
    assert "container_name" not in services["worker"]  # --scale worker=N needs unnamed containers
    cmd = services["worker"]["command"]
    assert cmd[0] == "worker"
    settings = worker_service.parse_args(cmd[1:])
    assert settings.redis.host == "redis" and len(settings.bundles) == 2
    gw = services["gateway"]["command"]
    assert gw[0] == "gateway" and "--broker" in gw and "--redis" in gw
    conf = services["mosquitto"]["volumes"][0].split(":")[0]
    assert (REPO / conf).is_file()
    assert hasattr(gateway_service, "main")
