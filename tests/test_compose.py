"""docker-compose.yml: valid against the Compose Specification's JSON schema, hardened as its comments say,
and run service by service as local processes (tests/compose_processes.py) until results flow.

The schema is the Compose Specification's own ``compose-spec.json`` (Apache-2.0, compose-spec/compose-spec)
as the check-jsonschema package vendors it (a test dependency): no download at test time.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
import urllib.request
from importlib import resources
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest
import yaml

from broker.compose_secrets import make_secrets
from models.bundle import make_untrained_bundle
from models.signing import ENV_BUNDLE_KEY
from tests.compose_processes import REPO, LocalCompose, dockerfile_stages, interpolate, start_order
from tests.gateway_fixtures import image_frame
from tests.metrics_names import parse, problems
from workers import config as worker_config

COMPOSE_FILE = REPO / "docker-compose.yml"
LONG_RUNNING = {"mosquitto", "gateway", "redis", "worker"}
ONE_SHOTS = {"home-bundles", "cloud-bundles"}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _validator():
    from check_jsonschema.builtin_schemas import vendor

    schema = json.loads((resources.files(vendor) / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_the_compose_file_is_valid_against_the_compose_specification():
    validator = _validator()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []
    bad = copy.deepcopy(_compose())  # the schema refuses what compose would refuse
    bad["services"]["gateway"]["helthcheck"] = bad["services"]["gateway"].pop("healthcheck")
    bad["services"]["redis"]["restart"] = ["always"]
    assert len(list(validator.iter_errors(bad))) == 2


def test_profiles_healthchecks_restarts_secrets_and_no_open_listener():
    compose = _compose()
    services = compose["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOTS
    assert {n for n, s in services.items() if "home" in s["profiles"]} == {"home-bundles", "mosquitto", "gateway"}
    assert {n for n, s in services.items() if "cloud" in s["profiles"]} == {"cloud-bundles", "redis", "worker"}
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped" and services[name]["healthcheck"]["test"], name
    for name in ONE_SHOTS:
        assert services[name]["restart"] == "no"
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]  # --scale worker=N
    # Published ports bind to loopback unless a variable says otherwise; no password in the environment.
    for name, svc in services.items():
        for port in svc.get("ports", ()):
            assert interpolate(port, {}).startswith("127.0.0.1:"), (name, port)
        for key, value in (svc.get("environment") or {}).items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), (name, key)
    # Every secret is a file under ./secrets, and each service mounts only what it logs in with.
    assert all(s["file"].startswith("./secrets/") for s in compose["secrets"].values())
    assert set(services["gateway"]["secrets"]) == {"gateway_mqtt_password", "gateway_redis_password"}
    assert set(services["worker"]["secrets"]) == {"worker_redis_password"}
    # The hardened broker: no anonymous client, an ACL, a password file, one listener on its own address.
    conf = (REPO / "deploy" / "mosquitto.conf").read_text().splitlines()
    assert "allow_anonymous false" in conf and any(ln.startswith("acl_file ") for ln in conf)
    assert any(ln.startswith("password_file ") for ln in conf)
    assert [ln for ln in conf if ln.startswith("listener ")] == ["listener 1883 mosquitto"]
    # The worker's settings file is one a worker accepts (the password file aside, which only a container has).
    settings = yaml.safe_load((REPO / "deploy" / "worker.yaml").read_text())
    settings.pop("redis_password_file")
    assert worker_config.load_settings(settings, env={}).health_port == settings["health_port"]


def test_the_images_run_privedge_as_an_unprivileged_user_with_cpu_only_torch():
    stages = dockerfile_stages(REPO / "Dockerfile")
    assert stages["gateway"]["entrypoint"] == stages["full"]["entrypoint"] == ["privedge"]
    text = (REPO / "Dockerfile").read_text()
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users[-1] == "privedge" and users.count("privedge") == 2
    assert "whl/cpu torch==" in text  # the worker image's torch without CUDA libraries
    builds = {s["build"]["target"] for s in _compose()["services"].values() if "build" in s}
    assert builds == set(stages)


def test_dependency_order_puts_each_service_after_what_it_waits_for():
    services = _compose()["services"]
    order = start_order(services)
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert order.index(dep) < order.index(name)
            assert cond["condition"] == ("service_completed_successfully" if dep in ONE_SHOTS else "service_healthy")


def test_compose_secrets_keep_their_passwords_store_hashes_and_hide_the_folder(tmp_path):
    folder = tmp_path / "secrets"
    files = make_secrets(folder, gateway="home", devices=("cam1",))
    assert set(files) >= {s["file"].removeprefix("./secrets/") for s in _compose()["secrets"].values()}
    assert oct(folder.stat().st_mode & 0o777) == "0o700"  # the host's other users stay out
    assert {oct(f.stat().st_mode & 0o777) for f in files.values()} == {"0o644"}  # each container's user reads
    passwords = {n: f.read_text().strip() for n, f in files.items() if n.endswith("_password")}
    for hashed in ("redis_acl", "mosquitto_passwd"):
        text = files[hashed].read_text()
        assert not [n for n, pw in passwords.items() if pw in text], hashed
    assert "user default off" in files["redis_acl"].read_text()
    again = make_secrets(folder, gateway="home", devices=("cam1", "mic1"))  # a device added later
    assert {n: again[n].read_text().strip() for n in passwords} == passwords
    assert "device_mic1_password" in again and "mic1:" in again["mosquitto_passwd"].read_text()


# --- the whole file as local processes ----------------------------------------------------------------

@pytest.fixture
def project(tmp_path) -> Path:
    """A compose project folder as an operator lays it out: the provider's signed bundles and public key,
    the secrets (broker.compose_secrets, with one camera enrolled), and the repository's deploy/."""
    root = tmp_path / "project"
    for modality in ("image", "speech"):
        make_untrained_bundle(root / "bundles" / modality, modality)  # signed with the session's provider key
    (root / "keys").mkdir()
    shutil.copy(os.environ[ENV_BUNDLE_KEY], root / "keys" / "provider.key.pub")
    make_secrets(root / "secrets", gateway="home", devices=("cam1",))
    (root / "deploy").symlink_to(REPO / "deploy")
    return root


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_the_compose_file_run_as_processes_serves_results(project, tmp_path):
    local = LocalCompose(COMPOSE_FILE, project, tmp_path / "run", ("home", "cloud"), scale={"worker": 2})
    t0 = time.monotonic()
    try:
        local.up()
        started_s = time.monotonic() - t0
        # The home volume holds no analyzer file; the cloud's does.
        assert not list((tmp_path / "run" / "volumes" / "home-bundles").rglob("analyzer.*"))
        assert list((tmp_path / "run" / "volumes" / "cloud-bundles").rglob("analyzer.onnx"))
        # A camera enrolled by compose_secrets publishes frames and reads its own results.
        results = _camera_round_trip(local.port("mosquitto", 1883), (project / "secrets" / "device_cam1_password")
                                     .read_text().strip(), frames=4)
        assert sorted(r["seq"] for r in results) == [0, 1, 2, 3], results
        assert all(r["task"] == "glasses" and r["gateway"] == "home" for r in results)
        # Anonymous clients and wrong passwords are refused by the broker as the file runs it.
        refused = (_connack(local.port("mosquitto", 1883)), _connack(local.port("mosquitto", 1883), "cam1", "guess"))
        assert refused == ("Not authorized", "Not authorized"), refused
        # The gateway's metrics: parsed, conventional names, and the four results in its latency histogram.
        text = urllib.request.urlopen(f"http://127.0.0.1:{local.port('gateway', 9100)}/metrics", timeout=5).read().decode()
        assert problems(text) == []
        count = [s.value for s in parse(text)["privedge_gateway_result_latency_seconds"].samples
                 if s.name.endswith("_count") and s.labels["task"] == "glasses"]
        assert count == [4.0]
        print(f"\n[compose as processes] all services healthy in {started_s:.1f} s; "
              f"4 results in {time.monotonic() - t0 - started_s:.1f} s")
    finally:
        local.down()


def _connack(port: int, username: str | None = None, password: str | None = None) -> str:
    """The broker's CONNACK reason to a client with these credentials (none: anonymous)."""
    answer: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe", protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = lambda c, u, flags, reason, props: answer.append(str(reason))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        deadline = time.monotonic() + 5
        while not answer and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    return answer[0] if answer else "no answer"


def _camera_round_trip(port: int, password: str, frames: int, timeout_s: float = 60.0) -> list[dict]:
    """Publish ``frames`` camera frames as device cam1 and collect its results."""
    got: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam1")
    client.username_pw_set("cam1", password)
    client.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe("privedge/cam1/result", qos=1)
    client.loop_start()
    try:
        time.sleep(0.3)
        for seq in range(frames):
            client.publish("privedge/cam1/image", image_frame("cam1", seq).encode(), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + timeout_s
        while len(got) < frames and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.loop_stop()
        client.disconnect()
    return got
