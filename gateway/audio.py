"""Joining AudioChunks into utterances (Wyoming-style framing: chunks share ``utt``, the last is ``final``).

Every chunk the assembler keeps is an MQTT message it has not acknowledged yet (it is acknowledged once
its utterance is handed on or rejected), so what the assembler holds is taken from the broker's in-flight
window: bounding it per utterance and per device is what keeps one microphone from starving the others.

- Per utterance: at most ``max_seconds`` of audio, ``max_chunks`` chunks and ``max_bytes`` payload bytes,
  counting every chunk, empty ones too (an endless stream of empty non-final chunks hits the chunk cap);
  past any cap the utterance is rejected.
- Duplicates (same ``utt`` and ``seq``) are never kept and do not refresh the timeout: a second copy on
  the same connection is acknowledged and dropped at once; a copy the broker delivers again after a
  reconnect replaces the held input of the earlier connection (whose acknowledgement can no longer be
  sent) so that the new copy is acknowledged with the utterance, and nothing is lost if we die first.
  Chunks of an utterance already completed (the last ``4 * max_open`` remembered) are duplicates too: a
  broker stopped while our acknowledgements of an utterance were arriving resends only the chunks whose
  acknowledgement it had not saved, and those must not make a second, truncated utterance.
- A fair share per device (max-min): when the assembler holds more than ``hold_items`` chunks in all,
  or ``max_open`` utterances, the device holding the most (which is then over its share of
  ``hold_items / devices``, or ``max_open / devices``) loses its own oldest open utterance. A device
  within its share never loses one to another device's flood, and with no contention nobody pays.
- An utterance whose final chunk has not come ``timeout_s`` after its latest new chunk is rejected;
  the clock stops while the gateway is disconnected (:meth:`UtteranceAssembler.touch_all`), because the
  rest of the utterance is then waiting at the broker.

Chunks that arrive for an utterance already rejected are rejected with the same reason, so that one long
stream does not reopen again and again.

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
REASON_OVER_SHARE = "device over its share"
REASON_MISMATCH = "audio format mismatch"


@dataclass
class Utterance:
    """Chunks of one (device, utt) received so far, and the MQTT inputs that carried them."""

    device: str
    utt: str
    rate: int
    channels: int
    chunks: dict[int, AudioChunk] = field(default_factory=dict)   # seq -> chunk (redeliveries collapse)
    items: dict[int, Inbound] = field(default_factory=dict)       # seq -> the MQTT input to acknowledge
    frames: int = 0
    nbytes: int = 0                                                # payload bytes of the kept chunks
    last_seen: float = field(default_factory=time.monotonic)       # monotonic seconds
    boot: int | None = None                                        # the sensor's boot id (part of the key)

    @property
    def inputs(self) -> list[Inbound]:
        """The MQTT inputs to acknowledge once the utterance is handed on or rejected, in seq order."""
        return [self.items[s] for s in sorted(self.items)]

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
    """Collects chunks per (device, utt); hands back complete utterances, rejections and duplicates."""

    def __init__(self, max_seconds: float, max_open: int, timeout_s: float, *, max_chunks: int = 256,
                 max_bytes: int = 2 * 1024 * 1024, hold_items: int = 500) -> None:
        """Caps per utterance (``max_seconds`` of audio, ``max_chunks`` chunks, ``max_bytes`` payload
        bytes), ``max_open`` utterances at once, ``hold_items`` chunks held in all (shared fairly between
        devices), ``timeout_s`` seconds without a new chunk."""
        self.max_seconds = max_seconds
        self.max_open = max_open
        self.timeout_s = timeout_s
        self.max_chunks = max_chunks
        self.max_bytes = max_bytes
        self.hold_items = hold_items
        self._open: OrderedDict[tuple[str, str], Utterance] = OrderedDict()   # least recently fed first
        self._rejected: OrderedDict[tuple[str, str], str] = OrderedDict()     # key -> reason, bounded
        self._done: OrderedDict[tuple, frozenset[int]] = OrderedDict()  # completed key -> its seqs, bounded
        self._held: dict[str, int] = {}      # device -> chunks held (unacknowledged) in open utterances
        self._opened: dict[str, int] = {}    # device -> open utterances

    def __len__(self) -> int:
        return len(self._open)

    def held(self, device: str | None = None) -> int:
        """Chunks held unacknowledged: of one device, or of all."""
        return self._held.get(device, 0) if device is not None else sum(self._held.values())

    def add(self, chunk: AudioChunk, item: Inbound) -> tuple[Utterance | None, list[Rejected], list[Inbound]]:
        """Feed one chunk; returns (the utterance if this chunk completed it, rejections caused, inputs
        to acknowledge at once without a report: duplicates)."""
        key = (chunk.device, chunk.boot, chunk.utt)  # a rebooted sensor may use its utt ids again
        if chunk.seq in self._done.get(key, ()):  # a chunk of an utterance already completed, again
            return None, [], [item]
        if key in self._rejected:
            return None, [Rejected(chunk.device, chunk.seq, self._rejected[key],
                                   f"chunk of utterance {chunk.utt!r} already rejected", [item])], []
        u = self._open.get(key)
        if u is not None and chunk.seq in u.chunks:
            held = u.items[chunk.seq]
            if held.epoch < item.epoch:   # the broker's copy after a reconnect: keep the one we can ack
                u.items[chunk.seq] = item
                return None, [], []
            return None, [], [item]
        rejected: list[Rejected] = []
        if u is None:
            if len(self._open) >= self.max_open:
                rejected.append(self._evict(self._heaviest(by=self._opened), REASON_TOO_MANY,
                                            f"more than {self.max_open} utterances open"))
            u = self._open[key] = Utterance(chunk.device, chunk.utt, chunk.rate, chunk.channels, boot=chunk.boot)
            self._opened[chunk.device] = self._opened.get(chunk.device, 0) + 1
        else:
            self._open.move_to_end(key)
        u.items[chunk.seq] = item
        self._held[chunk.device] = self._held.get(chunk.device, 0) + 1
        if (chunk.rate, chunk.channels) != (u.rate, u.channels):
            rejected.append(self._close(u, REASON_MISMATCH, f"chunk {chunk.seq} is {chunk.rate} Hz x "
                                        f"{chunk.channels}, utterance is {u.rate} Hz x {u.channels}"))
            return None, rejected, []
        u.last_seen = time.monotonic()
        u.chunks[chunk.seq] = chunk
        u.frames += len(chunk.data) // (chunk.width * chunk.channels)
        u.nbytes += len(item.payload)
        over = None
        if u.frames > self.max_seconds * u.rate:
            over = (REASON_TOO_LONG, f"utterance longer than {self.max_seconds} s")
        elif len(u.chunks) > self.max_chunks:
            over = (REASON_TOO_LONG, f"utterance of more than {self.max_chunks} chunks")
        elif u.nbytes > self.max_bytes:
            over = (REASON_TOO_LONG, f"utterance of more than {self.max_bytes} bytes")
        if over is not None:
            rejected.append(self._close(u, *over))
            return None, rejected, []
        if chunk.final:
            self._forget(u)
            self._done[key] = frozenset(u.chunks)
            while len(self._done) > 4 * self.max_open:
                self._done.popitem(last=False)
            return u, rejected, []
        rejected += self._enforce_share()
        return None, rejected, []

    def expire(self, now: float | None = None) -> list[Rejected]:
        """Reject utterances idle for more than ``timeout_s`` (monotonic ``now``)."""
        now = time.monotonic() if now is None else now
        return [self._close(u, REASON_TIMEOUT, f"no final chunk within {self.timeout_s} s")
                for u in [u for u in self._open.values() if now - u.last_seen > self.timeout_s]]

    def touch_all(self, now: float | None = None) -> None:
        """Restart every open utterance's timeout (monotonic ``now``): called while the gateway is
        disconnected and on reconnecting, when the missing chunks wait at the broker."""
        now = time.monotonic() if now is None else now
        for u in self._open.values():
            u.last_seen = now

    # bookkeeping ---------------------------------------------------------------------------------------
    def _enforce_share(self) -> list[Rejected]:
        """While the assembler holds more than ``hold_items`` chunks, the device holding the most (so
        over its fair share ``hold_items / devices``) loses its own oldest open utterance."""
        out = []
        while self.held() > self.hold_items:
            device = self._heaviest(by=self._held)
            out.append(self._evict(device, REASON_OVER_SHARE,
                                   f"device holds {self._held[device]} of the {self.hold_items} chunks the "
                                   f"gateway assembles, over its fair share"))
        return out

    def _heaviest(self, by: dict[str, int]) -> str:
        return max(by, key=lambda d: (by[d], self._held.get(d, 0)))

    def _evict(self, device: str, reason: str, detail: str) -> Rejected:
        oldest = next(u for u in self._open.values() if u.device == device)
        return self._close(oldest, reason, detail)

    def _forget(self, u: Utterance) -> None:
        del self._open[(u.device, u.boot, u.utt)]
        for counts, n in ((self._held, len(u.items)), (self._opened, 1)):
            left = counts[u.device] - n
            if left > 0:
                counts[u.device] = left
            else:
                del counts[u.device]

    def _close(self, u: Utterance, reason: str, detail: str) -> Rejected:
        self._forget(u)
        self._rejected[(u.device, u.boot, u.utt)] = reason
        while len(self._rejected) > 4 * self.max_open:
            self._rejected.popitem(last=False)
        return Rejected(u.device, u.seq if u.chunks else None, reason, detail, u.inputs)
