"""The demo's two observers, so that every figure it reports is measured, not estimated:

- :class:`Monitor`, an MQTT client like a home app: it sees every sensor message the broker delivers
  (inputs and raw bytes), every result (label, score, latency), the gateway's status and rejections;
- :class:`RedisTap`, which reads the feature streams the gateway writes to Redis and adds up the bytes
  of every entry (what actually went to the cloud), and counts what the workers dead-lettered.
"""
from __future__ import annotations

import collections
import json
import logging
import threading

import paho.mqtt.client as mqtt

from privedge.demo_view import Tally
from schemas import Names
from schemas.errors import SchemaError
from schemas.media import AudioChunk
from schemas.results import ErrorReport

log = logging.getLogger(__name__)


class Monitor:
    """Subscribes to the sensor, result and gateway topics of ``gateway`` on the broker at ``port``."""

    def __init__(self, port: int, names: Names, gateway: str, tally: Tally) -> None:
        self.names = names
        self.tally = tally
        self.status_topic = names.gateway_status(gateway)
        self.errors_topic = names.gateway_errors(gateway)
        # The gateway's JSON stats, the last one at its stop.
        self.stats_topic = names.gateway_stats(gateway)
        self.gateway_stats: dict = {}
        self.gateway_online = threading.Event()
        self.new_results: collections.deque[dict] = collections.deque(maxlen=1000)  # for the live view
        self.undecodable = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="privedge-demo-monitor")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        topics = [*self.names.sensor_wildcards(), self.names.result_wildcard(), self.status_topic,
                  self.errors_topic, self.stats_topic]
        client.subscribe([(t, 1) for t in topics])

    # paho's network thread: only counting and decoding here, the live view prints from new_results.
    def _on_message(self, client, userdata, msg) -> None:
        topic = msg.topic
        if topic == self.status_topic:
            (self.gateway_online.set if msg.payload == b"online" else self.gateway_online.clear)()
        elif topic == self.errors_topic:
            self.tally.add_rejected()
        elif topic == self.stats_topic:
            try:
                self.gateway_stats = json.loads(msg.payload)
            except ValueError:
                self.undecodable += 1
        elif self.names.is_result_topic(topic):
            try:
                result = json.loads(msg.payload)
            except ValueError:
                self.undecodable += 1
                return
            if self.tally.add_result(result):
                self.new_results.append(result)
        else:
            try:
                device, kind = self.names.parse_sensor_topic(topic)
                complete = kind == "image" or AudioChunk.decode(msg.payload).final
            except SchemaError:
                self.undecodable += 1
                return
            self.tally.add_raw(device, len(msg.payload), complete)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RedisTap:
    """Adds up the entries of the feature streams (every field name and value, in bytes) and counts the
    entries of the dead-letter streams (inputs a worker could not analyse), by reason."""

    def __init__(self, url: str, features: list[str], dead: list[str], tally: Tally, *,
                 every_s: float = 0.5) -> None:
        from common.redis_connection import RedisSettings

        self.client = RedisSettings.from_dsn(url).client()  # one Redis or a Cluster
        self.features = features
        self.dead = dead
        self.tally = tally
        self.every_s = every_s
        self.last = dict.fromkeys([*features, *dead], "-")
        self.new_dead: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)  # (reason, detail)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-redis-tap", daemon=True)

    def start(self) -> "RedisTap":
        self._thread.start()
        return self

    def _new_entries(self, stream: str):
        """Yield the batches of entries added to ``stream`` since the last call."""
        while True:
            start = self.last[stream] if self.last[stream] == "-" else f"({self.last[stream]}"
            entries = self.client.xrange(stream, min=start, max="+", count=1000)
            if not entries:
                return
            yield entries
            self.last[stream] = entries[-1][0].decode()

    def poll(self) -> None:
        """Count the entries added since the last poll."""
        for stream in self.features:
            for entries in self._new_entries(stream):
                nbytes = sum(len(k) + len(v) for _, fields in entries for k, v in fields.items())
                self.tally.add_cloud(len(entries), nbytes)
        for stream in self.dead:
            for entries in self._new_entries(stream):
                for _, fields in entries:
                    reason = fields.get(b"reason", b"?").decode(errors="replace")
                    try:
                        detail = ErrorReport.decode(fields.get(b"error", b"")).detail
                    except SchemaError:
                        detail = ""
                    self.tally.add_dead(reason)
                    self.new_dead.append((reason, detail))

    def _run(self) -> None:
        import redis

        while not self._stop.wait(self.every_s):
            try:
                self.poll()
            except redis.RedisError as e:  # counted at the final poll, which raises
                log.warning("reading the feature streams failed: %s", e)

    def stop(self) -> None:
        """Stop polling, then count what is left (Redis must still be up)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.poll()
        self.client.close()
