"""Where a result goes at home: the per-result event topic, the retained latest state, and Home Assistant.

Every result the home gets (relayed from the cloud by gateway/results.py, or a camera frame's ``no_face``
answered at home by gateway/faces.py) is published:

- on ``{p}/{device}/result`` (QoS 1, not retained): one message per inference, as before;
- on ``{p}/{device}/state/{task}`` (QoS 1, retained): the latest result of each task, so that Home Assistant
  (or any app subscribing late) shows it after a restart;
- and, the first time a (device, task) is served, its Home Assistant discovery config
  (gateway/homeassistant.py), so that the entity appears by itself.

The event's delivery is what the relay waits for (its PUBACK moves the results cursor); the retained state
is the same payload, best effort: a lost one is replaced by the next result. Each event's end-to-end
latency (its ``latency_ms``) goes to the gateway's latency histogram (gateway/metrics.py).
"""
from __future__ import annotations

import time

import paho.mqtt.client as mqtt

from gateway.homeassistant import Discovery, DiscoverySettings
from schemas import Names, Result

OTHER_TASK = "(other)"
"""The latency label of a result whose task no bundle of this gateway serves."""


class HomeResults:
    """Publishes results to the home (``publish`` callable: ``(topic, payload, qos, retain) -> info``)."""

    def __init__(self, publish, names: Names, kind_of_task: dict[str, str],
                 discovery: Discovery | None = None, metrics=None) -> None:
        self._publish = publish
        self.names = names
        self.kind_of_task = dict(kind_of_task)
        self.discovery = discovery
        self.metrics = metrics  # gateway.metrics.Metrics, or None: no latency histogram

    def publish(self, result: Result, device: str | None = None) -> mqtt.MQTTMessageInfo:
        """Publish ``result`` (of ``device``, by default its id's) to the home: event, state, discovery;
        returns the event's message info."""
        device = device or result.device
        info, body = self.publish_event(result, device)
        self.publish_state(result, device, body)
        return info

    def publish_event(self, result: Result, device: str) -> tuple[mqtt.MQTTMessageInfo, bytes]:
        """The per-result event alone (the relay publishes a batch's events, then one state per (device,
        task) for the batch's last result: a burst of results does not double the messages to the broker)."""
        now = time.time()
        body = result.to_json(now)
        if self.metrics is not None:  # tasks the gateway serves only: a result's task cannot grow the labels
            task = result.task if result.task in self.kind_of_task else OTHER_TASK
            self.metrics.observe_latency(task, now - result.ts)
        return self._publish(self.names.result(device), body, 1, False), body

    def publish_state(self, result: Result, device: str, body: bytes | None = None) -> None:
        """The retained latest state of (device, task), and its Home Assistant entity the first time."""
        self._publish(self.names.state(device, result.task), body or result.to_json(), 1, True)
        if self.discovery is not None:
            self.discovery.serve(device, result.task, self.kind_of_task.get(result.task, "image"))


def home_results(settings, names: Names, intake, kind_of_task: dict[str, str],
                 metrics=None) -> tuple[HomeResults, Discovery | None]:
    """The gateway's home outbox on ``intake``, with Home Assistant discovery when ``ha_discovery`` is on:
    announced as results come, again when HA says ``online``, removed when a device is retired (its
    retained status cleared). Registers those control subscriptions on ``intake`` (before it starts)."""
    def publish(topic: str, payload: bytes, qos: int, retain: bool):
        return intake.publish(topic, payload, qos=qos, retain=retain)

    discovery = None
    if settings.ha_discovery:
        discovery = Discovery(names, settings.id, _version(),
                              DiscoverySettings(enabled=True, prefix=settings.ha_prefix),
                              lambda topic, payload, retain: publish(topic, payload, 1, retain))
        intake.on_topic(discovery.ha_status_topic, lambda _, payload: discovery.on_ha_status(payload))

        def device_status(topic: str, payload: bytes) -> None:  # an empty retained status: retired
            if not payload:
                discovery.retire(names.status_device(topic))

        intake.on_topic(names.status_wildcard(), device_status)
    return HomeResults(publish, names, kind_of_task, discovery, metrics), discovery


def _version() -> str:
    """privedge's installed version (the sw_version Home Assistant shows)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("privedge")
    except PackageNotFoundError:
        return "0+unknown"
