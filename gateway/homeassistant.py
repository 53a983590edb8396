"""Home Assistant MQTT discovery: every (device, task) the gateway serves appears in Home Assistant by itself.

What is published (all retained, QoS 1), following Home Assistant's MQTT discovery contract:
- for the gateway: a ``binary_sensor`` (device class ``connectivity``) on the gateway's status topic; its
  device block is the one every sensor's ``via_device`` names;
- for each sensor device and task: a ``sensor`` at ``<discovery prefix>/sensor/<node>/<object>/config``
  whose state is the label (``value_json.label``) of the retained state topic
  (:meth:`schemas.names.Names.state`), whose JSON attributes are the rest of that state (score, top-k, face
  box, latency...), with a ``unique_id``, a device block (identifiers, name, model, sw_version,
  ``via_device``) and availability on both the gateway's and the device's status topics, ``all`` of them
  required;
- when Home Assistant announces ``online`` on ``<prefix>/status`` (it restarted and forgot), every config is
  sent again; a retired device's configs are removed (an empty retained payload).

This module builds the payloads and remembers what it announced; the gateway calls it when it first
serves a device and when a device is retired, and gives it a ``publish(topic, payload, retain)`` callable.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Callable

from schemas.names import HA_PREFIX, Names, check_prefix, ha_config, ha_status

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
_NOT_SLUG = re.compile(r"[^a-z0-9_]")


def _slug(text: str) -> str:
    return _NOT_SLUG.sub("_", text.lower())

KIND_MODELS = {"image": "privedge camera", "audio": "privedge microphone"}


@dataclass(frozen=True)
class DiscoverySettings:
    enabled: bool = True
    """Publish Home Assistant discovery configs at all."""
    prefix: str = HA_PREFIX
    """Home Assistant's discovery prefix (its ``mqtt: discovery_prefix``)."""

    def __post_init__(self) -> None:
        check_prefix(self.prefix)


Publish = Callable[[str, bytes, bool], object]


class Discovery:
    """The discovery configs of one gateway; thread-safe (intake and relay threads both call it)."""

    def __init__(self, names: Names, gateway: str, sw_version: str, settings: DiscoverySettings,
                 publish: Publish) -> None:
        self.names = names
        self.gateway = gateway
        self.sw_version = sw_version
        self.s = settings
        self._publish = publish
        self._lock = threading.Lock()
        self._announced: dict[tuple[str, str], str] = {}  # (device, task) -> sensor kind ("image"/"audio")

    # identifiers ----------------------------------------------------------------------------------
    @property
    def node(self) -> str:
        """The discovery node id: one per gateway, so two gateways on one broker never collide."""
        return f"privedge_{self.gateway}"

    def _device_id(self, device: str) -> str:
        return f"{self.node}_{device}"

    def sensor_topic(self, device: str, task: str) -> str:
        return ha_config(self.s.prefix, "sensor", self.node, f"{device}_{task}")

    def gateway_topic(self) -> str:
        return ha_config(self.s.prefix, "binary_sensor", self.node, "gateway")

    @property
    def ha_status_topic(self) -> str:
        return ha_status(self.s.prefix)

    # payloads -------------------------------------------------------------------------------------
    def _availability(self, device: str | None) -> list[dict]:
        topics = [self.names.gateway_status(self.gateway)] + ([self.names.status(device)] if device else [])
        return [{"topic": t, "payload_available": ONLINE, "payload_not_available": OFFLINE} for t in topics]

    def gateway_config(self) -> dict:
        return {
            "name": "Connectivity", "unique_id": f"{self.node}_connectivity", "device_class": "connectivity",
            "state_topic": self.names.gateway_status(self.gateway), "payload_on": ONLINE, "payload_off": OFFLINE,
            "device": {"identifiers": [self.node], "name": f"privedge gateway {self.gateway}",
                       "model": "privedge gateway", "manufacturer": "privedge", "sw_version": self.sw_version},
        }

    def sensor_config(self, device: str, task: str, kind: str) -> dict:
        state = self.names.state(device, task)
        return {
            "name": task.replace("_", " ").capitalize(),
            "unique_id": f"{self._device_id(device)}_{task}",
            # replaces the deprecated object_id; an entity id is lower-case letters, digits and underscores
            "default_entity_id": "sensor." + _slug(f"{self.node}_{device}_{task}"),
            "state_topic": state, "value_template": "{{ value_json.label }}",
            "json_attributes_topic": state,
            "availability": self._availability(device), "availability_mode": "all",
            "icon": "mdi:cctv" if kind == "image" else "mdi:microphone",
            "device": {"identifiers": [self._device_id(device)], "name": device,
                       "model": KIND_MODELS.get(kind, "privedge sensor"), "manufacturer": "privedge",
                       "sw_version": self.sw_version, "via_device": self.node},
        }

    # publishing -----------------------------------------------------------------------------------
    def _send(self, topic: str, body: dict | None) -> None:
        payload = b"" if body is None else json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        self._publish(topic, payload, True)

    def start(self) -> None:
        """Announce the gateway itself (call once connected)."""
        if self.s.enabled:
            self._send(self.gateway_topic(), self.gateway_config())

    def serve(self, device: str, task: str, kind: str) -> bool:
        """Announce (device, task) unless already done; True when a config was published."""
        if not self.s.enabled:
            return False
        with self._lock:
            if self._announced.get((device, task)) == kind:
                return False
            self._announced[(device, task)] = kind
        self._send(self.sensor_topic(device, task), self.sensor_config(device, task, kind))
        log.info("announced %s/%s to Home Assistant", device, task)
        return True

    def retire(self, device: str) -> int:
        """Remove every config of ``device`` (empty retained payloads); how many were removed."""
        with self._lock:
            tasks = [t for (d, t) in self._announced if d == device]
            for t in tasks:
                del self._announced[(device, t)]
        for t in tasks:
            self._send(self.sensor_topic(device, t), None)
        if tasks:
            log.info("removed %s from Home Assistant (%d entities)", device, len(tasks))
        return len(tasks)

    def on_ha_status(self, payload: bytes) -> int:
        """Home Assistant's own status message: on ``online``, announce everything again; how many sent."""
        if not self.s.enabled or payload.strip() != ONLINE.encode():
            return 0
        with self._lock:
            known = dict(self._announced)
        self.start()
        for (device, task), kind in sorted(known.items()):
            self._send(self.sensor_topic(device, task), self.sensor_config(device, task, kind))
        return len(known) + 1

    def announced(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._announced)
