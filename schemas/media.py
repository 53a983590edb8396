"""Sensor media messages (camera frames, microphone chunks) and their pixel/sample helpers.

Framing follows the Wyoming protocol: a microphone sends one utterance as several AudioChunks sharing
``utt`` and marks the last one ``final``; the gateway joins them.

``boot`` (optional) is chosen afresh by the sensor at each start. The gateway puts it in the inference id
(``{gateway}/{device}/{boot}-{seq}``), so a sensor whose seqs restart at 0 after a reboot cannot have new
inputs dropped as duplicates of the ones it sent before; a sensor without it keeps ``.../{seq}`` ids and
must then keep its seqs increasing across restarts itself.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from schemas.codec import Message, spec
from schemas.errors import TooLarge, UndecodableMedia, WrongType
from schemas.envelope import BOOT_DOC
from schemas.limits import DEFAULT_LIMITS, Limits

IMAGE_CODECS = ("jpeg", "png", "raw")
AUDIO_CODECS = ("pcm_s16le",)
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


@dataclass(frozen=True, kw_only=True)
class SensorMessage(Message):
    """The header every sensor message starts with (its fields first on the wire); not sent on its own."""

    device: str = spec("sensor device id")
    seq: int = spec("message sequence number, increasing per device", lo=0, hi=2**63 - 1)
    boot: int | None = spec(BOOT_DOC, default=None, lo=0, hi=2**63 - 1)
    ts: float = spec("capture time (of an audio chunk: its first sample), Unix seconds", lo=0)


@dataclass(frozen=True, kw_only=True)
class ImageFrame(SensorMessage):
    """One camera frame (topic ``{p}/{device}/image``): the sensor header, then the picture."""

    PAYLOAD_LIMIT = "max_image_payload"
    codec: str = spec("encoding of data", choices=IMAGE_CODECS)
    w: int = spec("width, pixels", lo=1, hi=65535)
    h: int = spec("height, pixels", lo=1, hi=65535)
    ch: int = spec("channels: 1 gray, 3 RGB, 4 RGBA", choices=(1, 3, 4))
    data: bytes = spec("jpeg/png file bytes, or raw uint8 pixels row-major HxWxC",
                       max_len="max_image_payload")

    def _check_invariants(self, limits: Limits) -> None:
        if self.w * self.h > limits.max_image_pixels:
            raise TooLarge(f"frame of {self.w}x{self.h} pixels > {limits.max_image_pixels}", field="w")
        if self.codec == "raw" and len(self.data) != self.w * self.h * self.ch:
            raise UndecodableMedia(
                f"raw frame has {len(self.data)} bytes, w*h*ch = {self.w * self.h * self.ch}", field="data")

    @classmethod
    def from_array(cls, img: np.ndarray, *, device: str, seq: int, ts: float,
                   codec: str = "png", quality: int = 90, boot: int | None = None) -> "ImageFrame":
        """Encode a uint8 HxW / HxWx3 / HxWx4 array as a frame (see :func:`encode_image`)."""
        return cls(device=device, seq=seq, boot=boot, ts=ts, **encode_image(img, codec, quality=quality))

    def pixels(self, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
        """The decoded frame (see :func:`decode_image`)."""
        return decode_image(self, limits)


def encode_image(img: np.ndarray, codec: str = "png", *, quality: int = 90) -> dict[str, Any]:
    """uint8 HxW / HxWx1 / HxWx3 / HxWx4 -> ImageFrame fields ``codec, w, h, ch, data``.

    ``jpeg`` is lossy (``quality`` 1-95) and has no alpha channel; ``png`` and ``raw`` are exact.
    """
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise WrongType(f"image must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise WrongType(f"image must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    if codec == "raw":
        data = np.ascontiguousarray(arr).tobytes()
    elif codec in _PIL_FORMATS:
        if codec == "jpeg" and ch == 4:
            raise WrongType("jpeg has no alpha channel: use png or raw for RGBA")
        buf = io.BytesIO()
        opts = {"quality": quality} if codec == "jpeg" else {"compress_level": 1}
        Image.fromarray(arr, _MODES[ch]).save(buf, _PIL_FORMATS[codec], **opts)
        data = buf.getvalue()
    else:
        raise WrongType(f"image codec must be one of {IMAGE_CODECS}, got {codec!r}")
    return {"codec": codec, "w": int(w), "h": int(h), "ch": int(ch), "data": data}


def decode_image(frame: ImageFrame, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """The frame's pixels: uint8 (h, w) when ch == 1, else (h, w, ch).

    The pixel count is checked on the declared size and on the file header before anything is
    decompressed. Raises UndecodableMedia for corrupt data or a header that contradicts ``w, h``,
    TooLarge for oversize frames.
    """
    if frame.w * frame.h > limits.max_image_pixels:
        raise TooLarge(f"frame of {frame.w}x{frame.h} pixels > {limits.max_image_pixels}", field="w")
    shape = (frame.h, frame.w) if frame.ch == 1 else (frame.h, frame.w, frame.ch)
    if frame.codec == "raw":
        if len(frame.data) != frame.w * frame.h * frame.ch:
            raise UndecodableMedia(f"raw frame has {len(frame.data)} bytes, want w*h*ch", field="data")
        return np.frombuffer(frame.data, dtype=np.uint8).reshape(shape)
    if frame.codec == "jpeg":
        pixels = _decode_jpeg_turbo(frame)
        if pixels is not None:
            return pixels.reshape(shape)
    try:
        # Image.open only parses the header; the size check below runs before any decompression,
        # so a small declared size bounds the work (no global warning filters: gateways are threaded).
        with Image.open(io.BytesIO(frame.data), formats=[_PIL_FORMATS[frame.codec]]) as im:
            if im.size != (frame.w, frame.h):
                raise UndecodableMedia(
                    f"{frame.codec} is {im.size[0]}x{im.size[1]}, frame says {frame.w}x{frame.h}",
                    field="data")
            im.load()
            arr = np.asarray(im.convert(_MODES[frame.ch]), dtype=np.uint8)
    except UndecodableMedia:
        raise
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, EOFError, IndexError,
            Image.DecompressionBombError) as e:
        raise UndecodableMedia(f"cannot decode {frame.codec} frame: {e}", field="data") from e
    return arr.reshape(shape)


@dataclass(frozen=True, kw_only=True)
class AudioChunk(SensorMessage):
    """A piece of one utterance from a microphone (topic ``{p}/{device}/audio``): the sensor header, then
    the samples."""

    PAYLOAD_LIMIT = "max_audio_payload"
    utt: str = spec("utterance id, shared by all chunks of one utterance")
    rate: int = spec("sample rate, Hertz", lo=1000, hi=192000)
    width: int = spec("bytes per sample", choices=(2,))
    channels: int = spec("interleaved channels", lo=1, hi=8)
    codec: str = spec("sample encoding", choices=AUDIO_CODECS)
    final: bool = spec("true on the last chunk of the utterance")
    data: bytes = spec("interleaved little-endian samples", max_len="max_audio_payload")

    def _check_invariants(self, limits: Limits) -> None:
        if len(self.data) % (self.width * self.channels):
            raise UndecodableMedia(f"{len(self.data)} bytes is not a whole number of "
                                   f"{self.channels}-channel {self.width}-byte frames", field="data")

    def samples(self) -> np.ndarray:
        """int16 (frames, channels) view of the chunk's samples."""
        return pcm16_to_array(self.data, self.channels)

    @property
    def duration_s(self) -> float:
        """Length of the chunk, seconds."""
        return len(self.data) / (self.width * self.channels * self.rate)


