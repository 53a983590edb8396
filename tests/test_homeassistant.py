"""Home Assistant discovery payloads and their life cycle (announce, HA restart, retire)."""
from __future__ import annotations

import json
import time

import pytest

from gateway.homeassistant import Discovery, DiscoverySettings
from schemas import Names
from schemas.names import BadName
from tests.gateway_fixtures import Listener, full_bundles, gateway_bundles, image_frame, make_gateway  # noqa: F401
from workers.config import RedisSettings, WorkerSettings
from workers.service import Worker


class Sent(list):
    def __call__(self, topic, payload, retain):
        self.append((topic, payload, retain))

    def configs(self):
        return {t: (json.loads(p) if p else None) for t, p, _ in self}


def make(prefix="homeassistant", enabled=True):
    sent = Sent()
    return Discovery(Names("privedge"), "home", "0.1.0", DiscoverySettings(enabled=enabled, prefix=prefix), sent), sent


def test_a_sensor_config_follows_the_discovery_contract():
    d, sent = make()
    assert d.serve("camera-1", "glasses", "image")
    (topic, payload, retain), = sent
    assert topic == "homeassistant/sensor/privedge_home/camera-1_glasses/config" and retain
    c = json.loads(payload)
    assert c["state_topic"] == "privedge/camera-1/state/glasses" == c["json_attributes_topic"]
    assert c["value_template"] == "{{ value_json.label }}"
    assert c["unique_id"] == "privedge_home_camera-1_glasses"
    assert c["default_entity_id"] == "sensor.privedge_home_camera_1_glasses"  # HA's entity id alphabet
    assert c["availability_mode"] == "all"
    assert [a["topic"] for a in c["availability"]] == ["privedge/gateway/home/status", "privedge/camera-1/status"]
    dev = c["device"]
    assert dev["identifiers"] == ["privedge_home_camera-1"] and dev["name"] == "camera-1"
    assert dev["via_device"] == "privedge_home" and dev["sw_version"] == "0.1.0" and dev["model"]


def test_the_gateway_itself_is_the_device_the_sensors_hang_from():
    d, sent = make()
    d.start()
    (topic, payload, _), = sent
    c = json.loads(payload)
    assert topic == "homeassistant/binary_sensor/privedge_home/gateway/config"
    assert c["device"]["identifiers"] == [d.sensor_config("x", "t", "image")["device"]["via_device"]]
    assert (c["state_topic"], c["payload_on"], c["payload_off"]) == ("privedge/gateway/home/status", "online",
                                                                    "offline")


def test_announced_once_again_after_ha_restarts_and_removed_when_retired():
    d, sent = make()
    d.start()
    assert d.serve("camera-1", "glasses", "image") and d.serve("mic-1", "digit", "audio")
    assert not d.serve("camera-1", "glasses", "image")  # already announced
    assert len(sent) == 3
    assert d.on_ha_status(b"offline") == 0 and len(sent) == 3
    assert d.on_ha_status(b"online") == 3 and len(sent) == 6
    assert {t for t, _, _ in sent[3:]} == {t for t, _, _ in sent[:3]}
    assert d.retire("camera-1") == 1
    topic, payload, retain = sent[-1]
    assert topic.endswith("/camera-1_glasses/config") and payload == b"" and retain
    assert d.announced() == [("mic-1", "digit")]
    assert d.retire("camera-1") == 0


def test_the_prefix_is_configurable_and_discovery_can_be_switched_off():
    d, sent = make(prefix="ha")
    d.serve("camera-1", "glasses", "image")
    assert sent[0][0].startswith("ha/sensor/") and d.ha_status_topic == "ha/status"
    off, sent = make(enabled=False)
    off.start()
    assert not off.serve("camera-1", "glasses", "image") and off.on_ha_status(b"online") == 0 and sent == []
    with pytest.raises(BadName):
        DiscoverySettings(prefix="bad prefix/#")


