"""Joining AudioChunks into utterances (Wyoming-style framing: chunks share ``utt``, the last is ``final``).

Bounded three ways: an utterance longer than ``max_seconds`` is rejected, at most ``max_open`` utterances
are assembled at once (past that the one idle longest is rejected), and an utterance whose final chunk
has not come ``timeout_s`` after its latest chunk is rejected. Chunks that arrive for an utterance already
rejected are rejected with the same reason, so that one long stream does not reopen again and again.

An utterance's inference seq is the smallest chunk seq it holds (its first chunk), and its capture time
that chunk's ``ts``: both are the same whenever the chunks are delivered again, so the inference id
``{gateway}/{device}/{seq}`` is stable across retries.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from gateway.intake import Inbound
from models.preprocess import pcm16_to_float
from schemas.media import AudioChunk

REASON_TIMEOUT = "audio timeout"
REASON_TOO_LONG = "audio too long"
REASON_TOO_MANY = "too many utterances"
REASON_MISMATCH = "audio format mismatch"


@dataclass
class Utterance:
    """Chunks of one (device, utt) received so far, and the MQTT inputs that carried them."""

    device: str
    utt: str
    rate: int
    channels: int
    chunks: dict[int, AudioChunk] = field(default_factory=dict)   # seq -> chunk (redeliveries collapse)
    items: list[Inbound] = field(default_factory=list)
    frames: int = 0
    last_seen: float = field(default_factory=time.monotonic)       # monotonic seconds
    boot: int | None = None                                        # the sensor's boot id (part of the key)

    @property
    def seq(self) -> int:
        return min(self.chunks)

    @property
    def first(self) -> AudioChunk:
        return self.chunks[self.seq]

    def joined(self) -> AudioChunk:
        """One final AudioChunk holding the whole utterance (chunks in seq order)."""
        first = self.first
        data = b"".join(self.chunks[s].data for s in sorted(self.chunks))
        return AudioChunk(device=self.device, seq=first.seq, boot=self.boot, ts=first.ts, utt=self.utt, rate=self.rate,
                          width=first.width, channels=self.channels, codec=first.codec, final=True, data=data)

    def wave(self) -> tuple[np.ndarray, int]:
        """(mono float32 wave in [-1, 1), rate Hz) of the joined utterance."""
        data = b"".join(self.chunks[s].data for s in sorted(self.chunks))
        return pcm16_to_float(data, self.channels), self.rate


@dataclass
class Rejected:
    """An utterance (or a stray chunk) the assembler refused, with its MQTT inputs to acknowledge."""

    device: str
    seq: int | None
    reason: str
    detail: str
    items: list[Inbound]


class UtteranceAssembler:
    """Collects chunks per (device, utt); hands back complete utterances and rejections."""

    def __init__(self, max_seconds: float, max_open: int, timeout_s: float) -> None:
        self.max_seconds = max_seconds
        self.max_open = max_open
        self.timeout_s = timeout_s
        self._open: OrderedDict[tuple[str, str], Utterance] = OrderedDict()   # least recently fed first
        self._rejected: OrderedDict[tuple[str, str], str] = OrderedDict()     # key -> reason, bounded

    def __len__(self) -> int:
        return len(self._open)

    def add(self, chunk: AudioChunk, item: Inbound) -> tuple[Utterance | None, list[Rejected]]:
        """Feed one chunk; returns (the utterance if this chunk completed it, rejections caused)."""
        key = (chunk.device, chunk.boot, chunk.utt)  # a rebooted sensor may use its utt ids again
        if key in self._rejected:
            return None, [Rejected(chunk.device, chunk.seq, self._rejected[key],
                                   f"chunk of utterance {chunk.utt!r} already rejected", [item])]
        rejected: list[Rejected] = []
        u = self._open.get(key)
        if u is None:
            if len(self._open) >= self.max_open:
                _, oldest = self._open.popitem(last=False)
                rejected.append(self._reject(oldest, REASON_TOO_MANY,
                                             f"more than {self.max_open} utterances open"))
            u = self._open[key] = Utterance(chunk.device, chunk.utt, chunk.rate, chunk.channels, boot=chunk.boot)
        else:
            self._open.move_to_end(key)
        if (chunk.rate, chunk.channels) != (u.rate, u.channels):
            del self._open[key]
            u.items.append(item)
            rejected.append(self._reject(u, REASON_MISMATCH, f"chunk {chunk.seq} is {chunk.rate} Hz x "
                                         f"{chunk.channels}, utterance is {u.rate} Hz x {u.channels}"))
            return None, rejected
        u.items.append(item)
        u.last_seen = time.monotonic()
        if chunk.seq not in u.chunks:
            u.chunks[chunk.seq] = chunk
            u.frames += len(chunk.data) // (chunk.width * chunk.channels)
        if u.frames > self.max_seconds * u.rate:
            del self._open[key]
            rejected.append(self._reject(u, REASON_TOO_LONG, f"utterance longer than {self.max_seconds} s"))
            return None, rejected
        if chunk.final:
            del self._open[key]
            return u, rejected
        return None, rejected

    def expire(self, now: float | None = None) -> list[Rejected]:
        """Reject utterances idle for more than ``timeout_s`` (monotonic ``now``)."""
        now = time.monotonic() if now is None else now
        out = []
        for key in [k for k, u in self._open.items() if now - u.last_seen > self.timeout_s]:
            out.append(self._reject(self._open.pop(key), REASON_TIMEOUT,
                                    f"no final chunk within {self.timeout_s} s"))
        return out

    def _reject(self, u: Utterance, reason: str, detail: str) -> Rejected:
        self._rejected[(u.device, u.boot, u.utt)] = reason
        while len(self._rejected) > 4 * self.max_open:
            self._rejected.popitem(last=False)
        return Rejected(u.device, u.seq if u.chunks else None, reason, detail, u.items)
