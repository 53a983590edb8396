"""The media message: raw sensor media uploaded by a gateway in ``cloud_only`` mode.

``cloud_only`` is the convenience baseline of the three-way benchmark (DESIGN.md, "Benchmarks"): the
gateway forwards the original media to ``{p}:media:{task}`` (field ``m``) and a worker runs the whole
network. privedge's own ``split`` mode never sends this message. ``payload`` is an encoded ImageFrame
(the bytes the camera published, unchanged) or one AudioChunk holding the whole joined utterance.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from schemas.codec import spec
from schemas.envelope import Envelope
from schemas.features import make_id
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.media import AudioChunk, ImageFrame

MEDIA_KINDS = ("image", "audio")


def inner_limits(limits: Limits = DEFAULT_LIMITS) -> Limits:
    """Limits for decoding a payload: a joined utterance may be longer than one microphone chunk, so the
    audio bound is raised to the media message bound."""
    return dataclasses.replace(limits, max_audio_payload=max(limits.max_audio_payload,
                                                             limits.max_image_payload))


@dataclass(frozen=True, kw_only=True)
class MediaMessage(Envelope):
    """One input's raw media, sent by a gateway in cloud_only mode to ``{p}:media:{task}``; the
    envelope's fields (schemas.envelope) first, then the media."""

    PAYLOAD_LIMIT = "max_image_payload"
    reply: str = spec("Redis stream the Result goes to", max_len=512)
    kind: str = spec("what payload holds: an ImageFrame or an AudioChunk", choices=MEDIA_KINDS)
    payload: bytes = spec("encoded ImageFrame or AudioChunk (msgpack)", max_len="max_image_payload")

    @classmethod
    def wrap(cls, media: ImageFrame | AudioChunk, *, gateway: str, ts_sent: float, task: str, model: str,
             reply: str, seq: int | None = None, payload: bytes | None = None,
             limits: Limits = DEFAULT_LIMITS) -> "MediaMessage":
        """Wrap a frame or a joined utterance; ``payload`` may pass the already-encoded bytes."""
        kind = "image" if isinstance(media, ImageFrame) else "audio"
        seq = media.seq if seq is None else seq
        if payload is None:
            payload = media.encode(inner_limits(limits))
        return cls(id=make_id(gateway, media.device, seq, media.boot), gateway=gateway, device=media.device,
                   seq=seq, boot=media.boot, ts=media.ts, ts_sent=ts_sent, task=task, model=model,
                   reply=reply, kind=kind, payload=payload)

    def media(self, limits: Limits = DEFAULT_LIMITS) -> ImageFrame | AudioChunk:
        """Decode ``payload`` (a SchemaError subclass when it is invalid)."""
        cls = ImageFrame if self.kind == "image" else AudioChunk
        return cls.decode(self.payload, inner_limits(limits))
