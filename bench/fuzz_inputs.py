"""Generated hostile inputs for ``python -m bench.fuzz``: every decoder of the gateway and the worker.

Each family yields inputs built from a valid message and then broken one way at a time (a field dropped,
retyped or pushed out of range, the media bytes truncated or garbled, the msgpack nested or extended), so
that every check of a decoder is reached, not only its first. A fixed share stays valid, so that the run
also shows that good inputs still pass while bad ones flow by.

Families and where they go:

- ``image``: ImageFrame maps on ``{p}/{device}/image`` (JPEG, PNG and raw pixels, valid and broken);
- ``audio``: AudioChunk maps on ``{p}/{device}/audio`` (utterances, stray, duplicate and empty chunks,
  format changes inside an utterance, utterances that never end);
- ``bytes``: payloads that are not messages at all on both sensor topics: random bytes, truncated
  msgpack, nesting bombs (deep arrays, wide trees of empty maps), extension types, invalid UTF-8;
- ``topic``: valid payloads on topics a device may not use (bad or reserved device ids, a device id
  that contradicts the payload);
- ``features``: stream entries added straight to a features stream, as a hostile gateway could:
  non-finite and huge float32/float16 tensors, wrong shapes, dtypes and sizes, unknown models, ids,
  gateways and reply streams that do not agree, entries without the ``m`` field or with garbage in it.

The module only builds bytes; :mod:`bench.fuzz` sends them.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Iterator

import msgpack
import numpy as np
from PIL import Image

FAMILIES = ("image", "audio", "bytes", "topic", "features")
VALID_SHARE = 0.1
"""Fraction of each family left valid (image, audio, features)."""


@dataclass(frozen=True)
class MqttInput:
    """One payload for a sensor topic: ``{prefix}/{device}/{kind}``."""

    family: str
    device: str
    kind: str          # "image" | "audio"
    payload: bytes


@dataclass(frozen=True)
class StreamInput:
    """One entry for a features stream: its fields as given to XADD."""

    family: str
    fields: dict


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _picture(rng: np.random.Generator, h: int, w: int, ch: int) -> np.ndarray:
    """A smooth random picture (compresses like a photograph, unlike noise)."""
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), ch), dtype=np.uint8)
    big = np.kron(small, np.ones((8, 8, 1), np.uint8))[:h, :w]
    return big[:, :, 0] if ch == 1 else big


def _encode(img: np.ndarray, codec: str) -> bytes:
    if codec == "raw":
        return img.tobytes()
    buf = io.BytesIO()
    mode = "L" if img.ndim == 2 else {3: "RGB", 4: "RGBA"}[img.shape[2]]
    Image.fromarray(img, mode).save(buf, "JPEG" if codec == "jpeg" else "PNG")
    return buf.getvalue()


# mutations of one field ---------------------------------------------------------------------------
_WRONG_VALUES = (None, True, -1, 2**64 - 1, -2**63, 1.5, float("nan"), float("inf"), "", "x" * 300, b"\x00",
                 [], [1, 2], {}, {"a": 1})


def _mutate_map(rng: np.random.Generator, msg: dict) -> dict:
    """One of: drop a field, give a field a wrong value, change the version, add junk fields."""
    out = dict(msg)
    key = list(out)[int(rng.integers(len(out)))]
    how = int(rng.integers(4))
    if how == 0:
        del out[key]
    elif how == 1:
        out[key] = _WRONG_VALUES[int(rng.integers(len(_WRONG_VALUES)))]
    elif how == 2:
        out["v"] = int(rng.choice([0, 2, 99, -1]))
    else:
        for i in range(int(rng.integers(1, 100))):
            out[f"junk{i}"] = i
    return out


def _garble(rng: np.random.Generator, data: bytes) -> bytes:
    """Truncate, flip bytes in, or replace media bytes."""
    if not data:
        return rng.bytes(16)
    how = int(rng.integers(3))
    if how == 0:
        return data[: int(rng.integers(len(data)))]
    if how == 1:
        arr = bytearray(data)
        for _ in range(int(rng.integers(1, 32))):
            arr[int(rng.integers(len(arr)))] ^= int(rng.integers(1, 256))
        return bytes(arr)
    return rng.bytes(int(rng.integers(1, 4096)))


# families -------------------------------------------------------------------------------------------
def image_inputs(rng: np.random.Generator, n: int, devices: int = 4) -> Iterator[MqttInput]:
    """ImageFrames: valid, one field broken, media garbled, sizes that lie, oversized claims."""
    pictures = {}
    for codec in ("jpeg", "png", "raw"):
        for ch in (1, 3):
            img = _picture(rng, 48, 64, ch)
            pictures[(codec, ch)] = (img, _encode(img, codec))
    for i in range(n):
        device = f"fz-cam{i % devices}"
        codec, ch = ("jpeg", "png", "raw")[i % 3], (1, 3)[(i // 3) % 2]
        img, data = pictures[(codec, ch)]
        msg = {"v": 1, "device": device, "seq": i, "ts": time.time(), "codec": codec,
               "w": img.shape[1], "h": img.shape[0], "ch": ch, "data": data}
        roll = rng.random()
        if roll < VALID_SHARE:
            pass
        elif roll < 0.4:
            msg = _mutate_map(rng, msg)
        elif roll < 0.7:
            msg["data"] = _garble(rng, data)
        elif roll < 0.85:
            msg["w"], msg["h"] = int(rng.integers(1, 65536)), int(rng.integers(1, 65536))
        else:
            msg["ch"] = int(rng.choice([2, 4, 0, 5]))
        yield MqttInput("image", device, "image", _pack(msg))


def audio_inputs(rng: np.random.Generator, n: int, devices: int = 4) -> Iterator[MqttInput]:
    """AudioChunks: whole utterances, stray, duplicate and empty chunks, format changes, no final."""
    pcm = (np.sin(np.linspace(0, 200, 800)) * 8000).astype("<i2").tobytes()  # 0.1 s at 8 kHz
    i = 0
    utt = 0
    while i < n:
        device = f"fz-mic{utt % devices}"
        chunks = int(rng.integers(1, 8))
        kind = rng.random()
        for c in range(chunks):
            if i >= n:
                return
            msg = {"v": 1, "device": device, "seq": i, "ts": time.time(), "utt": f"u{utt}", "rate": 8000,
                   "width": 2, "channels": 1, "codec": "pcm_s16le", "final": c == chunks - 1, "data": pcm}
            if kind < VALID_SHARE:
                pass
            elif kind < 0.3:
                msg = _mutate_map(rng, msg)
            elif kind < 0.45:
                msg["data"] = b""  # empty chunks
                msg["final"] = False
            elif kind < 0.6:
                msg["seq"] = utt * 1000  # the same seq again and again
            elif kind < 0.7:
                msg["rate"] = int(rng.choice([8000, 16000, 44100]))
                msg["channels"] = int(rng.integers(1, 9))
            elif kind < 0.8:
                msg["data"] = pcm[: int(rng.integers(len(pcm)))]  # odd byte counts
            elif kind < 0.9:
                msg["final"] = False  # never ends
            else:
                msg["utt"] = "x" * int(rng.integers(200, 2000))
            i += 1
            yield MqttInput("audio", device, "audio", _pack(msg))
        utt += 1


def _nest(depth: int, leaf: bytes) -> bytes:
    return b"\x91" * depth + leaf  # fixarray of one element, depth times


def _wide_tree(total_bytes: int) -> bytes:
    """A map whose one value is an array of arrays of ... of empty maps, ``total_bytes`` long."""
    width = 15  # fixarray of 15
    out = bytearray(b"\x81\xa1x")  # {"x": ...}
    level = b"\x80"
    while len(level) * width + 1 < total_bytes:
        level = bytes([0x90 | width]) + level * width
    return bytes(out) + level


def bytes_inputs(rng: np.random.Generator, n: int) -> Iterator[MqttInput]:
    """Payloads that are not messages: random, truncated, nested, extension types, bad UTF-8."""
    valid = _pack({"v": 1, "device": "fz-raw", "seq": 1, "ts": 1.0, "codec": "raw", "w": 2, "h": 2, "ch": 1,
                   "data": b"\x00" * 4})
    makers = [
        lambda: rng.bytes(int(rng.integers(0, 2048))),
        lambda: valid[: int(rng.integers(len(valid)))],
        lambda: _nest(int(rng.integers(100, 100_000)), b"\x80"),
        lambda: _wide_tree(int(rng.integers(1, 4)) * 1024 * 1024),
        lambda: _pack({"v": 1, "data": msgpack.ExtType(1, rng.bytes(8))}),
        lambda: b"\x81\xa1v\xd9\x05\xff\xfe\xfd\xfc\xfb",  # str with invalid UTF-8
        lambda: _pack([1, 2, 3]),
        lambda: _pack(int(rng.integers(1 << 30))),
        lambda: b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        lambda: b"\xc6\x7f\xff\xff\xff",  # bin32 claiming 2 GiB
    ]
    for i in range(n):
        payload = makers[i % len(makers)]()
        kind = ("image", "audio")[(i // len(makers)) % 2]
        yield MqttInput("bytes", f"fz-raw{i % 3}", kind, payload)


def topic_inputs(rng: np.random.Generator, n: int) -> Iterator[MqttInput]:
    """Valid frames from devices whose id is not allowed, or that speak for another device."""
    img = _picture(rng, 16, 16, 1)
    bad_devices = ["gateway", "a b", "é", "x" * 65, "dev.1", "dev:1", "-", "fz-topic"]
    for i in range(n):
        device = bad_devices[i % len(bad_devices)]
        claimed = "fz-other" if device == "fz-topic" else device
        msg = {"v": 1, "device": claimed, "seq": i, "ts": time.time(), "codec": "raw", "w": 16, "h": 16,
               "ch": 1, "data": img.tobytes()}
        yield MqttInput("topic", device, "image", _pack(msg))


def feature_inputs(rng: np.random.Generator, n: int, *, gateway: str, model: str, task: str, dtype: str,
                   shape: tuple[int, ...], reply: str, other_reply: str) -> Iterator[StreamInput]:
    """FeatureMessages as a hostile gateway could write them into its own features stream."""
    count = int(np.prod(shape))
    for i in range(n):
        device = f"fz-feat{i % 4}"
        z = rng.normal(0, 1, count).astype(np.float32)
        wire_dtype = dtype
        roll = rng.random()
        if dtype == "int8":
            data = np.clip(np.rint(z * 30), -127, 127).astype(np.int8).tobytes()
        else:
            data = z.astype(dtype).tobytes()
        msg = {"v": 1, "id": f"{gateway}/{device}/{i}", "gateway": gateway, "device": device, "seq": i,
               "ts": time.time(), "ts_sent": time.time(), "task": task, "model": model, "dtype": wire_dtype,
               "shape": list(shape), "data": data, "reply": reply}
        if roll < VALID_SHARE:
            pass
        elif roll < 0.3:
            bad = np.full(count, rng.choice([np.nan, np.inf, -np.inf, 1e30, -3e38]), np.float32)
            bad_dtype = str(rng.choice(["float32", "float16"]))
            with np.errstate(over="ignore"):  # 1e30 as float16 is inf: that is the point
                msg["dtype"], msg["data"] = bad_dtype, bad.astype(bad_dtype).tobytes()
        elif roll < 0.45:
            msg = _mutate_map(rng, msg)
        elif roll < 0.55:
            msg["shape"] = [int(d) for d in rng.integers(0, 70, int(rng.integers(0, 10)))]
        elif roll < 0.65:
            msg["data"] = _garble(rng, data)
        elif roll < 0.7:
            msg["model"] = "no-such-model"
        elif roll < 0.8:
            msg["reply"] = other_reply  # results for another home
        elif roll < 0.85:
            msg["id"] = f"someone-else/{device}/{i}"
        elif roll < 0.9:
            yield StreamInput("features", {"x": b"no m field"})
            continue
        else:
            yield StreamInput("features", {"m": rng.bytes(int(rng.integers(0, 512)))})
            continue
        yield StreamInput("features", {"m": _pack(msg)})
