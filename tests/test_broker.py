"""The broker configurations against a real mosquitto: persistence, authentication, the device ACL, TLS."""
from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import secure
from broker import servers
from schemas import ImageFrame, Names
from sensors.publisher import ConnectError, PublisherSettings, SensorPublisher

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
NAMES = Names()


class Client:
    """A paho client whose CONNACK reason and received messages tests can inspect."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None, *,
                 ca: Path | None = None, client_id: str = "") -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{time.time_ns()}")
        if user:
            self.c.username_pw_set(user, password)
        if ca:
            self.c.tls_set(ca_certs=str(ca))
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.rc = self.connack.get(timeout=10)

    def subscribe(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)
        self.subacks.get(timeout=10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def topics(self, n: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        return [(m.topic, m.payload) for m in (self.messages.get(timeout=timeout) for _ in range(n))]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, "broker exited"
        try:
            Client(port).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no broker on {port}")


@pytest.mark.parametrize("launcher", ["start.sh", "privedge broker start"])
def test_dev_broker_keeps_retained_messages_across_restarts(tmp_path, launcher):
    port, data = servers.free_port(), tmp_path / "data"
    argv = ([str(REPO / "broker" / "start.sh"), str(port), str(data)] if launcher == "start.sh" else
            [sys.executable, "-m", "privedge.cli", "broker", "start", "--port", str(port), "--data", str(data)])
    for round_ in range(2):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        try:
            _wait_port(port, proc)
            c = Client(port)
            if round_ == 0:
                c.publish("privedge/cam1/status", b"online")  # not retained: must not survive
                c.c.publish("privedge/cam2/status", b"online", qos=1, retain=True).wait_for_publish(10)
            else:
                c.subscribe("privedge/+/status")
                assert c.topics(1) == [("privedge/cam2/status", b"online")]
                with pytest.raises(queue.Empty):
                    c.topics(1, timeout=0.5)
            c.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    assert (data / "mosquitto.db").exists()


@pytest.fixture
def hardened(tmp_path):
    """A hardened broker with gateway gw, devices camA and camB, an app, and a TLS listener."""
    d = tmp_path / "broker"
    pw = {"gw": secure.add_user(d, "gw", "gateway"), "camA": secure.add_user(d, "camA", "device"),
          "camB": secure.add_user(d, "camB", "device"), "app": secure.add_user(d, "app", "app")}
    ca = secure.make_certs(d)
    tls_port = servers.free_port()
    server = secure.start_secure(d, tls_port=tls_port)
    server.tls_port = tls_port
    yield server, pw, ca
    server.stop()


def test_anonymous_and_wrong_passwords_are_refused(hardened):
    server, pw, _ = hardened
    assert Client(server.port).rc.is_failure
    assert Client(server.port, "camA", "wrong").rc.is_failure
    assert Client(server.port, "nobody", pw["camA"]).rc.is_failure
    ok = Client(server.port, "camA", pw["camA"])
    assert not ok.rc.is_failure
    ok.close()
    settings = PublisherSettings(broker=server.url, device="camA", connect_timeout_s=5)
    with pytest.raises(ConnectError):
        SensorPublisher(settings).connect()


def test_device_cannot_publish_as_another_or_read_its_results(hardened):
    server, pw, _ = hardened
    gw = Client(server.port, "gw", pw["gw"])
    a = Client(server.port, "camA", pw["camA"])
    b = Client(server.port, "camB", pw["camB"])
    try:
        for t in NAMES.sensor_wildcards():
            gw.subscribe(t)
        b.subscribe(NAMES.result("camA"))
        b.subscribe("privedge/#")
        a.subscribe(NAMES.result("camA"))
        # B forges A's data and tries a topic outside its own; then publishes its own frame.
        b.publish(NAMES.image("camA"), b"forged")
        b.publish(NAMES.audio("camA"), b"forged")
        b.publish("privedge/camA/status", b"offline")
        a.publish(NAMES.image("camA"), b"a1")
        b.publish(NAMES.image("camB"), b"b1")
        # Messages from one publisher arrive in order, so the forged ones would have come before b1.
        got = gw.topics(2)
        assert sorted(got) == [(NAMES.image("camA"), b"a1"), (NAMES.image("camB"), b"b1")]
        # The gateway answers A; only A reads it, B (subscribed to A's result and to #) gets nothing.
        gw.publish(NAMES.result("camA"), b'{"id":"gw/camA/1"}')
        gw.publish(NAMES.result("camB"), b'{"id":"gw/camB/1"}')
        assert a.topics(1) == [(NAMES.result("camA"), b'{"id":"gw/camA/1"}')]
        assert b.topics(1) == [(NAMES.result("camB"), b'{"id":"gw/camB/1"}')]
        with pytest.raises(queue.Empty):
            b.topics(1, timeout=0.5)
        with pytest.raises(queue.Empty):
            gw.topics(1, timeout=0.2)
    finally:
        for c in (gw, a, b):
            c.close()


def test_device_publishes_over_tls_with_the_home_ca(hardened):
    server, pw, ca = hardened
    app = Client(server.port, "app", pw["app"])
    gw = Client(server.port, "gw", pw["gw"])
    try:
        gw.subscribe(NAMES.image("camA"))
        app.subscribe("privedge/+/status")
        settings = PublisherSettings(broker=f"mqtts://localhost:{server.tls_port}", device="camA",
                                     username="camA", password=pw["camA"], ca_file=str(ca), first_seq=5)
        with SensorPublisher(settings) as pub:
            pub.publish_image(np.eye(4, dtype=np.uint8) * 255)
        topic, payload = gw.topics(1)[0]
        assert topic == NAMES.image("camA") and ImageFrame.decode(payload).seq == 5
        assert [p for _, p in app.topics(2)] == [b"online", b"offline"]
    finally:
        app.close()
        gw.close()
    # Without the home CA the server certificate is not trusted.
    with pytest.raises(ConnectError):
        SensorPublisher(PublisherSettings(broker=f"mqtts://localhost:{server.tls_port}", device="camA",
                                          username="camA", password=pw["camA"],
                                          connect_timeout_s=3)).connect()


def test_tls_listener_can_require_a_client_certificate_from_the_home_ca(tmp_path, capsys):
    from broker import tool

    d = tmp_path / "broker"
    pw = secure.add_user(d, "camA", "device")
    ca = secure.make_certs(d)
    assert tool.main(["make-client-cert", "camA", "--dir", str(d)]) == 0
    crt, key = capsys.readouterr().out.split()
    assert Path(key).stat().st_mode & 0o077 == 0 and not list((d / "certs" / "clients").glob("*.csr"))
    tls_port = servers.free_port()
    conf = secure.render_conf(d, servers.free_port(), tls_port=tls_port, require_certificate=True)
    assert "require_certificate true" in conf.read_text() and f"listener {tls_port} 0.0.0.0" in conf.read_text()
    server = secure.start_secure(d, tls_port=tls_port, require_certificate=True)
    try:
        base = dict(broker=f"mqtts://localhost:{tls_port}", device="camA", username="camA", password=pw,
                    ca_file=str(ca))
        with SensorPublisher(PublisherSettings(**base, cert_file=crt, key_file=key)) as pub:
            assert pub.connected
        with pytest.raises(ConnectError, match="(?i)certificate required"):
            SensorPublisher(PublisherSettings(**base, connect_timeout_s=2)).connect()
    finally:
        server.stop()
    with pytest.raises(secure.BrokerToolError, match="needs a TLS listener"):
        secure.render_conf(d, 1883, require_certificate=True)
    assert "require_certificate false" in secure.render_conf(d, 1883, tls_port=8883).read_text()


def test_acl_file_and_enrolment_rules(tmp_path):
    d = tmp_path / "b"
    secure.add_user(d, "camA", "device", "pw1")
    with pytest.raises(secure.BrokerToolError):
        secure.add_user(d, "camA", "gateway")
    with pytest.raises(Exception):
        secure.add_user(d, "cam/A", "device")
    secure.add_user(d, "camA", "device", "pw2")  # re-enrolling replaces the password
    assert [ln.split(":")[0] for ln in (d / "passwd").read_text().split()] == ["camA"]
    assert "pw2" not in (d / "passwd").read_text()
    assert (d / "passwd").stat().st_mode & 0o077 == 0
    secure.remove_user(d, "camA")
    assert secure.load_users(d) == {}
    acl = secure.render_acl({"gw": "gateway"}, "home")
    assert "pattern write home/%u/image" in acl and "topic write home/+/result" in acl
    assert "pattern read home/%u/result" in acl and "readwrite home/+" not in acl


class GatewayLike:
    """A client connecting as the gateway does (gateway/intake.py): its fixed client id, MQTT 5,
    clean_start False with a session expiry, QoS 1 subscriptions; counts its disconnections."""

    def __init__(self, port: int, user: str, password: str, client_id: str) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.disconnects = 0
        self.connected = threading.Event()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and (
            c.subscribe([(t, 1) for t in NAMES.sensor_wildcards()]), self.connected.set())
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.c.loop_start()
        assert self.connected.wait(10)

    def _on_disconnect(self, *args) -> None:
        self.disconnects += 1
        self.connected.clear()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_a_device_using_the_gateways_client_id_does_not_disconnect_it(hardened):
    """Finding: any device could connect with the gateway's client id and take its session over, again
    and again. The hardened broker binds client ids to user names, so the device gets a session of its
    own and the gateway stays connected, still receiving."""
    from gateway.config import GatewaySettings

    server, pw, ca = hardened
    gw_id = GatewaySettings(id="gw").client_id
    gw = GatewayLike(server.port, "gw", pw["gw"], gw_id)
    try:
        time.sleep(0.3)
        # On the plain listener and on the TLS one (where devices connect).
        for port, tls_ca in ((server.port, None), (server.tls_port, ca), (server.port, None)):
            intruder = Client(port, "camA", pw["camA"], ca=tls_ca, client_id=gw_id)
            assert not intruder.rc.is_failure
            time.sleep(0.3)
            intruder.close()
        assert gw.disconnects == 0 and gw.connected.is_set()
        b = Client(server.port, "camB", pw["camB"], client_id="privedge-sensor-camB")
        b.publish(NAMES.image("camB"), b"still-served")
        assert gw.messages.get(timeout=10).payload == b"still-served"
        b.close()
    finally:
        gw.close()


def test_the_gateways_persistent_session_survives_with_client_ids_bound_to_users(hardened):
    """The broker keeps the gateway's session (subscriptions and queued QoS 1 messages) while it is away,
    with client ids bound to user names: what a device publishes meanwhile is delivered at reconnect."""
    from gateway.config import GatewaySettings

    server, pw, _ = hardened
    gw_id = GatewaySettings(id="gw").client_id
    GatewayLike(server.port, "gw", pw["gw"], gw_id).close()
    a = Client(server.port, "camA", pw["camA"], client_id="privedge-sensor-camA")
    for i in range(3):
        a.publish(NAMES.image("camA"), b"while-away-%d" % i)
    a.close()
    gw = GatewayLike(server.port, "gw", pw["gw"], gw_id)
    try:
        got = [gw.messages.get(timeout=10).payload for _ in range(3)]
        assert got == [b"while-away-%d" % i for i in range(3)]
    finally:
        gw.close()
