"""The sensor firmware's MQTT side: one connected device that publishes frames and utterances.

Usable as a library (the demo and the benchmarks drive it in-process) and by ``privedge sensor``.
Delivery: QoS 1; at most ``max_inflight`` messages unacknowledged by the broker, so a slow or absent
broker slows the sensor down instead of growing a queue or losing frames; paho keeps QoS 1 messages
across reconnects (with backoff) and resends them, and :meth:`SensorPublisher.flush` waits for all of
them. Availability: ``online`` retained on ``{p}/{device}/status`` after connect, ``offline`` as the
last will and on a clean close.

Identity: each start picks a fresh random ``boot`` id and numbers its messages from ``first_seq`` (0);
the gateway makes inference ids ``{gateway}/{device}/{boot}-{seq}``. A sensor keeps no state across
reboots, so a counter that survives them (or a clock) is not needed for ids to stay unique.

TLS (``mqtts://``, default port 8883): the broker's certificate is checked against ``ca_file`` (or the
system's CAs) and its hostname; ``cert_file``/``key_file`` are the device's certificate for a broker
that requires one. The files are read when the settings are made, so a missing one is a settings error
naming it. (The services build the same context in common.tls; the firmware imports none of privedge
but ``schemas`` and ``models``, so these few lines of ``ssl`` stand here on their own.)
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from schemas.media import AudioChunk, ImageFrame, encode_image, float_to_pcm16, split_pcm
from schemas.names import Names, check_device

log = logging.getLogger(__name__)


class PublisherError(RuntimeError):
    """Base of the publisher's failures."""


class ConnectError(PublisherError):
    """The broker could not be reached or refused the connection."""


class PublishTimeout(PublisherError):
    """The broker did not acknowledge a message within ``publish_timeout_s``."""


@dataclass(frozen=True)
class PublisherSettings:
    """How one sensor connects and publishes."""

    broker: str
    """``mqtt://HOST:PORT`` (or ``mqtts://`` for TLS)."""
    device: str
    """Device id: ``[A-Za-z0-9_-]``, 1-64 chars; also the MQTT username when credentials are set."""
    prefix: str = "privedge"
    qos: int = 1
    """1: the broker acknowledges every message (DESIGN.md's sensor topics are QoS 1)."""
    max_inflight: int = 20
    """Messages sent but not yet acknowledged; bounds memory and makes a slow broker slow us down."""
    publish_timeout_s: float = 60.0
    """How long to wait for an acknowledgement (reconnects included) before failing."""
    connect_timeout_s: float = 10.0
    """How long the first connection may take."""
    keepalive_s: int = 30
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    """Reconnect backoff doubles from min to max seconds (paho takes whole seconds)."""
    username: str | None = None
    password: str | None = None
    """Broker credentials; the CLI reads the password from PRIVEDGE_MQTT_PASSWORD, never a flag."""
    ca_file: str | None = None
    """CA certificate (PEM) that signed an ``mqtts://`` broker's; None: the system's CAs."""
    cert_file: str | None = None
    """The device's client certificate (PEM), for a broker that requires one (``require_certificate``)."""
    key_file: str | None = None
    """The private key (PEM) of ``cert_file``; None: in the same file."""
    first_seq: int | None = None
    """First sequence number; None = 0 (every start has a fresh ``boot``, so seqs may restart)."""
    boot: int | None = None
    """Boot id sent in every message; None = a fresh random one at each start. It goes into the
    inference id (``{gateway}/{device}/{boot}-{seq}``), so seqs that restart after a reboot cannot be
    taken for duplicates of what the sensor sent before (the gateway drops ids it has already seen)."""

    def __post_init__(self) -> None:
        check_device(self.device)
        Names(self.prefix)
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos}")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        if self.boot is not None and not 0 <= self.boot < 2**63:
            raise ValueError(f"boot must be in [0, 2**63), got {self.boot}")
        tls = host_port(self.broker)[2]
        if not tls and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError(f"TLS files are set but the broker {self.broker} is mqtt://: use mqtts://")
        if tls:
            self.tls_context()

    def tls_context(self) -> ssl.SSLContext:
        """The client context for an ``mqtts://`` broker; ValueError naming a file that cannot be read."""
        if self.key_file and not self.cert_file:
            raise ValueError(f"a key file ({self.key_file}) needs its certificate file too")
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot read the MQTT CA file {self.ca_file}: {e}") from e
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"cannot load the client certificate {self.cert_file} "
                                 f"(key {self.key_file or 'in the same file'}): {e}") from e
        return ctx

    @property
    def client_id(self) -> str:
        """Fixed per device, so a restarted sensor replaces its previous session at the broker."""
        return f"privedge-sensor-{self.device}"