def float_to_pcm16(wave: np.ndarray) -> bytes:
    """float waveform in [-1, 1] (frames,) or (frames, channels) -> pcm_s16le bytes (clipped).

    int16 input is passed through unchanged.
    """
    arr = np.asarray(wave)
    if arr.dtype != np.int16:
        if not np.issubdtype(arr.dtype, np.floating):
            raise WrongType(f"wave must be float in [-1, 1] or int16, got {arr.dtype}")
        arr = np.clip(np.rint(arr * 32767.0), -32768, 32767).astype(np.int16)
    return arr.astype("<i2", copy=False).tobytes()


def pcm16_to_array(data: bytes, channels: int = 1) -> np.ndarray:
    """pcm_s16le bytes -> int16 array (frames, channels)."""
    if len(data) % (2 * channels):
        raise UndecodableMedia(f"{len(data)} bytes is not whole {channels}-channel int16 frames")
    return np.frombuffer(data, dtype="<i2").reshape(-1, channels)


def split_pcm(data: bytes, *, rate: int, channels: int, chunk_ms: float) -> list[bytes]:
    """Cut pcm_s16le bytes into pieces of ``chunk_ms`` milliseconds (the last may be shorter).

    An empty input gives one empty piece, so that every utterance has a ``final`` chunk.
    """
    frame_bytes = 2 * channels
    step = max(1, int(rate * chunk_ms / 1000)) * frame_bytes
    return [data[i:i + step] for i in range(0, len(data), step)] or [b""]


_TURBO_COLOURS = {1: ("Gray", "GRAY"), 3: ("YCbCr", "RGB")}  # frame channels: (JPEG colour space, output)


def _decode_jpeg_turbo(frame: ImageFrame) -> np.ndarray | None:
    """A JPEG frame's pixels through simplejpeg (libjpeg-turbo, as Pillow's own decoder is), or None when
    the file's colour space is not the one its channels call for (Pillow converts those, below).

    The same decoder and settings as Pillow (accurate DCT, smooth upsampling), so the pixels are the same,
    but without Pillow's Python-level header parsing and tile set-up, which for a camera-sized face crop
    costs several times the decompression itself (about 0.2 ms against 0.04 ms for a 92x112 frame). The
    header is read first, so the declared size bounds the work here too; ``strict`` refuses a corrupt or
    truncated file instead of returning the part that decoded."""
    import simplejpeg

    wanted = _TURBO_COLOURS.get(frame.ch)
    if wanted is None:
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(frame.data)
        if (width, height) != (frame.w, frame.h):
            raise UndecodableMedia(f"jpeg is {width}x{height}, frame says {frame.w}x{frame.h}", field="data")
        if colour != wanted[0]:
            return None
        return simplejpeg.decode_jpeg(frame.data, colorspace=wanted[1], strict=True)
    except UndecodableMedia:
        raise
    except (ValueError, TypeError) as e:
        raise UndecodableMedia(f"cannot decode jpeg frame: {e}", field="data") from e
