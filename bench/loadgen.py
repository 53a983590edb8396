"""Load generation for the pipeline benchmark: pre-encoded inputs, a paced or windowed MQTT publisher,
and a results listener that timestamps every Result as it arrives.

Inputs are encoded once (JPEG frames, pcm_s16le chunks) so that the generator spends its CPU on
publishing, not on codecs; only the msgpack envelope (``seq``, ``ts``) is built per message. Three kinds:
``image`` (face crops: ORL's photos, taken whole by the gateway), ``speech`` (FSDD utterances) and
``scenes`` (640x480 camera scenes with one face each, :mod:`bench.scenes`: real ORL / LFW faces on
photographs when the data is there, else procedural ones), which the gateway's face stage searches,
answering each face it sends with a result of its own and a frame without one with a ``no_face`` result.
The listener counts results (inferences) and, apart, the inputs they answer (frames, utterances). Publishing
goes through :class:`sensors.publisher.SensorPublisher` (QoS 1, at most ``max_inflight`` unacknowledged
messages), the same client a real sensor uses. Latency is a Result's arrival on MQTT minus its ``ts``,
the capture time the generator stamped on the input.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import paho.mqtt.client as mqtt

from schemas.media import AudioChunk, ImageFrame, encode_image, float_to_pcm16, split_pcm
from schemas.names import Names
from sensors.publisher import PublisherSettings, SensorPublisher

REPO = Path(__file__).resolve().parents[1]


SCENE_SIZE = (640, 480)
SCENE_FACES = 1
BUNDLE_MODALITY = {"image": "image", "speech": "speech", "scenes": "image"}
"""The bundle modality each kind of input needs."""


@dataclass(frozen=True)
class Inputs:
    """The benchmark's inputs for one modality, already encoded for the wire.

    image: ``frames`` holds ImageFrame fields without ``device/seq/ts``; speech: ``utterances`` holds,
    per utterance, its pcm_s16le chunk payloads and the audio format.
    """

    modality: str
    source: str
    frames: list[dict] = field(default_factory=list)
    utterances: list[list[bytes]] = field(default_factory=list)
    rate: int = 8000
    raws: list = field(default_factory=list)
    """The decoded media (uint8 images or (float wave, rate)), for measuring the extractor alone."""
    kind: str = ""
    """``image``, ``speech`` or ``scenes`` (image frames searched for faces); default: the modality."""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", self.modality)

    def __len__(self) -> int:
        return len(self.frames) if self.modality == "image" else len(self.utterances)

    @property
    def audio_seconds(self) -> float | None:
        """Mean length of the utterances in seconds (speech), None for images."""
        if self.modality != "speech" or not self.raws:
            return None
        return sum(len(w) / r for w, r in self.raws) / len(self.raws)


def default_data_dir() -> Path | None:
    """The shared real datasets beside the repository, when they are there."""
    d = REPO.parent / "shared" / "data"
    return d if (d / "orl").is_dir() and (d / "fsdd").is_dir() else None


def _procedural(modality: str, n: int, seed: int = 0) -> list:
    """Stand-in media when no dataset is at hand: textured 112x92 faces-sized frames, or 0.6 s of
    noisy harmonic tones at 8 kHz (the extractor's cost does not depend on the content)."""
    rng = np.random.default_rng(seed)
    if modality == "image":
        yy, xx = np.mgrid[0:112, 0:92]
        return [np.clip(128 + 60 * np.sin(xx / (3 + i) + yy / 7) + rng.normal(0, 20, (112, 92)), 0, 255)
                .astype(np.uint8) for i in range(n)]
    t = np.arange(int(8000 * 0.6)) / 8000
    return [((0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.02 * rng.normal(size=t.size))
             .astype(np.float32), 8000) for i in range(n)]


def scene_inputs(n: int, data: str | Path | None, seed: int = 0) -> Inputs:
    """``n`` JPEG camera scenes of SCENE_SIZE with SCENE_FACES face each: ORL / LFW faces when real data is
    asked for (``data`` not None) and ``bench.scenes`` finds both in its data folder, else procedural ones."""
    from bench import scenes

    real = data is not None and (scenes.DATA / "orl").is_dir() and (scenes.DATA / "lfw").is_dir()
    rng = np.random.default_rng([seed, 23])
    if real:
        made = [scenes.composite(rng, SCENE_SIZE, SCENE_FACES, "test") for _ in range(n)]
    else:
        made = [scenes.synthetic_composite(rng, SCENE_SIZE, SCENE_FACES, seed) for _ in range(n)]
    w, h = SCENE_SIZE
    source = (f"scenes {w}x{h}, {SCENE_FACES} face each: "
              + ("ORL and LFW faces" if real else "procedural faces") + " on photographs")
    raws = [s.image for s in made]
    return Inputs("image", source, frames=[encode_image(img, "jpeg") for img in raws], raws=raws, kind="scenes")


def load_inputs(modality: str, n: int = 32, data: str | Path | None = None, *,
                chunk_ms: float = 250.0, codec: str = "jpeg") -> Inputs:
    """``n`` inputs from the real dataset under ``data`` (orl/ or fsdd/), else procedural ones;
    ``modality`` ``scenes``: :func:`scene_inputs`."""
    from sensors import sources

    if modality == "scenes":
        return scene_inputs(n, data)

    raws, source = None, "procedural"
    if data is not None:
        sub = Path(data) / ("orl" if modality == "image" else "fsdd")
        if sub.is_dir():
            reader = sources.image_folder if modality == "image" else sources.wav_folder
            raws = list(itertools.islice(reader(sub), n))
            source = str(sub)
    if not raws:
        raws = _procedural(modality, n)
    if modality == "image":
        return Inputs("image", source, frames=[encode_image(img, codec) for img in raws], raws=raws)
    rates = {int(r) for _, r in raws}
    if len(rates) != 1:
        raise ValueError(f"utterances at several rates {sorted(rates)}: use one dataset")
    rate = rates.pop()
    utts = [split_pcm(float_to_pcm16(np.asarray(w)), rate=rate, channels=1, chunk_ms=chunk_ms) for w, _ in raws]
    floats = [(np.asarray(w, np.float32) / (32768.0 if np.asarray(w).dtype == np.int16 else 1.0), rate)
              for w, _ in raws]
    return Inputs("speech", source, utterances=utts, rate=rate, raws=floats)


class ResultListener:
    """Subscribes to ``{prefix}/+/result``, the gateway's status and its stats; records (arrival, capture
    ts) per device and the latest stats snapshot (gateway/metrics.py) per gateway."""

    def __init__(self, port: int, prefix: str, client_id: str) -> None:
        self.names = Names(prefix)
        self.arrivals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.answers: dict[str, list[int]] = defaultdict(list)  # the input (seq) of each arrival
        self.answered: dict[str, set[int]] = defaultdict(set)  # inputs with at least one result
        self.status: dict[str, bytes] = {}
        self.stats: dict[str, deque] = defaultdict(lambda: deque(maxlen=600))
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"{prefix}/+/result", 1), (f"{prefix}/gateway/+/status", 1),
                               (f"{prefix}/gateway/+/stats", 0)])
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        with self._cond:
            if msg.topic.endswith("/status"):
                self.status[msg.topic] = msg.payload
            elif msg.topic.endswith("/stats"):
                self.stats[msg.topic.split("/")[-2]].append(json.loads(msg.payload))
            else:
                body = json.loads(msg.payload)
                self.arrivals[body["device"]].append((now, float(body["ts"])))
                self.answers[body["device"]].append(int(body["seq"]))
                self.answered[body["device"]].add(int(body["seq"]))
            self._cond.notify_all()

    def stats_after(self, gateway: str, t: float, timeout: float) -> dict | None:
        """The first stats snapshot gateway ``gateway`` took at or after ``t`` (its ``ts``, wall clock),
        waiting up to ``timeout`` seconds for it; None when none came."""
        found: list[dict] = []

        def seen() -> bool:
            found[:] = [snap for snap in self.stats[gateway] if snap["ts"] >= t][:1]
            return bool(found)

        return found[0] if self.wait(seen, timeout) else None

    def count(self, device: str) -> int:
        """Inputs of ``device`` answered so far (by one result each, or one per face of a scene)."""
        with self._cond:
            return len(self.answered[device])

    def snapshot(self, device: str) -> list[tuple[float, float]]:
        with self._cond:
            return list(self.arrivals[device])

    def answer_times(self, device: str) -> list[tuple[float, int]]:
        """(arrival, seq of the input it answers) of every result of ``device``."""
        with self._cond:
            return [(a, seq) for (a, _), seq in zip(self.arrivals[device], self.answers[device])]

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``pred()`` (called under the listener's lock) holds, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def wait_online(self, gateway: str, timeout: float) -> bool:
        topic = self.names.gateway_status(gateway)
        return self.wait(lambda: self.status.get(topic) == b"online", timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class LoadGenerator:
    """Publishes one modality's inputs as one device, and counts that device's results."""

    def __init__(self, inputs: Inputs, broker: str, prefix: str, device: str, listener: ResultListener,
                 max_inflight: int = 100) -> None:
        self.inputs = inputs
        self.device = device
        self.listener = listener
        self.names = Names(prefix)
        self.pub = SensorPublisher(PublisherSettings(broker=broker, device=device, prefix=prefix,
                                                     max_inflight=max_inflight, first_seq=1)).connect()
        self._cycle = itertools.cycle(range(len(inputs)))
        self.sent = 0
        """Inferences published (frames, or whole utterances)."""

    def send_one(self) -> None:
        """Publish the next input, stamped with the current time as its capture time."""
        i, now = next(self._cycle), time.time()
        if self.inputs.modality == "image":
            frame = ImageFrame(device=self.device, seq=self.pub.next_seq(), ts=now, **self.inputs.frames[i])
            self.pub.publish(self.names.image(self.device), frame.encode())
        else:
            pieces, topic = self.inputs.utterances[i], self.names.audio(self.device)
            utt = f"{self.device}-{self.sent}"
            for k, piece in enumerate(pieces):
                chunk = AudioChunk(device=self.device, seq=self.pub.next_seq(), ts=now, utt=utt,
                                   rate=self.inputs.rate, width=2, channels=1, codec="pcm_s16le",
                                   final=k == len(pieces) - 1, data=piece)
                self.pub.publish(topic, chunk.encode())
        self.sent += 1

    def received(self) -> int:
        return self.listener.count(self.device)

    def wait_results(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` inputs of this device have their results."""
        return self.listener.wait(lambda: len(self.listener.answered[self.device]) >= n, timeout)

    def closed_loop(self, seconds: float, window: int, on_start: Callable[[], None] = lambda: None,
                    on_end: Callable[[], None] = lambda: None, skip_s: float = 1.0) -> dict:
        """Keep ``window`` inferences outstanding for ``seconds`` (the pipeline never waits for input:
        offered load above capacity without an unbounded backlog). Results arriving in the steady window
        ``[start + skip_s, end]`` are counted; ``on_start``/``on_end`` mark that window (CPU readings)."""
        t0 = time.monotonic()
        start, end = t0 + min(skip_s, seconds / 3), t0 + seconds
        started = False
        while time.monotonic() < end:
            if not started and time.monotonic() >= start:
                on_start()
                started, w_start, w_start_wall = True, time.monotonic(), time.time()
            if self.sent - self.received() < window:
                self.send_one()
            else:
                self.listener.wait(lambda: self.sent - len(self.listener.answered[self.device]) < window, 0.02)
        if not started:
            raise RuntimeError(f"the saturation window never opened: publishing blocked for {seconds} s")
        on_end()
        w_end_wall = time.time()
        inside = [seq for a, seq in self.listener.answer_times(self.device) if w_start_wall <= a <= w_end_wall]
        done, span = len(inside), max(1e-9, w_end_wall - w_start_wall)
        # An input answered inside the window counts once there (a scene's faces answer one frame).
        return {"results": done, "window_s": time.monotonic() - w_start, "outstanding": window,
                "throughput_per_s": done / span, "inputs_answered": len(set(inside)),
                "inputs_per_s": len(set(inside)) / span}

    def open_loop(self, rate: float, seconds: float) -> dict:
        """Publish at ``rate`` inferences/s for ``seconds`` (a late schedule is not caught up by bursts
        larger than the backlog); returns what was offered."""
        t0 = time.monotonic()
        n = int(rate * seconds)
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.send_one()
        took = time.monotonic() - t0
        return {"offered": n, "publish_s": took, "offered_per_s": n / max(took, 1e-9)}

    def snapshot(self) -> list[tuple[float, float]]:
        return self.listener.snapshot(self.device)

    def close(self) -> None:
        self.pub.close(timeout_s=10)
