"""Sensor clients against a real mosquitto: what they publish decodes back to what they read."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import soundfile
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from broker import servers
from schemas import AudioChunk, ImageFrame, Names
from schemas.media import pcm16_to_array
from sensors import cli
from sensors.publisher import PublisherSettings, SensorPublisher

pytestmark = pytest.mark.integration


class Collector:
    """A paho subscriber that hands every message to a queue (nothing blocks in its callback)."""

    def __init__(self, url: str, topics: list[str], client_id: str | None = None) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        # A fixed client id gets a persistent session: the broker keeps its QoS 1 messages across
        # restarts (persistence is on in the fixture).
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{time.time_ns()}",
                                  clean_session=client_id is None)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        host, port = url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("subscription not acknowledged")

    def take(self, n: int, timeout: float = 20.0) -> list[mqtt.MQTTMessage]:
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n:
            out.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "frames" / "nested"
    folder.mkdir(parents=True)
    arrays = []
    for i in range(5):
        arr = rng.integers(0, 256, size=(12, 10 + i), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"f{i}.png")
        arrays.append(arr)
    return tmp_path / "frames", arrays


@pytest.fixture
def waves(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "wavs"
    folder.mkdir()
    arrays = []
    for i, n in enumerate((1000, 2400, 160)):
        wave = rng.integers(-32768, 32767, size=n, dtype=np.int16)
        soundfile.write(folder / f"{i}.wav", wave, 8000, subtype="PCM_16")
        arrays.append(wave)
    return folder, arrays


def test_camera_publishes_frames_that_decode_to_the_same_pixels(mosquitto, images):
    folder, arrays = images
    sub = Collector(mosquitto.url, [Names().image("cam1")])
    try:
        rc = cli.main(["camera", "--broker", mosquitto.url, "--device", "cam1", "--source", str(folder),
                       "--rate", "0", "--count", "4"])
        assert rc == 0
        frames = [ImageFrame.decode(m.payload) for m in sub.take(4)]
        with pytest.raises(queue.Empty):  # --count 4 means exactly 4
            sub.take(1, timeout=0.5)
    finally:
        sub.close()
    assert [f.device for f in frames] == ["cam1"] * 4
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    for frame, want in zip(frames, arrays[:4]):
        assert frame.codec == "png" and np.array_equal(frame.pixels(), want)


def test_camera_loop_repeats_and_raw_codec(mosquitto, images):
    folder, arrays = images
    sub = Collector(mosquitto.url, [Names("home").image("cam2")])
    try:
        assert cli.main(["camera", "--broker", mosquitto.url, "--device", "cam2", "--source", str(folder),
                         "--rate", "0", "--count", "7", "--loop", "--codec", "raw", "--prefix", "home"]) == 0
        frames = [ImageFrame.decode(m.payload) for m in sub.take(7)]
    finally:
        sub.close()
    want = arrays + arrays[:2]
    assert all(np.array_equal(f.pixels(), w) for f, w in zip(frames, want))


def test_mic_chunks_reassemble_to_the_same_samples(mosquitto, waves):
    folder, arrays = waves
    sub = Collector(mosquitto.url, [Names().audio("mic1")])
    try:
        assert cli.main(["mic", "--broker", mosquitto.url, "--device", "mic1", "--source", str(folder),
                         "--rate", "0", "--chunk-ms", "50"]) == 0
        # 1000 samples at 8 kHz = 3 chunks of 400, 2400 = 6, 160 = 1
        chunks = [AudioChunk.decode(m.payload) for m in sub.take(10)]
        with pytest.raises(queue.Empty):
            sub.take(1, timeout=0.5)
    finally:
        sub.close()
    by_utt: dict[str, list[AudioChunk]] = {}
    for c in chunks:
        by_utt.setdefault(c.utt, []).append(c)
    assert len(by_utt) == 3
    for utt_chunks, want in zip(by_utt.values(), arrays):
        assert [c.final for c in utt_chunks].count(True) == 1 and utt_chunks[-1].final
        assert all(c.rate == 8000 and c.channels == 1 for c in utt_chunks)
        got = pcm16_to_array(b"".join(c.data for c in utt_chunks))[:, 0]
        assert np.array_equal(got, want)


def test_status_online_retained_and_last_will_offline(mosquitto):
    names = Names()
    settings = PublisherSettings(broker=mosquitto.url, device="cam9", first_seq=0, keepalive_s=1)
    pub = SensorPublisher(settings).connect()
    # A subscriber arriving later still sees the retained status.
    sub = Collector(mosquitto.url, [names.status("cam9")])
    try:
        assert sub.take(1)[0].payload == b"online"
        assert pub.publish_image(np.zeros((2, 2), np.uint8)).seq == 0
        pub.flush()
        # Vanish without a clean disconnect: the broker publishes the will.
        pub._client.loop_stop()
        pub._client.socket().close()
        msg = sub.take(1, timeout=10)[0]
        assert msg.payload == b"offline"
    finally:
        sub.close()
    late = Collector(mosquitto.url, [names.status("cam9")])
    try:
        msg = late.take(1)[0]
        assert msg.payload == b"offline" and msg.retain
    finally:
        late.close()


def test_clean_close_marks_offline(mosquitto):
    with SensorPublisher(PublisherSettings(broker=mosquitto.url, device="mic7")) as pub:
        pub.publish_utterance(np.zeros(100, np.float32), 8000)
    sub = Collector(mosquitto.url, [Names().status("mic7")])
    try:
        msg = sub.take(1)[0]
        assert msg.payload == b"offline" and msg.retain
    finally:
        sub.close()


def test_bad_source_and_broker_give_clear_exit_codes(mosquitto, images, tmp_path, capsys):
    folder, _ = images
    assert cli.main(["camera", "--broker", mosquitto.url, "--device", "c", "--source",
                     str(tmp_path / "missing")]) == cli.EXIT_SOURCE
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["mic", "--broker", mosquitto.url, "--device", "m", "--source",
                     str(tmp_path / "empty")]) == cli.EXIT_SOURCE
    assert "no .wav files" in capsys.readouterr().err
    assert cli.main(["camera", "--broker", mosquitto.url, "--device", "bad/id", "--source",
                     str(folder)]) == cli.EXIT_SOURCE
    assert "bad device id" in capsys.readouterr().err
    mosquitto.stop()
    assert cli.main(["camera", "--broker", mosquitto.url, "--device", "c", "--source",
                     str(folder)]) == cli.EXIT_CONNECT
    assert "cannot reach broker" in capsys.readouterr().err


def test_synthetic_sources_publish_generated_data(mosquitto, monkeypatch):
    from models.data.samples import Samples

    faces = np.random.default_rng(3).random((3, 1, 64, 64), dtype=np.float32)
    speech = [np.linspace(-0.5, 0.5, 800, dtype=np.float32)]
    fake = {"image": Samples("image", faces, np.zeros(3, np.int64), np.zeros(3, np.int64), ["a"], ["p"], None),
            "speech": Samples("speech", speech, np.zeros(1, np.int64), np.zeros(1, np.int64), ["0"], ["p"], 8000)}
    monkeypatch.setattr("sensors.sources._load_synthetic", lambda modality: fake[modality])
    sub = Collector(mosquitto.url, [Names().image("cam3"), Names().audio("mic3")])
    try:
        assert cli.main(["camera", "--broker", mosquitto.url, "--device", "cam3", "--source", "synthetic",
                         "--rate", "0"]) == 0
        assert cli.main(["mic", "--broker", mosquitto.url, "--device", "mic3", "--source", "synthetic",
                         "--rate", "0", "--chunk-ms", "1000"]) == 0
        msgs = sub.take(4)
    finally:
        sub.close()
    frames = [ImageFrame.decode(m.payload) for m in msgs if m.topic.endswith("/image")]
    chunk, = [AudioChunk.decode(m.payload) for m in msgs if m.topic.endswith("/audio")]
    assert [f.pixels().shape for f in frames] == [(64, 64)] * 3
    assert np.abs(frames[0].pixels() / 255.0 - faces[0, 0]).max() <= 0.5 / 255 + 1e-6
    assert chunk.final and np.abs(chunk.samples()[:, 0] / 32767.0 - speech[0]).max() < 1e-4


@pytest.fixture
def persistent_broker(tmp_path):
    """A broker with persistence in its own directory (servers.mosquitto runs it as the invoking user,
    so it can write there also when the tests run as root)."""
    server = servers.mosquitto(tmp_path / "pmosq")
    yield server
    server.stop()


def test_messages_published_while_the_broker_is_down_are_delivered(persistent_broker):
    """QoS 1 messages queued during a broker outage reach a persistent subscriber after the restart."""
    mosquitto = persistent_broker
    names = Names()
    sub = Collector(mosquitto.url, [names.image("cam5")], client_id="test-persistent-sub")
    pub = SensorPublisher(PublisherSettings(broker=mosquitto.url, device="cam5", first_seq=100,
                                            reconnect_max_s=1)).connect()
    try:
        mosquitto.stop()
        deadline = time.monotonic() + 10
        while pub.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pub.connected
        for i in range(3):
            pub.publish_image(np.full((3, 3), i, np.uint8))
        mosquitto.start()
        pub.flush(timeout_s=20)
        frames = [ImageFrame.decode(m.payload) for m in sub.take(3, timeout=20)]
    finally:
        pub.close(timeout_s=2)
        sub.close()
    assert [f.seq for f in frames] == [100, 101, 102]
    assert [int(f.pixels()[0, 0]) for f in frames] == [0, 1, 2]


def test_real_folders_orl_and_fsdd(mosquitto, data_dir):
    sub = Collector(mosquitto.url, [Names().image("orl"), Names().audio("fsdd")])
    try:
        assert cli.main(["camera", "--broker", mosquitto.url, "--device", "orl", "--source",
                         str(data_dir / "orl"), "--rate", "0", "--count", "2", "--codec", "jpeg"]) == 0
        assert cli.main(["mic", "--broker", mosquitto.url, "--device", "fsdd", "--source",
                         str(data_dir / "fsdd" / "recordings"), "--rate", "0", "--count", "1"]) == 0
        msgs = sub.take(2)
        chunks = []
        while not chunks or not chunks[-1].final:
            chunks.append(AudioChunk.decode(sub.take(1)[0].payload))
    finally:
        sub.close()
    frames = [ImageFrame.decode(m.payload) for m in msgs]
    assert [f.pixels().shape for f in frames] == [(112, 92)] * 2  # ORL faces are 92x112 gray
    assert chunks[0].rate == 8000 and len({c.utt for c in chunks}) == 1
    first = sorted((data_dir / "fsdd" / "recordings").rglob("*.wav"))[0]  # the folder source's order
    want, rate = soundfile.read(str(first), dtype="int16")
    assert rate == 8000
    assert np.array_equal(pcm16_to_array(b"".join(c.data for c in chunks))[:, 0], want)


def test_sigterm_stops_a_looping_sensor_cleanly(mosquitto, images):
    import signal
    import subprocess
    import sys

    folder, _ = images
    sub = Collector(mosquitto.url, [Names().image("cam8"), Names().status("cam8")])
    proc = subprocess.Popen([sys.executable, "-m", "privedge.cli", "sensor", "camera", "--broker", mosquitto.url,
                             "--device", "cam8", "--source", str(folder), "--loop", "--rate", "50"],
                            stderr=subprocess.PIPE, text=True)
    try:
        first = sub.take(4, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read()
        seen = [m.payload for m in first]
        while True:
            msg = sub.take(1, timeout=10)[0]
            seen.append(msg.payload)
            if msg.payload == b"offline":
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    assert seen[0] == b"online" and seen[-1] == b"offline"
    frames = [ImageFrame.decode(p) for p in seen[1:-1]]
    assert len(frames) >= 3 and all(f.device == "cam8" for f in frames)
