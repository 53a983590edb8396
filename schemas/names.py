"""Every MQTT topic and Redis key of privedge, built from one configurable prefix.

MQTT topics use ``/`` and Redis keys ``:`` after the same prefix (default ``privedge``):

==========================================  ==========================================================
``{p}/{device}/image``                      ImageFrame, QoS 1
``{p}/{device}/audio``                      AudioChunk, QoS 1
``{p}/{device}/status``                     ``online`` / ``offline`` (last will), QoS 1, retained
``{p}/{device}/result``                     Result JSON for home apps, QoS 1
``{p}/gateway/{gateway}/status``            ``online`` / ``offline`` (last will), QoS 1, retained
``{p}/gateway/{gateway}/errors``            ErrorReport JSON per rejected input, QoS 0
``{p}/gateway/{gateway}/stats``             the gateway's counters as JSON, QoS 0
``{p}:features:{{task}:{NN}}:{gateway}``    stream of FeatureMessage (field ``m``) from one gateway, shard NN
``{p}:results:{{gateway}}``                 stream of Result (field ``m``)
``{p}:results:{{gateway}}:cursor``          string: id of the last results entry the gateway relayed
``{p}:results:{{gateway}}:seen``            sorted set: the relayed result ids (the dedup window)
``{p}:dead:{{task}:{NN}}``                  dead-letter stream of shard NN, with the reason (workers only)
``{p}:media:{{task}:{NN}}:{gateway}``       stream of MediaMessage (cloud_only mode: raw media upstream)
==========================================  ==========================================================

The doubled braces are literal: a Redis key ``privedge:features:{glasses:07}:home`` carries the *hash tag*
``glasses:07``, and Redis Cluster puts every key with the same tag in the same hash slot. So one layout
serves one Redis and a Cluster alike:

- a *shard* is one task's slot: the features streams of every gateway for ``{task:NN}`` and that shard's
  dead letters share it, so a worker reads all the streams of one shard in one XREADGROUP and writes its
  dead letters and XACKs of that shard in one MULTI/EXEC;
- a gateway's results stream, its cursor and its dedup window share the tag ``{gateway}``, so the results
  relay's pipeline stays in one slot;
- a gateway spreads its inputs over ``shards`` shards per task (:func:`shard_of`, a hash of the input, the
  same on every retry); one shard (``00``, the default) is one slot per task.

On a single Redis the braces are only characters. Shards are numbered ``00``..``99`` (:data:`MAX_SHARDS`).

Read, not written: a Frigate NVR's snapshot topics ``{f}/{camera}/{object}/snapshot`` (``{f}`` is Frigate's
own prefix, default ``frigate``; JPEG payloads), which ``privedge sensor frigate`` republishes as ImageFrames
of device ``{camera}`` (:func:`frigate_snapshot_wildcard`, :func:`parse_frigate_snapshot`).

Each gateway writes streams of its own (``...:{{task}:{NN}}:{gateway}``) rather than one stream per task shared
by every home: a Redis ACL can then let a gateway add only to its own streams, so that no home can trim,
delete or crowd out another home's unread entries. Workers find the streams of their tasks with
:meth:`Names.features_pattern` (SCAN MATCH) and check each key with :meth:`Names.split_stream`; the
streams are trimmed by the workers only, below what the consumer group has acknowledged.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from schemas.errors import BadName

GROUP = "analyzers"
"""Consumer group of the workers on every features stream."""

FIELD = "m"
"""Field of a stream entry that holds the msgpack message (features, media, results, dead letters)."""

MAX_NAME = 64
"""Characters of a device id, gateway id or task name."""

SENSOR_KINDS = ("image", "audio")
"""Topic suffixes that carry sensor data (the gateway subscribes to these)."""

RESERVED_DEVICES = frozenset({"gateway"})
"""Device ids that would collide with other topics (``{p}/gateway/...``)."""

MAX_SHARDS = 100
"""Shards per task at most (numbered ``00``..``99`` in the keys)."""

_NAME = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_NAME)
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}")


def check_prefix(value: object) -> str:
    """Return ``value`` if it is a valid topic/key prefix (1-4 ``/``-separated segments of
    ``[A-Za-z0-9_-]``), else raise BadName; the settings of both services validate with this."""
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise BadName(f"bad prefix {value!r}: 1-4 segments of [A-Za-z0-9_-] joined by /")
    return value


def check_name(value: object, what: str = "device id") -> str:
    """Return ``value`` if it is a valid id (``[A-Za-z0-9_-]``, 1..64 chars), else raise BadName."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadName(f"bad {what} {value!r}: use 1-{MAX_NAME} characters from [A-Za-z0-9_-]")
    return value