def test_the_gateway_may_write_discovery_and_state_and_apps_may_read_state():
    names = Names("privedge")
    gw = names.mosquitto_acl("gateway", "home")
    assert "topic write homeassistant/sensor/#" in gw and "topic read homeassistant/status" in gw
    assert "topic write privedge/+/state/+" in gw
    assert "topic read privedge/+/state/+" in names.mosquitto_acl("app", "ha")


# --- on the real broker, through a gateway and a worker ------------------------------------------------

SENSOR_KEYS = {"name", "unique_id", "default_entity_id", "state_topic", "value_template", "json_attributes_topic",
               "json_attributes_template", "availability", "availability_mode", "availability_topic", "icon",
               "device", "device_class", "state_class", "unit_of_measurement", "expire_after", "force_update",
               "enabled_by_default", "entity_category", "qos", "encoding", "payload_on", "payload_off"}
DEVICE_KEYS = {"identifiers", "connections", "name", "model", "manufacturer", "sw_version", "hw_version",
               "via_device", "configuration_url", "suggested_area", "serial_number"}
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
"""The option names Home Assistant documents for MQTT sensors / binary sensors, devices and availability."""


def _retained(port: int, topic: str, client_id: str) -> dict[str, bytes]:
    """What a new subscriber to ``topic`` gets at once: the retained messages (latest per topic)."""
    lis = Listener(port, topic, client_id=client_id)
    try:
        time.sleep(0.5)
        return {t: ps[-1] for t, ps in lis.messages.items()}
    finally:
        lis.close()


def test_a_served_device_appears_in_home_assistant_and_its_state_is_retained(make_gateway, mosquitto, redis_server,
                                                                            full_bundles):  # noqa: F811
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), name="wha", block_ms=50,
                                   bundles=(full_bundles["image"], full_bundles["speech"]))).start()
    events = Listener(mosquitto.port, "#", client_id="ha-events")
    try:
        make_gateway()
        gw_config = "homeassistant/binary_sensor/privedge_gw1/gateway/config"
        assert events.wait_for(lambda lis: gw_config in lis.messages, 20)
        events.publish("privedge/cam1/image", image_frame("cam1", 1).encode())
        assert events.wait_for(lambda lis: lis.messages.get("privedge/cam1/result"), 60)
        config_topic = "homeassistant/sensor/privedge_gw1/cam1_glasses/config"
        retained = _retained(mosquitto.port, "homeassistant/#", "ha-late")
        config = json.loads(retained[config_topic])
        assert set(config) <= SENSOR_KEYS and set(config["device"]) <= DEVICE_KEYS
        assert all(set(a) <= AVAILABILITY_KEYS for a in config["availability"])
        assert json.loads(retained[gw_config])["device"]["identifiers"] == [config["device"]["via_device"]]
        # the state: retained, the latest result of the task, with the label Home Assistant shows
        state = json.loads(_retained(mosquitto.port, config["state_topic"], "ha-state")[config["state_topic"]])
        result = json.loads(events.messages["privedge/cam1/result"][-1])
        assert state["id"] == result["id"] == "gw1/cam1/1" and state["label"] in ("glasses", "no_glasses")
        # Home Assistant restarts: every config again
        before = len(events.messages[config_topic])
        events.publish("homeassistant/status", b"online")
        assert events.wait_for(lambda lis: len(lis.messages[config_topic]) > before, 10)
        # the device is retired (its retained status cleared): its entity goes
        events.client.publish("privedge/cam1/status", b"", qos=1, retain=True).wait_for_publish(5)
        assert events.wait_for(lambda lis: lis.messages[config_topic][-1] == b"", 10)
        assert config_topic not in _retained(mosquitto.port, "homeassistant/#", "ha-after")
    finally:
        events.close()
        worker.stop()


def test_discovery_switched_off_announces_nothing(make_gateway, mosquitto):
    events = Listener(mosquitto.port, "homeassistant/#", client_id="ha-off")
    try:
        make_gateway(ha_discovery=False, id="gw2")
        time.sleep(1.0)
        assert not [t for t in events.messages if "privedge_gw2" in t]
    finally:
        events.close()