def host_port(url: str) -> tuple[str, int, bool]:
    """``mqtt://HOST:PORT`` -> (host, port, tls); default ports 1883 / 8883."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker must look like mqtt://HOST:PORT, got {url!r}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as e:
        raise ValueError(f"bad port in broker url {url!r}") from e
    return parts.hostname, port, tls


class SensorPublisher:
    """A connected sensor. Use as a context manager, or call :meth:`connect` and :meth:`close`."""

    def __init__(self, settings: PublisherSettings) -> None:
        self.settings = settings
        self.names = Names(settings.prefix)
        self._seq = itertools.count(settings.first_seq or 0)
        # 48 random bits: two boots of one device collide with odds of about n**2 / 2**49.
        self.boot = settings.boot if settings.boot is not None else secrets.randbits(48)
        """This start's boot id, in every frame and chunk published."""
        self._utt = itertools.count(1)
        self._session = uuid.uuid4().hex[:8]
        self._cond = threading.Condition()
        self._acked: set[int] = set()
        # mids of status messages nobody waits for: their acks must not linger in _acked, where a
        # data message reusing the mid (mids wrap at 65535) would look acknowledged too early.
        self._untracked: set[int] = set()
        self._pending: collections.deque[int] = collections.deque()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._last_error: str | None = None
        self.sent = 0
        """Messages acknowledged by the broker."""
        self.bytes_sent = 0
        """Payload bytes of those messages."""
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.max_inflight_messages_set(s.max_inflight)
        client.reconnect_delay_set(min_delay=s.reconnect_min_s, max_delay=s.reconnect_max_s)
        client.will_set(self.names.status(s.device), b"offline", qos=1, retain=True)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if host_port(s.broker)[2]:
            client.tls_set_context(s.tls_context())
        client.on_log = self._on_log
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # paho callbacks: run on the network thread, never block -------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            log.error("broker refused %s: %s", self.settings.client_id, reason_code)
            return
        self._refused = None
        # publish() only queues the packet for the network thread; it does not wait. Its ack comes
        # through _on_publish on this same thread, after this callback returns.
        info = client.publish(self.names.status(self.settings.device), b"online", qos=1, retain=True)
        self._untracked.add(info.mid)
        self._connected.set()
        log.info("sensor %s connected to %s", self.settings.device, self.settings.broker)

    def _on_log(self, client, userdata, level, message: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:  # e.g. "failed to receive on socket: [SSL: ...] certificate required"
            self._last_error = message

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if reason_code != 0:
            log.warning("sensor %s disconnected (%s); reconnecting", self.settings.device, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if mid in self._untracked:
            self._untracked.discard(mid)
            return
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    # lifecycle ------------------------------------------------------------------------------------
    def connect(self) -> "SensorPublisher":
        """Connect (starting paho's network thread, which reconnects with backoff); raises ConnectError."""
        host, port, _ = host_port(self.settings.broker)
        try:
            self._client.connect(host, port, keepalive=self.settings.keepalive_s)
        except ssl.SSLCertVerificationError as e:
            raise ConnectError(f"broker {self.settings.broker}: its certificate is not trusted (the CA file, "
                               f"the URL's host): {e}") from e
        except OSError as e:
            raise ConnectError(f"cannot reach broker {self.settings.broker}: {e}") from e
        self._client.loop_start()
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while not self._connected.wait(0.05):
            if self._refused or time.monotonic() > deadline:
                self._client.loop_stop()
                why = f"refused: {self._refused}" if self._refused else "no CONNACK in time" + (
                    f" (last error: {self._last_error})" if self._last_error else "")
                raise ConnectError(f"broker {self.settings.broker} {why}")
        return self

    def close(self, timeout_s: float | None = None) -> None:
        """Wait for unacknowledged messages, mark the device ``offline`` (retained), disconnect."""
        try:
            self.flush(timeout_s)
            if self._connected.is_set():
                info = self._client.publish(self.names.status(self.settings.device), b"offline",
                                            qos=1, retain=True)
                info.wait_for_publish(timeout=5.0)
        except (PublisherError, RuntimeError, ValueError) as e:
            log.warning("sensor %s closing with undelivered messages: %s", self.settings.device, e)
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def __enter__(self) -> "SensorPublisher":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # publishing -----------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes) -> int:
        """Queue one message, then wait while more than ``max_inflight`` are unacknowledged; returns mid."""
        info = self._client.publish(topic, payload, qos=self.settings.qos)
        # NO_CONN: paho keeps the QoS>0 message and sends it after the reconnect.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise PublisherError(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
        if self.settings.qos == 0:
            self.sent += 1
            self.bytes_sent += len(payload)
            return info.mid
        with self._cond:
            self._pending.append(info.mid)
            self.bytes_sent += len(payload)
        self._wait(self.settings.max_inflight - 1, self.settings.publish_timeout_s)
        return info.mid

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until the broker has acknowledged everything published so far."""
        self._wait(0, self.settings.publish_timeout_s if timeout_s is None else timeout_s)

    def _wait(self, allowed: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                while self._pending and self._pending[0] in self._acked:
                    self._acked.discard(self._pending.popleft())
                    self.sent += 1
                if len(self._pending) <= allowed:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PublishTimeout(f"{len(self._pending)} messages unacknowledged after {timeout_s} s "
                                         f"(connected: {self.connected})")
                self._cond.wait(min(left, 0.5))

    def next_seq(self) -> int:
        return next(self._seq)

    def publish_image(self, image: np.ndarray | ImageFrame, *, codec: str = "png",
                      ts: float | None = None) -> ImageFrame:
        """Publish one frame: a uint8 HxW[xC] array (encoded with ``codec``) or a ready ImageFrame."""
        if isinstance(image, ImageFrame):
            frame = image
        else:
            frame = ImageFrame(device=self.settings.device, seq=self.next_seq(), boot=self.boot,
                               ts=time.time() if ts is None else ts, **encode_image(image, codec))
        self.publish(self.names.image(self.settings.device), frame.encode())
        return frame

    def publish_utterance(self, wave: np.ndarray, rate: int, *, chunk_ms: float = 100.0,
                          ts: float | None = None, pace: bool = False) -> list[AudioChunk]:
        """Publish one utterance as AudioChunks of ``chunk_ms`` ms under one ``utt``, the last ``final``.

        ``wave``: float (frames,) in [-1, 1] or int16, mono, at ``rate`` Hz; (frames, channels) for
        multi-channel. ``pace=True`` sends chunks in real time, as a live microphone would.
        """
        arr = np.asarray(wave)
        channels = 1 if arr.ndim == 1 else int(arr.shape[1])
        pieces = split_pcm(float_to_pcm16(arr), rate=rate, channels=channels, chunk_ms=chunk_ms)
        utt = f"{self.settings.device}-{self._session}-{next(self._utt)}"
        start = time.time() if ts is None else ts
        chunks = []
        for i, piece in enumerate(pieces):
            offset = i * chunk_ms / 1000.0
            if pace:
                time.sleep(max(0.0, start + offset - time.time()))
            chunk = AudioChunk(device=self.settings.device, seq=self.next_seq(), boot=self.boot,
                               ts=start + offset, utt=utt,
                               rate=int(rate), width=2, channels=channels, codec="pcm_s16le",
                               final=i == len(pieces) - 1, data=piece)
            self.publish(self.names.audio(self.settings.device), chunk.encode())
            chunks.append(chunk)
        return chunks


TLS_ENV = {"ca_file": "PRIVEDGE_MQTT_CA_FILE", "cert_file": "PRIVEDGE_MQTT_CERT_FILE",
           "key_file": "PRIVEDGE_MQTT_KEY_FILE"}
"""TLS setting -> its environment variable (the gateway's names; ``PRIVEDGE_MQTT_CA`` is read too)."""


def settings_from_env(broker: str, device: str, **kw) -> PublisherSettings:
    """Settings with credentials from PRIVEDGE_MQTT_USERNAME (default: the device id) / _PASSWORD, and the
    TLS files from :data:`TLS_ENV` unless ``kw`` gives them (a None in ``kw`` means not given)."""
    password = os.environ.get("PRIVEDGE_MQTT_PASSWORD")
    username = os.environ.get("PRIVEDGE_MQTT_USERNAME") or (device if password else None)
    tls = {key: kw.pop(key, None) or os.environ.get(env) or None for key, env in TLS_ENV.items()}
    tls["ca_file"] = tls["ca_file"] or os.environ.get("PRIVEDGE_MQTT_CA") or None
    return PublisherSettings(broker=broker, device=device, username=username, password=password, **tls, **kw)
