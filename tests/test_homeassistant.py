"""Home Assistant discovery payloads and their life cycle (announce, HA restart, retire)."""
from __future__ import annotations

import json

import pytest

from gateway.homeassistant import Discovery, DiscoverySettings
from schemas import Names
from schemas.names import BadName


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
