"""The Frigate bridge against a real mosquitto, fed by a fake Frigate that publishes JPEG snapshots."""
from __future__ import annotations

import io
import threading

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from schemas import ImageFrame, Names
from schemas.errors import BadName
from schemas.names import frigate_snapshot_wildcard, parse_frigate_snapshot
from sensors import cli, frigate
from tests.gateway_fixtures import wait_until
from tests.test_sensors import Collector

pytestmark = pytest.mark.integration


def jpeg(seed: int, size=(80, 60)) -> tuple[bytes, np.ndarray]:
    """A JPEG of smooth random colours (smooth, so that JPEG keeps it close) and its pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue(), pixels


class FakeFrigate:
    """Publishes like Frigate does: ``frigate/<camera>/<object>/snapshot`` with a JPEG payload."""

    def __init__(self, url: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-frigate")
        host, port = url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()

    def snapshot(self, camera: str, obj: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(f"frigate/{camera}/{obj}/snapshot", payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_frigate_topic_names():
    assert frigate_snapshot_wildcard() == "frigate/+/+/snapshot"
    assert frigate_snapshot_wildcard("nvr/frigate") == "nvr/frigate/+/+/snapshot"
    assert parse_frigate_snapshot("frigate/front_door/person/snapshot") == ("front_door", "person")
    for bad in ("frigate/front_door/person", "frigate/a/b/c/snapshot", "other/cam/person/snapshot",
                "frigate/bad.name/person/snapshot", "frigate/gateway/person/snapshot"):
        with pytest.raises(BadName):
            parse_frigate_snapshot(bad)


def test_bridge_republishes_snapshots_as_frames_per_camera_and_skips_garbled(mosquitto):
    names = Names()
    sub = Collector(mosquitto.url, [names.image("front_door"), names.image("garden"), names.image("attic")])
    fake = FakeFrigate(mosquitto.url)
    old, _ = jpeg(99)
    fake.snapshot("front_door", "person", old, retain=True)  # Frigate's retained last snapshot: an old frame
    bridge = frigate.FrigateBridge(mosquitto.url, cameras={"front_door", "garden"})
    bridge.connect()
    stop = threading.Event()
    runner = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    runner.start()
    try:
        sent = []
        for i, (camera, obj) in enumerate([("front_door", "person"), ("garden", "cat"), ("front_door", "car")]):
            payload, pixels = jpeg(i)
            fake.snapshot(camera, obj, payload)
            sent.append((camera, pixels))
            if i == 0:
                fake.snapshot("front_door", "person", payload[: len(payload) // 2])  # truncated JPEG
                fake.snapshot("garden", "dog", b"\xff\xd8 not really a jpeg")
                fake.snapshot("attic", "person", payload)  # not in --cameras
                fake.snapshot("bad.name", "person", payload)  # not a device id
        frames = [ImageFrame.decode(m.payload) for m in sub.take(3)]
        assert wait_until(lambda: bridge.counts["bad_topic"] == 1)
    finally:
        stop.set()
        runner.join(10)
        bridge.close()
        fake.close()
        sub.close()
    assert bridge.counts["garbled"] == 2 and bridge.counts["other_camera"] == 1
    assert bridge.counts["retained"] == 1 and bridge.counts["dropped"] == 0
    assert dict(bridge.per_camera) == {"front_door": 2, "garden": 1}
    assert sub.messages.empty()
    by_camera: dict[str, list[ImageFrame]] = {}
    for f in frames:
        by_camera.setdefault(f.device, []).append(f)
    assert [f.seq for f in by_camera["front_door"]] == [0, 1] and [f.seq for f in by_camera["garden"]] == [0]
    for camera, pixels in sent:
        frame = by_camera[camera].pop(0)
        got = frame.pixels()
        assert frame.codec == "jpeg" and got.shape == (60, 80, 3)
        assert np.abs(got.astype(int) - pixels.astype(int)).mean() < 3  # the very snapshot, JPEG-close


def test_bridge_cli_stops_after_count_and_marks_cameras_offline(mosquitto):
    names = Names()
    sub = Collector(mosquitto.url, [names.image("porch"), names.status("porch")])
    fake = FakeFrigate(mosquitto.url)
    rc: list[int] = []
    runner = threading.Thread(target=lambda: rc.append(cli.main(
        ["frigate", "--broker", mosquitto.url, "--count", "2", "--log-level", "WARNING"])), daemon=True)
    runner.start()
    try:
        payload, _ = jpeg(5)
        # the bridge subscribes after it starts: keep publishing until it has passed two on
        frames = []
        while len(frames) < 2 and runner.is_alive():
            fake.snapshot("porch", "person", payload)
            try:
                msg = sub.messages.get(timeout=0.5)
            except Exception:
                continue
            if msg.topic == names.image("porch"):
                frames.append(ImageFrame.decode(msg.payload))
        runner.join(20)
        assert not runner.is_alive() and rc == [frigate.EXIT_OK]
        statuses: list[bytes] = []

        def offline_seen() -> bool:
            while not sub.messages.empty():
                msg = sub.messages.get()
                if msg.topic == names.status("porch"):
                    statuses.append(msg.payload)
            return statuses[-1:] == [b"offline"]
        assert wait_until(offline_seen, timeout=10)
    finally:
        fake.close()
        sub.close()
    assert [f.device for f in frames] == ["porch", "porch"]


def test_bridge_refuses_bad_arguments_and_unreachable_brokers(mosquitto, capsys):
    assert frigate.main(["--broker", "http://nope"]) == frigate.EXIT_ARGS
    assert frigate.main(["--broker", mosquitto.url, "--cameras", "ok,bad.name"]) == frigate.EXIT_ARGS
    assert frigate.main(["--broker", "mqtt://127.0.0.1:9"]) == frigate.EXIT_CONNECT
    assert "Frigate broker" in capsys.readouterr().err