def check_shard(value: object) -> int:
    """Return ``value`` if it is a shard number (0..MAX_SHARDS-1), else raise BadName."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SHARDS:
        raise BadName(f"bad shard {value!r}: use 0-{MAX_SHARDS - 1}")
    return value


def check_shards(value: object) -> int:
    """Return ``value`` if it is a number of shards (1..MAX_SHARDS), else raise BadName."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SHARDS:
        raise BadName(f"bad number of shards {value!r}: use 1-{MAX_SHARDS}")
    return value


def shard_of(key: str, shards: int) -> int:
    """The shard (0..shards-1) of an input named ``key``: CRC-32 of its UTF-8, so every process and every
    retry of that input picks the same one (Python's ``hash`` differs per process)."""
    return zlib.crc32(key.encode()) % check_shards(shards)


class StreamKey(NamedTuple):
    """A features or media stream's key, taken apart (:meth:`Names.split_stream`)."""

    kind: str
    task: str
    gateway: str
    shard: int


def check_device(value: object) -> str:
    """A valid, non-reserved device id (see :func:`check_name`)."""
    check_name(value, "device id")
    if value in RESERVED_DEVICES:
        raise BadName(f"device id {value!r} is reserved")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Names:
    """Topic and key builder for one deployment; ``prefix`` is 1-4 ``/``-separated safe segments."""

    prefix: str = "privedge"

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    GROUP = GROUP
    FIELD = FIELD

    @property
    def key_prefix(self) -> str:
        """The prefix of every Redis key (the topic prefix with ``:`` for ``/``)."""
        return self.prefix.replace("/", ":")

    _key = key_prefix

    # MQTT ------------------------------------------------------------------------------------
    def image(self, device: str) -> str:
        """Topic of a camera's ImageFrames."""
        return f"{self.prefix}/{check_device(device)}/image"

    def audio(self, device: str) -> str:
        """Topic of a microphone's AudioChunks."""
        return f"{self.prefix}/{check_device(device)}/audio"

    def status(self, device: str) -> str:
        """Retained availability topic of a sensor (``online`` / ``offline``)."""
        return f"{self.prefix}/{check_device(device)}/status"

    def result(self, device: str) -> str:
        """Topic where the gateway publishes a device's Result JSON."""
        return f"{self.prefix}/{check_device(device)}/result"

    def gateway_status(self, gateway: str) -> str:
        """Retained availability topic of a gateway."""
        return f"{self.prefix}/gateway/{check_name(gateway, 'gateway id')}/status"

    def gateway_errors(self, gateway: str) -> str:
        """Topic of a gateway's ErrorReport JSON messages (one per rejected input)."""
        return f"{self.prefix}/gateway/{check_name(gateway, 'gateway id')}/errors"

    def gateway_stats(self, gateway: str) -> str:
        """Topic of a gateway's periodic JSON stats (its counters and gauges)."""
        return f"{self.prefix}/gateway/{check_name(gateway, 'gateway id')}/stats"

    def state(self, device: str, task: str) -> str:
        """Retained topic of a device's latest result per task (JSON): what Home Assistant shows after a
        restart. The per-result event stream stays on :meth:`result`."""
        return f"{self.prefix}/{check_device(device)}/state/{check_name(task, 'task')}"

    def sensor_wildcards(self, kinds: tuple[str, ...] = SENSOR_KINDS) -> list[str]:
        """Subscriptions that receive every sensor's data of ``kinds`` (not status or results)."""
        bad = [k for k in kinds if k not in SENSOR_KINDS]
        if bad:
            raise BadName(f"sensor kinds {bad} are not among {SENSOR_KINDS}")
        return [f"{self.prefix}/+/{kind}" for kind in kinds]

    def result_wildcard(self) -> str:
        """Subscription that receives every device's Result JSON."""
        return f"{self.prefix}/+/result"

    def state_wildcard(self) -> str:
        """Subscription that receives every device's retained latest results."""
        return f"{self.prefix}/+/state/+"

    def status_wildcard(self) -> str:
        """Subscription that receives every sensor's availability."""
        return f"{self.prefix}/+/status"

    def mosquitto_acl(self, role: str, user: str | None = None, ha_prefix: str | None = None) -> list[str]:
        """The mosquitto ACL lines of one role (``device`` patterns apply to every user through ``%u``;
        ``gateway`` and ``app`` are granted to ``user``)."""
        p = self.prefix
        if role == "device":
            return [f"pattern write {p}/%u/{k}" for k in (*SENSOR_KINDS, "status")] + [f"pattern read {p}/%u/result"]
        name = check_name(user, "broker user")
        if role == "gateway":
            ha = check_prefix(ha_prefix or HA_PREFIX)
            return ([f"user {name}"] + [f"topic read {t}" for t in (*self.sensor_wildcards(), self.status_wildcard())]
                    + [f"topic write {self.result_wildcard()}", f"topic write {self.state_wildcard()}",
                       f"topic readwrite {p}/gateway/{name}/#", f"topic read {ha_status(ha)}"]
                    + [f"topic write {ha}/{component}/#" for component in HA_COMPONENTS])
        if role == "app":
            return [f"user {name}", f"topic read {self.result_wildcard()}", f"topic read {self.state_wildcard()}",
                    f"topic read {self.status_wildcard()}"]
        raise BadName(f"unknown broker role {role!r}")

    def parse_sensor_topic(self, topic: str) -> tuple[str, str]:
        """``{p}/{device}/image|audio`` -> ``(device, kind)``; anything else raises BadName."""
        if not isinstance(topic, str) or not topic.startswith(self.prefix + "/"):
            raise BadName(f"topic {topic!r} is not under {self.prefix}/")
        parts = topic[len(self.prefix) + 1:].split("/")
        if len(parts) != 2 or parts[1] not in SENSOR_KINDS:
            raise BadName(f"topic {topic!r} is not {self.prefix}/DEVICE/image|audio")
        return check_device(parts[0]), parts[1]

    def status_device(self, topic: str) -> str:
        """``{p}/{device}/status`` -> ``device``; anything else raises BadName."""
        head, _, rest = topic.partition(self.prefix + "/") if isinstance(topic, str) else ("x", "", "")
        parts = rest.split("/")
        if head or len(parts) != 2 or parts[1] != "status":
            raise BadName(f"topic {topic!r} is not {self.prefix}/DEVICE/status")
        return check_device(parts[0])

    def is_result_topic(self, topic: str) -> bool:
        """Whether ``topic`` is some device's result topic (``{p}/{device}/result``)."""
        head, _, rest = topic.partition(self.prefix + "/") if isinstance(topic, str) else ("x", "", "")
        parts = rest.split("/")
        return head == "" and len(parts) == 2 and parts[1] == "result" and bool(_NAME.fullmatch(parts[0]))

    # Redis -----------------------------------------------------------------------------------
    @staticmethod
    def shard_tag(task: str, shard: int = 0) -> str:
        """The hash tag of one task's shard, braces included: ``{glasses:07}``."""
        return "{%s:%02d}" % (check_name(task, "task"), check_shard(shard))

    def features(self, task: str, gateway: str, shard: int = 0) -> str:
        """Stream of one gateway's FeatureMessages for one shard of one task (field ``m``)."""
        return f"{self._key}:features:{self.shard_tag(task, shard)}:{check_name(gateway, 'gateway id')}"

    def features_pattern(self, task: str, shard: int | None = None) -> str:
        """SCAN MATCH pattern of every gateway's features stream of ``task`` (of one ``shard``, or all)."""
        return self._stream_pattern("features", task, shard)

    def _stream_pattern(self, kind: str, task: str, shard: int | None) -> str:
        # Braces are plain characters to SCAN MATCH (its specials are * ? [ and backslash).
        tag = self.shard_tag(task, shard) if shard is not None else "{%s:*}" % check_name(task, "task")
        return f"{self._key}:{kind}:{tag}:*"

    def results(self, gateway: str) -> str:
        """Stream of Results addressed to one gateway (field ``m``), tagged with the gateway."""
        return f"{self._key}:results:{{{check_name(gateway, 'gateway id')}}}"

    def results_cursor(self, gateway: str) -> str:
        """String holding the id of the last results-stream entry the gateway relayed (its slot)."""
        return self.results(gateway) + ":cursor"

    def results_seen(self, gateway: str) -> str:
        """Sorted set of the result ids the gateway relayed lately (its dedup window; its slot)."""
        return self.results(gateway) + ":seen"

    def results_pattern(self) -> str:
        """ACL key pattern of every gateway's results stream (the workers write them)."""
        return f"{self._key}:results:*"

    def dead_pattern(self) -> str:
        """ACL key pattern of every dead-letter stream (the workers write them)."""
        return f"{self._key}:dead:*"

    def all_features_pattern(self) -> str:
        """ACL key pattern of every features stream (the workers consume them)."""
        return f"{self._key}:features:*"

    def all_media_pattern(self) -> str:
        """ACL key pattern of every media stream (the cloud_only baseline's workers consume them)."""
        return f"{self._key}:media:*"

    def media(self, task: str, gateway: str, shard: int = 0) -> str:
        """Stream of one gateway's MediaMessages for one shard of one task (field ``m``), used only by the
        cloud_only comparison mode."""
        return f"{self._key}:media:{self.shard_tag(task, shard)}:{check_name(gateway, 'gateway id')}"

    def media_pattern(self, task: str, shard: int | None = None) -> str:
        """SCAN MATCH pattern of every gateway's media stream of ``task`` (of one ``shard``, or all)."""
        return self._stream_pattern("media", task, shard)

    def gateway_stream_patterns(self, gateway: str) -> tuple[str, str]:
        """ACL key patterns of the features and media streams gateway ``gateway`` may write."""
        gw = check_name(gateway, "gateway id")
        return f"{self._key}:features:*:{gw}", f"{self._key}:media:*:{gw}"

    _STREAM = re.compile(r"(features|media):\{([A-Za-z0-9_-]{1,64}):([0-9]{2})\}:([A-Za-z0-9_-]{1,64})")

    def split_stream(self, key: str | bytes) -> StreamKey:
        """``{p}:features|media:{{task}:{NN}}:{gateway}`` -> ``StreamKey(kind, task, gateway, shard)``;
        anything else raises BadName (a key that merely matches the SCAN pattern, e.g. with a ``:`` in its
        gateway part)."""
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        head = self._key + ":"
        m = self._STREAM.fullmatch(key[len(head):]) if isinstance(key, str) and key.startswith(head) else None
        if m is None or int(m.group(3)) >= MAX_SHARDS:
            raise BadName(f"key {key!r} is not {self._key}:features|media:{{TASK:NN}}:GATEWAY")
        return StreamKey(m.group(1), check_name(m.group(2), "task"), check_name(m.group(4), "gateway id"),
                         int(m.group(3)))

    def dead(self, task: str, shard: int = 0) -> str:
        """Dead-letter stream of one shard of one task (the slot of its features streams): messages that
        failed or were redelivered too often."""
        return f"{self._key}:dead:{self.shard_tag(task, shard)}"


