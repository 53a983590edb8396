"""``privedge sensor frigate``: a Frigate NVR's cameras as privedge cameras.

    privedge sensor frigate --broker mqtt://HOST:PORT [--frigate-broker mqtt://HOST:PORT]
                            [--frigate-prefix frigate] [--cameras front,garden] [--prefix privedge]
                            [--count N] [--max-inflight N]

Frigate publishes a JPEG of each tracked object on ``{frigate}/{camera}/{object}/snapshot``. The bridge
subscribes to all of them (``--cameras`` keeps a few), checks that each payload is a JPEG that decodes,
and republishes it unchanged as an ImageFrame (codec ``jpeg``, capture time = arrival) of device
``{camera}``, QoS 1, through one :class:`sensors.publisher.SensorPublisher` per camera: each camera gets
its own ``online``/``offline`` status and boot id, as if it were a privedge camera. A camera name that
is not a valid device id, a garbled JPEG or an oversize frame is reported (logged, counted) and skipped;
the bridge keeps running. Retained snapshots (Frigate retains the last one per object) are old frames
the broker replays on subscribing, so they are skipped too.

Frigate's broker may be another one than privedge's (``--frigate-broker``, default ``--broker``).
Credentials for privedge's broker come from the environment as for the other sensors.

Exit status: 0 stopped (SIGINT/SIGTERM) or ``--count`` reached, 2 bad arguments, 3 a broker unreachable
or refusing, 4 messages not acknowledged in time.
"""
from __future__ import annotations

import argparse
import io
import logging
import queue
import signal
import sys
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from schemas.errors import SchemaError
from schemas.media import ImageFrame
from schemas.names import FRIGATE_PREFIX, check_device, frigate_snapshot_wildcard, parse_frigate_snapshot
from sensors.publisher import ConnectError, PublisherError, SensorPublisher, host_port, settings_from_env

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ARGS, EXIT_CONNECT, EXIT_PUBLISH = 0, 2, 3, 4
QUEUE_SIZE = 64
"""Snapshots received but not yet republished; beyond it new ones are dropped (and counted)."""
_CHANNELS = {"L": 1, "RGB": 3}


class BadSnapshot(ValueError):
    """A snapshot payload that is not a decodable JPEG."""


def jpeg_fields(payload: bytes) -> dict:
    """ImageFrame fields ``codec, w, h, ch, data`` for a JPEG payload, checked by decoding it fully."""
    try:
        with Image.open(io.BytesIO(payload), formats=["JPEG"]) as im:
            im.load()
            size, mode = im.size, im.mode
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for corrupt files
        raise BadSnapshot(f"not a decodable JPEG ({len(payload)} bytes): {e}") from e
    if mode not in _CHANNELS:
        raise BadSnapshot(f"JPEG in colour mode {mode}, not grey or RGB")
    return {"codec": "jpeg", "w": size[0], "h": size[1], "ch": _CHANNELS[mode], "data": bytes(payload)}


