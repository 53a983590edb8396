"""Fixtures and helpers for the gateway tests: bundles without analyzer weights, an MQTT listener,
an in-process gateway against the real mosquitto and redis-server fixtures."""
from __future__ import annotations

import functools
import json
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from gateway.config import GatewaySettings
from gateway.service import Gateway
from models.bundle import make_untrained_bundle, read_manifest
from schemas.media import AudioChunk, ImageFrame, encode_image, float_to_pcm16


MADE: list[dict] = []
"""The manifests of every bundle these fixtures made: what :func:`features_in` resolves model references
of version 2 entries (schemas.compact) against."""


def _made(d: Path) -> Path:
    MADE.append(read_manifest(d))
    return d


@pytest.fixture(scope="session")
def gateway_bundles(tmp_path_factory) -> dict[str, Path]:
    """Untrained image and speech bundles whose analyzer.pt and analyzer.onnx are deleted: the gateway
    must not need them."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for modality in ("image", "speech"):
        d = root / modality
        make_untrained_bundle(d, modality)
        (d / "analyzer.pt").unlink()
        (d / "analyzer.onnx").unlink()
        out[modality] = _made(d)
    return out


@pytest.fixture(scope="session")
def full_bundles(tmp_path_factory) -> dict[str, Path]:
    """Untrained bundles with both halves (the local-only baseline runs the whole network)."""
    root = tmp_path_factory.mktemp("full-bundles")
    out = {}
    for modality in ("image", "speech"):
        make_untrained_bundle(root / modality, modality)
        out[modality] = _made(root / modality)
    return out


class Listener:
    """An MQTT client that records every message under the prefix, by topic."""

    def __init__(self, port: int, topic: str = "privedge/#", client_id: str = "test-listener") -> None:
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.2)

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages[msg.topic].append(msg.payload)
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def json(self, topic: str) -> list[dict]:
        with self._cond:
            return [json.loads(p) for p in self.messages[topic]]

    def wait_for(self, pred, timeout: float = 20.0) -> bool:
        """Wait until ``pred(self)`` is true."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def feature_entry(stream, data: bytes, manifests=None):
    """A features stream entry's ``m`` field, wire version 1 or 2, as the FeatureMessage a worker serving
    ``manifests`` (default: every bundle these fixtures made) reads from it."""
    from schemas import Names, compact

    catalog = compact.Catalog.of_manifests({m["model"]: m for m in (manifests or MADE)}.values())
    return compact.decode(data, compact.Origin.of_stream(Names(), stream), catalog)


def mutated(items: list, position: int, value, action: str) -> bytes:
    """A version 2 entry (msgpack array ``items``) with the item at ``position`` replaced by ``value``,
    dropped, or ``value`` inserted there (past the end: appended), packed for the wire."""
    import msgpack

    items = list(items)
    if action == "replace" and position < len(items):
        items[position] = value
    elif action == "drop" and position < len(items):
        del items[position]
    else:
        items.insert(position, value)
    return msgpack.packb(items, use_bin_type=True)


def features_in(r, task: str, gateway: str = "gw1", manifests=None, shard: int = 0) -> list:
    """The FeatureMessages in a gateway's features stream of ``task`` (of one ``shard``), in order."""
    from schemas import Names

    stream = Names().features(task, gateway, shard)
    return [feature_entry(stream, f[b"m"], manifests) for _, f in r.xrange(stream)]


def wait_until(pred, timeout: float = 20.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def image_frame(device: str, seq: int, codec: str = "jpeg", size=(48, 40), smooth: bool = False) -> ImageFrame:
    """A frame of random pixels, or with ``smooth`` one of 8 gradient pictures (by seq): photo-like, so
    that a large JPEG is small on the wire yet as costly to decode as any, and encoded once each."""
    if smooth:
        picture = _smooth_picture(codec, tuple(size), seq % 8)
        return ImageFrame(device=device, seq=seq, ts=time.time(), **picture)
    img = np.random.default_rng(seq).integers(0, 255, (*size, 3), dtype=np.uint8)
    return ImageFrame.from_array(img, device=device, seq=seq, ts=time.time(), codec=codec)


@functools.lru_cache(maxsize=64)
def _smooth_picture(codec: str, size: tuple[int, int], k: int) -> dict:
    y, x = np.mgrid[0:size[0], 0:size[1]]
    img = np.stack([(x + 31 * k) % 256, (2 * y) % 256, ((x + y) // 2 + 17 * k) % 256], -1).astype(np.uint8)
    return encode_image(img, codec)


def utterance(device: str, seq0: int, utt: str, chunks: int = 3, rate: int = 8000,
              seconds: float = 0.6, final: bool = True) -> list[AudioChunk]:
    """A tone cut into ``chunks`` AudioChunks with seqs seq0.. (the last one final when asked)."""
    t = np.arange(int(rate * seconds)) / rate
    pcm = float_to_pcm16(0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32))
    step = -(-len(pcm) // chunks) // 2 * 2
    parts = [pcm[i:i + step] for i in range(0, len(pcm), step)]
    now = time.time()
    return [AudioChunk(device=device, seq=seq0 + i, ts=now + i * 0.1, utt=utt, rate=rate, width=2, channels=1,
                       codec="pcm_s16le", final=final and i == len(parts) - 1, data=p)
            for i, p in enumerate(parts)]


@pytest.fixture
def make_gateway(mosquitto, redis_server, gateway_bundles):
    """Factory: an in-process gateway on the test's servers (stopped at the end of the test)."""
    started: list[Gateway] = []

    def make(serving=None, **changes) -> Gateway:
        """``serving``: what the gateway serves (default privedge's split; the benchmark's baselines pass
        theirs); ``changes``: settings."""
        base = dict(broker=mosquitto.url, redis=redis_server.url,
                    bundles=(str(gateway_bundles["image"]), str(gateway_bundles["speech"])),
                    id="gw1", stats_interval_s=0.5, connect_timeout_s=10, wait_ms=2.0)
        base.update(changes)
        gw = Gateway(GatewaySettings(**base), serving).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()