HA_PREFIX = "homeassistant"
"""Home Assistant's default MQTT discovery prefix."""
HA_COMPONENTS = ("sensor", "binary_sensor")
"""The Home Assistant entity kinds the gateway announces: a sensor per (device, task), and the gateway's
own connectivity as a binary sensor (the device every sensor's ``via_device`` points to)."""


def ha_config(discovery_prefix: str, component: str, node: str, obj: str) -> str:
    """Home Assistant discovery topic ``<prefix>/<component>/<node_id>/<object_id>/config``."""
    return (f"{check_prefix(discovery_prefix)}/{check_name(component, 'HA component')}/"
            f"{check_name(node, 'HA node id')}/{check_name(obj, 'HA object id')}/config")


def ha_status(discovery_prefix: str) -> str:
    """Topic where Home Assistant announces itself ``online`` (then every config is sent again)."""
    return f"{check_prefix(discovery_prefix)}/status"


DEFAULT_NAMES = Names()

FRIGATE_PREFIX = "frigate"
"""Frigate's default MQTT topic prefix (its ``mqtt.topic_prefix``)."""
_FRIGATE_SNAPSHOT = "snapshot"


def frigate_snapshot_wildcard(prefix: str = FRIGATE_PREFIX) -> str:
    """``{f}/+/+/snapshot``: every camera's per-object snapshot topic under Frigate's prefix ``f``."""
    return f"{check_prefix(prefix)}/+/+/{_FRIGATE_SNAPSHOT}"


def parse_frigate_snapshot(topic: str, prefix: str = FRIGATE_PREFIX) -> tuple[str, str]:
    """``{f}/{camera}/{object}/snapshot`` -> ``(camera, object)``, the camera a valid device id; else BadName."""
    if not isinstance(topic, str) or not topic.startswith(check_prefix(prefix) + "/"):
        raise BadName(f"topic {topic!r} is not under {prefix}/")
    parts = topic[len(prefix) + 1:].split("/")
    if len(parts) != 3 or parts[2] != _FRIGATE_SNAPSHOT:
        raise BadName(f"topic {topic!r} is not {prefix}/CAMERA/OBJECT/snapshot")
    return check_device(parts[0]), check_name(parts[1], "object name")


def parse_sensor_topic(topic: str, prefix: str = "privedge") -> tuple[str, str]:
    """Module-level shortcut for ``Names(prefix).parse_sensor_topic(topic)``."""
    return Names(prefix).parse_sensor_topic(topic)
