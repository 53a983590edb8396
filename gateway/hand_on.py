"""What the gateway's extraction loops hand on: one message per input, added to this home's stream.

:class:`StreamHandOn` is the part every upstream hand-on shares: encode one message per input (an
input whose message cannot be made is rejected alone), add the batch to this home's streams (one per shard
of the task; each input to the shard of a hash of its device, boot and sequence number, the same at every
retry: schemas.names.shard_of) through
:class:`gateway.upstream.Upstream` (pipelined, retried, spooled), and acknowledge the inputs only once it
is there; at shutdown past the drain deadline they are left unacknowledged for the broker to resend.
:class:`FeaturesUpstream` is privedge's: the extractor's released features as FeatureMessages to
``{p}:features:{{task}:{NN}}:{gateway}``, in the compact envelope (wire version 2, schemas.compact)
unless the gateway's ``wire_version`` is 1.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from gateway.extraction import ExtractionLoop, Ready, describe
from gateway.pseudonyms import Pseudonyms
from gateway.upstream import Upstream
from schemas import FeatureMessage, compact
from schemas.names import shard_of


class StreamHandOn:
    """Messages to ``streams`` (one, or one per shard) through ``upstream``; :meth:`message` and
    :meth:`refusal` say which."""

    network: Any | None = None

    def __init__(self, upstream: Upstream, streams: str | Sequence[str]) -> None:
        self.upstream = upstream
        # this home's own streams of the task, shard 0 first (schemas.names)
        self.streams = (streams,) if isinstance(streams, str) else tuple(streams)
        self.stream = self.streams[0]

    def stream_of(self, r: Ready) -> str:
        """The stream (shard) of one input: the same for every retry of it."""
        if len(self.streams) == 1:
            return self.stream
        return self.streams[shard_of(f"{r.device}/{r.media.boot}/{r.seq}/{r.face_index}", len(self.streams))]

    def run(self, inputs: list[np.ndarray]) -> np.ndarray:
        """The network on B preprocessed inputs (subclasses with a network say which)."""
        raise NotImplementedError

    def message(self, loop: ExtractionLoop, r: Ready, output: Any, now: float) -> bytes:
        """The encoded message of one input (raises when it cannot be made)."""
        raise NotImplementedError

    def refusal(self, e: Exception) -> tuple[str, str]:
        """(reason, detail) of an input whose message could not be made."""
        raise NotImplementedError

    def hand_on(self, loop: ExtractionLoop, ready: list[Ready], outputs: Any) -> None:
        now = time.time()
        kept, msgs = [], []
        with loop.metrics.timed("encode", len(ready)):
            for r, out in zip(ready, outputs):
                try:
                    msgs.append((self.stream_of(r), self.message(loop, r, out, now)))
                    kept.append(r)
                except Exception as e:  # noqa: BLE001 (one input's message that does not encode: reject it)
                    loop.reject(r, *self.refusal(e))
        if not kept:
            return
        if self.upstream.send(msgs, give_up=loop.giving_up):
            loop.acknowledge(kept)
        else:
            loop.leave_for_redelivery(kept, "gave up handing on at shutdown")


class FeaturesUpstream(StreamHandOn):
    """Split serving: the bundle's Extractor at home, its features to the home's features stream."""

    def __init__(self, extractor: Any, upstream: Upstream, streams: str | Sequence[str],
                 pseudonyms: Pseudonyms | None = None, wire_version: int = compact.VERSION) -> None:
        super().__init__(upstream, streams)
        self.wire_version = wire_version
        self.network = extractor  # models.serving.Extractor (the home half only)
        self.pseudonyms = pseudonyms  # the names the cloud sees instead of the device's (gateway/pseudonyms.py)

    def run(self, inputs: list[np.ndarray]) -> np.ndarray:
        return self.network.extract_batch(inputs)  # (B, *feature_shape)

    def message(self, loop: ExtractionLoop, r: Ready, output: Any, now: float) -> bytes:
        device, boot, seq = r.device, r.media.boot, r.seq
        if self.pseudonyms is not None:
            device, boot, seq = self.pseudonyms.hide(device, boot, seq, ts=now)
        msg = FeatureMessage.from_array(output, gateway=loop.s.id, device=device, seq=seq, boot=boot,
                                        ts=r.ts, ts_sent=now, task=loop.task, model=loop.model_id,
                                        reply=loop.reply, face=r.face_index)
        return compact.encode(msg) if self.wire_version == compact.VERSION else msg.encode()

    def refusal(self, e: Exception) -> tuple[str, str]:
        return "model failed", f"features not sendable: {describe(e)}"

