"""TLS end to end: the gateway, a ``privedge worker`` and a ``privedge sensor`` over ``mqtts://`` to the
hardened broker with its TLS listener (client certificates required) and ``rediss://`` to a TLS-only
redis-server (no plain port, client certificates required), with a CA the test makes; a server that our
CA did not sign, or a missing client certificate, is refused with an error that says so."""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from broker import secure, servers
from common.tls import TlsError, endpoint
from gateway.config import ConfigError, GatewaySettings, load_settings as gateway_settings
from gateway.intake import Intake, IntakeError
from gateway.metrics import Metrics
from gateway.upstream import Upstream, UpstreamRefused, connect_redis
from schemas import Names
from sensors import cli as sensor_cli
from sensors.publisher import ConnectError, PublisherSettings, SensorPublisher, settings_from_env
from tests.gateway_fixtures import full_bundles, gateway_bundles  # noqa: F401 (fixtures)
from tests.tls_pki import Pki, make_pki
from workers import service as worker_service
from workers.config import load_settings as worker_settings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
NAMES = Names()


@pytest.fixture
def pki(tmp_path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def other_ca(tmp_path) -> Path:
    """The CA of somebody else's home: it signed nothing our servers present."""
    return make_pki(tmp_path / "other", "another home CA").ca


@pytest.fixture
def tls_broker(tmp_path, pki):
    """The hardened broker with gateway gw1, device camA and an app, its TLS listener on the test CA's
    server certificate, requiring client certificates; yields (server, passwords)."""
    d = tmp_path / "broker"
    pw = {"gw1": secure.add_user(d, "gw1", "gateway"), "camA": secure.add_user(d, "camA", "device"),
          "app": secure.add_user(d, "app", "app")}
    (d / "certs").mkdir()
    for src, name in ((pki.ca, "ca.crt"), (pki.server_cert, "server.crt"), (pki.server_key, "server.key")):
        shutil.copy(src, d / "certs" / name)
    tls_port = servers.free_port()
    server = secure.start_secure(d, tls_port=tls_port, require_certificate=True)
    server.tls_url = f"mqtts://localhost:{tls_port}"
    yield server, pw
    server.stop()


@pytest.fixture
def tls_redis(tmp_path, pki):
    """A redis-server that speaks TLS only (port 0 plain) and requires client certificates."""
    server = servers.redis(tmp_path / "redis", tls_files=(pki.ca, pki.server_cert, pki.server_key))
    yield server
    server.stop()


def mqtt_files(pki: Pki) -> dict[str, str]:
    return {"mqtt_ca_file": str(pki.ca), "mqtt_cert_file": str(pki.client_cert), "mqtt_key_file": str(pki.client_key)}


def redis_files(pki: Pki) -> dict[str, str]:
    return {"redis_ca_file": str(pki.ca), "redis_cert_file": str(pki.client_cert),
            "redis_key_file": str(pki.client_key)}


def flags(files: dict[str, str]) -> list[str]:
    return [arg for key, value in files.items() for arg in (f"--{key.replace('_', '-')}", value)]


class TlsListener:
    """The home app over TLS (with the client certificate): every message under the prefix, by arrival."""

    def __init__(self, url: str, password: str, pki: Pki) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        host, port, _ = endpoint("MQTT", url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="app")
        self.client.username_pw_set("app", password)
        self.client.tls_set(ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key))
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.connect(host, port)
        self.client.subscribe("privedge/+/result", 1)
        self.client.loop_start()

    def wait_for(self, topic: str, n: int = 1, timeout: float = 60.0) -> list[bytes]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n:
            t, payload = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if t == topic:
                got.append(payload)
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def image_folder(folder: Path, n: int) -> Path:
    """``n`` small PNG frames (face-crop sized: the gateway takes each whole)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(40, 48), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "privedge.cli", *argv], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def wait_for_line(proc: subprocess.Popen, log: Path, line: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {line!r} (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def test_gateway_worker_and_sensor_over_mqtts_and_rediss(tmp_path, pki, tls_broker, tls_redis, gateway_bundles,
                                                         full_bundles):  # noqa: F811
    broker, pw = tls_broker
    redis_url = f"rediss://localhost:{tls_redis.port}"
    worker = _process(["worker", "--redis", redis_url, *flags(redis_files(pki)), "--bundle",
                       str(full_bundles["image"]), "--name", "w1", "--batch", "2", "--block-ms", "200"],
                      tmp_path / "worker.log")
    gateway = _process(["gateway", "--broker", broker.tls_url, *flags(mqtt_files(pki)), "--mqtt-username", "gw1",
                        "--redis", redis_url, *flags(redis_files(pki)), "--bundle", str(gateway_bundles["image"]),
                        "--id", "gw1", "--wait-ms", "2"], tmp_path / "gateway.log",
                       env={"PRIVEDGE_MQTT_PASSWORD": pw["gw1"]})
    app = TlsListener(broker.tls_url, pw["app"], pki)
    try:
        # Serving: its first CONNACK came and its subscriptions went out before (the app may not read the
        # gateway's own status topic).
        wait_for_line(gateway, tmp_path / "gateway.log", "gateway gw1 serving")
        frames = image_folder(tmp_path / "frames", 3)
        sensor = subprocess.run(
            [sys.executable, "-m", "privedge.cli", "sensor", "camera", "--broker", broker.tls_url, "--device", "camA",
             "--source", str(frames), "--rate", "0", "--count", "3", "--ca-file", str(pki.ca),
             "--cert-file", str(pki.client_cert), "--key-file", str(pki.client_key)],
            cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PRIVEDGE_MQTT_PASSWORD": pw["camA"]})
        assert sensor.returncode == 0, sensor.stderr[-3000:]
        try:
            results = [json.loads(p) for p in app.wait_for(NAMES.result("camA"), n=3, timeout=60)]
        except queue.Empty:
            raise AssertionError(f"results missing; worker:\n{(tmp_path / 'worker.log').read_text()[-2000:]}\n"
                                 f"gateway:\n{(tmp_path / 'gateway.log').read_text()[-2000:]}") from None
        assert sorted(r["id"].split("/")[:2] == ["gw1", "camA"] for r in results) == [True] * 3
        labels = json.loads((full_bundles["image"] / "manifest.json").read_text())["labels"]
        assert len({r["id"] for r in results}) == 3 and all(r["label"] in labels for r in results)
    finally:
        app.close()
        codes = _stop(gateway), _stop(worker)
    assert codes == (0, 0), ((tmp_path / "gateway.log").read_text()[-2000:], (tmp_path / "worker.log").read_text()[-2000:])
    assert "mqtts://" in (tmp_path / "gateway.log").read_text()


def test_a_server_our_ca_did_not_sign_is_refused_at_once(tmp_path, pki, other_ca, tls_broker, tls_redis, capsys,
                                                         caplog):
    broker, pw = tls_broker
    redis_url = f"rediss://localhost:{tls_redis.port}"
    mine = {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    # A sensor: exit status 3 (broker refusing), saying why.
    code = sensor_cli.main(["camera", "--broker", broker.tls_url, "--device", "camA",
                            "--source", str(image_folder(tmp_path / "frames", 1)), "--count", "1", "--ca-file", str(other_ca), "--cert-file", mine["cert_file"],
                            "--key-file", mine["key_file"]])
    assert code == sensor_cli.EXIT_CONNECT and "certificate is not trusted" in capsys.readouterr().err
    # The gateway's MQTT side: no waiting for its connect timeout.
    settings = GatewaySettings(broker=broker.tls_url, mqtt_username="gw1", mqtt_password=pw["gw1"],
                               mqtt_ca_file=str(other_ca), mqtt_cert_file=mine["cert_file"],
                               mqtt_key_file=mine["key_file"], id="gw1", connect_timeout_s=20)
    intake = Intake(settings, NAMES, Metrics(), ("image",), lambda *a: None)
    t0 = time.monotonic()
    with pytest.raises(IntakeError, match="certificate is not trusted.*CERTIFICATE_VERIFY_FAILED"):
        intake.start()
    assert time.monotonic() - t0 < 10
    # The gateway's Redis side, and a worker: refused, not retried as an outage.
    settings = GatewaySettings(redis=redis_url, redis_ca_file=str(other_ca), redis_cert_file=mine["cert_file"],
                               redis_key_file=mine["key_file"])
    client = connect_redis(settings)
    with pytest.raises(UpstreamRefused, match="certificate is not trusted"):
        Upstream(settings, client, Metrics()).start()
    client.close()
    with caplog.at_level(logging.ERROR, logger="workers.service"):
        assert worker_service.main(["--redis", redis_url, "--redis-ca-file", str(other_ca), "--redis-cert-file",
                                    mine["cert_file"], "--redis-key-file", mine["key_file"], "--bundle",
                                    str(tmp_path / "never-loaded")]) == 1
    assert "certificate is not trusted" in caplog.text and "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_the_broker_requires_a_client_certificate(pki, tls_broker):
    broker, pw = tls_broker
    base = dict(broker=broker.tls_url, device="camA", username="camA", password=pw["camA"], ca_file=str(pki.ca))
    with pytest.raises(ConnectError, match="(?i)certificate required"):
        SensorPublisher(PublisherSettings(**base, connect_timeout_s=2)).connect()
    with SensorPublisher(PublisherSettings(**base, cert_file=str(pki.client_cert),
                                           key_file=str(pki.client_key))) as pub:
        pub.publish_image(np.eye(8, dtype=np.uint8) * 255)
        pub.flush(10)
        assert pub.sent == 1
    # The plain listener (loopback, for a gateway on the broker's machine) stays as it was.
    plain = PublisherSettings(broker=broker.url, device="camA", username="camA", password=pw["camA"])
    with SensorPublisher(plain) as pub:
        assert pub.connected


def test_tls_settings_mistakes_are_refused_with_the_reason(tmp_path, pki, monkeypatch):
    missing = str(tmp_path / "no-such-ca.crt")
    with pytest.raises(ConfigError, match=f"cannot read the MQTT CA file {missing}"):
        gateway_settings({"broker": "mqtts://home.lan", "mqtt_ca_file": missing}, env={})
    with pytest.raises(ConfigError, match="MQTT TLS files are set but the URL is mqtt://: use mqtts://"):
        gateway_settings({"broker": "mqtt://home.lan:1883", "mqtt_ca_file": str(pki.ca)}, env={})
    with pytest.raises(ConfigError, match="MQTT URL must be mqtt://HOST:PORT or mqtts://HOST:PORT"):
        gateway_settings({"broker": "https://home.lan"}, env={})
    with pytest.raises(ConfigError, match="Redis URL must be redis://HOST:PORT or rediss://HOST:PORT"):
        gateway_settings({"redis": "mqtts://cloud:6379"}, env={})
    with pytest.raises(ConfigError, match="a key file .* needs its certificate file too"):
        gateway_settings({"redis": "rediss://cloud:6380", "redis_key_file": str(pki.client_key)}, env={})
    with pytest.raises(ConfigError, match="cannot load the Redis client certificate"):  # key of another cert
        gateway_settings({"redis": "rediss://cloud", "redis_cert_file": str(pki.client_cert),
                          "redis_key_file": str(pki.server_key)}, env={})
    s = gateway_settings({}, env={"PRIVEDGE_BROKER": "mqtts://home.lan", "PRIVEDGE_MQTT_CA_FILE": str(pki.ca),
                                  "PRIVEDGE_REDIS": "rediss://cloud", "PRIVEDGE_REDIS_CA_FILE": str(pki.ca)})
    assert (s.mqtt_tls.ca_file, s.redis_tls.ca_file) == (str(pki.ca), str(pki.ca))
    assert endpoint("MQTT", s.broker) == ("home.lan", 8883, True) and endpoint("MQTT", "mqtt://h") == ("h", 1883, False)
    # The worker: the same checks, through its own environment variables and its RedisSettings.
    with pytest.raises(TlsError, match="cannot read the Redis CA file"):
        worker_settings({"bundles": ("b",)}, env={"PRIVEDGE_REDIS": "rediss://cloud", "PRIVEDGE_REDIS_CA_FILE": missing})
    with pytest.raises(TlsError, match="use rediss://"):
        worker_settings({"bundles": ("b",), "redis_ca_file": str(pki.ca)}, env={})
    w = worker_settings({"bundles": ("b",)}, env={"PRIVEDGE_REDIS": "rediss://cloud:7000/2",
                                                  "PRIVEDGE_REDIS_CA_FILE": str(pki.ca),
                                                  "PRIVEDGE_REDIS_CERT_FILE": str(pki.client_cert),
                                                  "PRIVEDGE_REDIS_KEY_FILE": str(pki.client_key)})
    assert (w.redis.ssl, w.redis.port, w.redis.db, w.redis.cert_file) == (True, 7000, 2, str(pki.client_cert))
    # A sensor: ValueError (the CLI's exit status 2), the environment read as the gateway's names it.
    with pytest.raises(ValueError, match=f"cannot read the MQTT CA file {missing}"):
        PublisherSettings(broker="mqtts://home.lan", device="camA", ca_file=missing)
    with pytest.raises(ValueError, match="use mqtts://"):
        PublisherSettings(broker="mqtt://home.lan", device="camA", ca_file=str(pki.ca))
    monkeypatch.setenv("PRIVEDGE_MQTT_CA_FILE", str(pki.ca))
    monkeypatch.setenv("PRIVEDGE_MQTT_CERT_FILE", str(pki.client_cert))
    monkeypatch.setenv("PRIVEDGE_MQTT_KEY_FILE", str(pki.client_key))
    p = settings_from_env("mqtts://home.lan", "camA")
    assert (p.ca_file, p.cert_file, p.key_file) == (str(pki.ca), str(pki.client_cert), str(pki.client_key))