class FrigateBridge:
    """Subscribes to Frigate's snapshots and republishes them; :meth:`run` until stopped."""

    def __init__(self, broker: str, *, frigate_broker: str | None = None, frigate_prefix: str = FRIGATE_PREFIX,
                 cameras: set[str] | None = None, prefix: str = "privedge", max_inflight: int = 20) -> None:
        self.broker, self.frigate_broker = broker, frigate_broker or broker
        host_port(self.broker), host_port(self.frigate_broker)  # bad URLs fail here
        self.frigate_prefix = frigate_prefix
        self.wildcard = frigate_snapshot_wildcard(frigate_prefix)
        self.cameras = {check_device(c) for c in cameras} if cameras else None
        self.prefix, self.max_inflight = prefix, max_inflight
        self.counts: Counter[str] = Counter()
        """``republished``, ``garbled``, ``bad_topic``, ``retained``, ``other_camera``, ``dropped``."""
        self.per_camera: Counter[str] = Counter()
        self._inbox: queue.Queue[tuple[str, bytes, float]] = queue.Queue(QUEUE_SIZE)
        self._publishers: dict[str, SensorPublisher] = {}
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"privedge-frigate-bridge-{prefix}",
                                   protocol=mqtt.MQTTv311, clean_session=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self._client.on_message = self._on_message

    # paho callbacks: network thread, never block ---------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            log.error("Frigate broker %s refused the bridge: %s", self.frigate_broker, reason_code)
            return
        client.subscribe(self.wildcard, qos=1)  # again after every reconnect (clean session)
        log.info("subscribed to %s on %s", self.wildcard, self.frigate_broker)

    def _on_message(self, client, userdata, msg) -> None:
        if msg.retain:
            self.counts["retained"] += 1
            return
        try:
            self._inbox.put_nowait((msg.topic, bytes(msg.payload), time.time()))
        except queue.Full:
            self.counts["dropped"] += 1
            log.warning("bridge queue full: dropping a snapshot from %s", msg.topic)

    # ------------------------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect to Frigate's broker and subscribe (and to privedge's for each ``--cameras`` camera)."""
        host, port, tls = host_port(self.frigate_broker)
        if tls:
            self._client.tls_set()
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as e:
            raise ConnectError(f"cannot reach Frigate broker {self.frigate_broker}: {e}") from e
        self._client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._subscribed.wait(0.05):
            if self._refused or time.monotonic() > deadline:
                self._client.loop_stop()
                why = f"refused: {self._refused}" if self._refused else "did not subscribe us in time"
                raise ConnectError(f"Frigate broker {self.frigate_broker} {why}")
        for camera in sorted(self.cameras or ()):
            self._publisher(camera)

    def _publisher(self, camera: str) -> SensorPublisher:
        pub = self._publishers.get(camera)
        if pub is None:
            settings = settings_from_env(self.broker, camera, prefix=self.prefix, max_inflight=self.max_inflight)
            pub = SensorPublisher(settings).connect()  # ConnectError propagates: privedge's broker is down
            self._publishers[camera] = pub
            log.info("camera %s: publishing as device %s", camera, camera)
        return pub

    def handle(self, topic: str, payload: bytes, ts: float) -> ImageFrame | None:
        """Republish one snapshot; returns the frame, or None when it was reported and skipped."""
        try:
            camera, obj = parse_frigate_snapshot(topic, self.frigate_prefix)
        except SchemaError as e:
            self.counts["bad_topic"] += 1
            log.warning("skipping snapshot: %s", e)
            return None
        if self.cameras is not None and camera not in self.cameras:
            self.counts["other_camera"] += 1
            return None
        try:
            fields = jpeg_fields(payload)
            pub = self._publisher(camera)
            frame = ImageFrame(device=camera, seq=pub.next_seq(), boot=pub.boot, ts=ts, **fields)
        except (BadSnapshot, SchemaError) as e:
            self.counts["garbled"] += 1
            log.warning("skipping %s snapshot of camera %s: %s", obj, camera, e)
            return None
        pub.publish_image(frame)
        self.counts["republished"] += 1
        self.per_camera[camera] += 1
        return frame

    def run(self, stop: threading.Event, count: int | None = None) -> None:
        """Republish until ``stop`` is set or ``count`` frames went out; raises PublisherError."""
        while not stop.is_set() and (count is None or self.counts["republished"] < count):
            try:
                topic, payload, ts = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            self.handle(topic, payload, ts)

    def close(self, timeout_s: float = 5.0) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        for pub in self._publishers.values():
            pub.close(timeout_s=timeout_s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privedge sensor frigate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True, help="privedge's home broker, mqtt://HOST:PORT (mqtts:// for TLS)")
    p.add_argument("--frigate-broker", default=None, help="Frigate's broker (default: --broker)")
    p.add_argument("--frigate-prefix", default=FRIGATE_PREFIX, help="Frigate's topic prefix (default %(default)s)")
    p.add_argument("--cameras", default=None, help="comma-separated Frigate camera names to bridge (default: all)")
    p.add_argument("--prefix", default="privedge", help="privedge topic prefix (default %(default)s)")
    p.add_argument("--count", type=int, default=None, help="stop after N republished frames")
    p.add_argument("--max-inflight", type=int, default=20, help="unacknowledged messages allowed per camera")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None, stop: threading.Event | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = stop or threading.Event()
    try:
        cameras = {c.strip() for c in args.cameras.split(",") if c.strip()} if args.cameras else None
        bridge = FrigateBridge(args.broker, frigate_broker=args.frigate_broker, frigate_prefix=args.frigate_prefix,
                               cameras=cameras, prefix=args.prefix, max_inflight=args.max_inflight)
    except (SchemaError, ValueError) as e:
        print(f"privedge sensor frigate: {e}", file=sys.stderr)
        return EXIT_ARGS
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    status = EXIT_OK
    try:
        bridge.connect()
        bridge.run(stop, args.count)
    except ConnectError as e:
        print(f"privedge sensor frigate: {e}", file=sys.stderr)
        status = EXIT_CONNECT
    except PublisherError as e:
        print(f"privedge sensor frigate: {e}", file=sys.stderr)
        status = EXIT_PUBLISH
    finally:
        bridge.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("frigate bridge: %s; per camera %s", dict(bridge.counts), dict(bridge.per_camera))
    return status
