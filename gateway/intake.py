"""MQTT intake: a paho 2.x client with a persistent session and manual acknowledgement, feeding per-device
queues bounded by the broker's in-flight window.

Delivery: the client id is fixed (``privedge-gateway-{id}``) and the session persistent (MQTT 5:
``clean_start=False`` + Session Expiry; 3.1.1: ``clean_session=False``), and PUBACKs are sent by hand
(``manual_ack=True``) only once an input has been handed on (or rejected, or dropped and counted). An
input the broker delivered but the gateway had not handed on when it died is delivered again to the next
gateway process with the same id.

The paho network thread only parses the topic and appends ``(topic, payload, mid)`` to the device's queue:
no decoding, no I/O that can block.

Backpressure, not loss: the queues never drop. What the gateway holds (queued, being assembled into
utterances, waiting for Redis) is all unacknowledged, and the broker sends no more than
``receive_maximum`` unacknowledged messages (MQTT 5 Receive Maximum; with 3.1.1 the broker's
``max_inflight_messages``), so that window is the bound of the gateway's memory and the broker keeps the
rest of a backlog (a reconnect, a restart, an outage upstream) in its own queue. The gateway acknowledges
an input only once it is processed: handed on, rejected with a reason, or dropped by the per-kind policy
and counted. That policy (in the extraction loops): audio chunks are never dropped; a camera frame is
dropped only when stale (``image_max_age_s``, see gateway/staleness.py), which happens only under
overload sustained that long. (mosquitto 2.0.11 honours the window only up to the first acknowledgement:
each PUBACK then lets up to a whole window more in, so with that broker a long backlog can make the
gateway hold more than ``receive_maximum``; newer brokers and MQTT 5 clients should not.)

TLS (``mqtts://``): the client context comes from the ``mqtt_*_file`` settings (common.tls). A broker
certificate our CA did not sign ends start() at once; other failures (a broker that is not up yet, a
client certificate it refuses) are retried until ``connect_timeout_s``, and the error then names the last
of them.

Message ids are per connection: after a reconnect the broker resends the unacknowledged messages, so an
input received on an earlier connection is handed on but not acknowledged (its resent copy is, and
the duplicate is harmless: ids are stable and results are de-duplicated).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from common.tls import certificate_refused, endpoint
from gateway.config import GatewaySettings
from gateway.metrics import Metrics
from schemas import Names, SchemaError

log = logging.getLogger(__name__)


class IntakeError(RuntimeError):
    """The broker refused us or could not be reached in time."""


@dataclass(slots=True)
class Inbound:
    """One sensor message as received: nothing decoded yet."""

    kind: str           # "image" | "audio" (topic suffix)
    device: str
    topic: str
    payload: bytes
    mid: int            # MQTT packet id on connection ``epoch``
    qos: int
    epoch: int          # connection generation it arrived on
    received: float = field(default_factory=time.monotonic)  # monotonic seconds


class DeviceQueues:
    """FIFO queues of one modality, one per device, taken round-robin in micro-batches.

    Unbounded here on purpose: the broker's in-flight window bounds what can arrive unacknowledged, and
    round-robin taking gives each device its turn however long another device's queue is."""

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[Inbound]] = OrderedDict()
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Inbound) -> bool:
        """Append; returns False, keeping nothing, once closed (the input stays unacknowledged and is
        delivered again to the next session)."""
        with self._cond:
            if self._closed:
                return False
            q = self._queues.get(item.device)
            if q is None:
                q = self._queues[item.device] = deque()
            q.append(item)
            self._size += 1
            self._cond.notify()
        return True

    def take(self, max_items: int, wait_s: float, timeout_s: float) -> list[Inbound]:
        """Up to ``max_items`` inputs, round-robin over devices.

        Blocks up to ``timeout_s`` for the first input, then at most ``wait_s`` more for the batch to
        fill. Returns [] on timeout or when closed and empty.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._size > 0 or self._closed, timeout_s):
                return []
            if self._size < max_items and wait_s > 0 and not self._closed:
                self._cond.wait_for(lambda: self._size >= max_items or self._closed, wait_s)
            out: list[Inbound] = []
            while self._size and len(out) < max_items:
                for device in list(self._queues):
                    q = self._queues[device]
                    if q:
                        out.append(q.popleft())
                        self._size -= 1
                    if not q:
                        del self._queues[device]
                    if len(out) >= max_items:
                        break
            return out

    def depth(self) -> int:
        with self._cond:
            return self._size

    def close(self) -> None:
        """Wake every taker; take() then returns what is left and [] once empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Intake:
    """The gateway's MQTT client: availability, subscriptions, queues, acknowledgements, publishing."""

    def __init__(self, settings: GatewaySettings, names: Names, metrics: Metrics, kinds: tuple[str, ...],
                 report: Callable[[str, int | None, str, str, str], None]) -> None:
        """``kinds``: the topic suffixes served ("image", "audio"); ``report(device, seq, topic, reason,
        detail)`` publishes a rejection (it must not block)."""
        self.s = settings
        self.names = names
        self.metrics = metrics
        self.kinds = kinds
        self._report = report
        self.status_topic = names.gateway_status(settings.id)
        self.queues = {k: DeviceQueues() for k in kinds}
        self.epoch = 0
        self.accepting = True
        self.connected = threading.Event()
        self._handlers: list[tuple[str, Callable[[str, bytes], None]]] = []  # (topic filter, handler)
        self._first_connack = threading.Event()
        self._refusal: str | None = None
        v5 = settings.mqtt_protocol == "5"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id,
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, manual_ack=True)
        self.client.enable_logger(logging.getLogger("gateway.paho"))
        self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        if settings.mqtt_username:
            self.client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        self.client.reconnect_delay_set(1, 30)
        self._last_error: str | None = None
        if endpoint("MQTT", settings.broker)[2]:
            self.client.tls_set_context(settings.mqtt_tls.context())
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_log = self._on_log
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (network loop in paho's thread) and wait for the first successful CONNACK."""
        host, port, _ = endpoint("MQTT", self.s.broker)
        kwargs = {}
        if self.s.mqtt_protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.s.session_expiry_s
            props.ReceiveMaximum = self.s.receive_maximum
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect_async(host, port, keepalive=self.s.keepalive_s, **kwargs)
        self.client.loop_start()
        if not self._first_connack.wait(self.s.connect_timeout_s) or not self.connected.is_set():
            why = self._refusal or f"no CONNACK within {self.s.connect_timeout_s} s" + (
                f" (last error: {self._last_error})" if self._last_error else "")
            self.client.loop_stop()
            raise IntakeError(f"MQTT broker {self.s.broker} refused or unreachable: {why}")

    def stop_accepting(self) -> None:
        """Stop taking new inputs; the broker keeps them (unacknowledged) for our next session.

        We do not unsubscribe: that would remove the subscription from the persistent session and the
        broker would stop queueing for us while we are away.
        """
        self.accepting = False

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish ``offline`` (retained), wait for it, disconnect and stop the network thread."""
        for q in self.queues.values():
            q.close()
        if self.connected.is_set():
            info = self.client.publish(self.status_topic, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as e:
                log.warning("could not publish offline status: %s", e)
        self.client.disconnect()
        self.client.loop_stop()

    # paho callbacks (network thread: nothing here may block) ----------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            # A refusal is not a connection: do not announce online, remember why for start().
            self._refusal = str(reason_code)
            log.error("MQTT broker refused connection: %s", reason_code)
            self._first_connack.set()
            return
        self.epoch += 1
        log.info("MQTT connected to %s as %s (session present: %s, epoch %d)", self.s.broker,
                 self.s.client_id, flags.session_present, self.epoch)
        # Subscribe before announcing online: the broker handles our packets in order, so a sensor that
        # waits for ``online`` never publishes before the subscription exists (first session).
        topics = [*self.names.sensor_wildcards(self.kinds), *(f for f, _ in self._handlers)]
        client.subscribe([(t, 1) for t in topics])
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        self.connected.set()
        self._first_connack.set()

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this inside its ``except OSError`` around the connection attempt (it passes no error),
        # so the error is the exception being handled.
        error = sys.exception()
        self._last_error = str(error) if error is not None else self._last_error
        if certificate_refused(error) is not None and not self._first_connack.is_set():
            self._refusal = f"its certificate is not trusted (mqtt_ca_file, the URL's host): {error}"
            self._first_connack.set()

    def _on_log(self, client, userdata, level, message: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:  # e.g. "failed to receive on socket: [SSL: ...] certificate required"
            self._last_error = message

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code.is_failure:
            log.warning("MQTT disconnected: %s; paho reconnects", reason_code)
        else:
            log.info("MQTT disconnected")

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        for topic_filter, handler in self._handlers:  # control topics (Home Assistant's status, devices')
            if mqtt.topic_matches_sub(topic_filter, msg.topic):
                try:
                    handler(msg.topic, msg.payload)
                except Exception:  # noqa: BLE001 - a control message never stops the intake
                    log.exception("handling %s failed", msg.topic)
                client.ack(msg.mid, msg.qos)
                return
        if not self.accepting:
            return  # not acknowledged: the broker delivers it again to our next session
        try:
            topic = msg.topic
            device, kind = self.names.parse_sensor_topic(topic)
        except (SchemaError, UnicodeDecodeError) as e:
            reason = getattr(e, "reason", "bad name")
            self.metrics.inc("received")
            self._report(_device_of(msg), None, _safe_topic(msg), reason, str(e))
            client.ack(msg.mid, msg.qos)
            return
        q = self.queues.get(kind)
        if q is None:
            self.metrics.inc("received")
            self._report(device, None, topic, "no model", f"no bundle serves {kind} inputs")
            client.ack(msg.mid, msg.qos)
            return
        if q.put(Inbound(kind, device, topic, msg.payload, msg.mid, msg.qos, self.epoch)):
            self.metrics.inc("received")

    def on_topic(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        """Also subscribe to ``topic_filter`` (from the next connect: call before start) and give each of its
        messages to ``handler(topic, payload)`` on the network thread (it must not block); acknowledged."""
        self._handlers.append((topic_filter, handler))

    # acknowledgement and publishing (any thread) ----------------------------------------------
    def ack(self, items: list[Inbound]) -> None:
        """PUBACK each input received on the current connection; earlier ones are resent by the broker."""
        epoch = self.epoch
        for item in items:
            if item.qos and item.epoch == epoch:
                self.client.ack(item.mid, item.qos)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Queue a publish in paho (thread-safe, does not block on the network)."""
        return self.client.publish(topic, payload, qos=qos, retain=retain)


def _safe_topic(msg: mqtt.MQTTMessage) -> str:
    try:
        return msg.topic
    except UnicodeDecodeError:
        return repr(msg._topic)[:200]


def _device_of(msg: mqtt.MQTTMessage) -> str:
    parts = _safe_topic(msg).split("/")
    return parts[-2][:64] if len(parts) >= 2 else ""
