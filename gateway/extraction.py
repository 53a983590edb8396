"""One extraction loop per modality: micro-batch, decode, run the network, hand on, then acknowledge.

The loop is the same whatever becomes of its inputs; the last step is its :class:`HandOn`. The gateway
serves one, :class:`gateway.hand_on.FeaturesUpstream`: the extractor's output -> FeatureMessage ->
``{p}:features:{task}:{gateway}``. The benchmark's comparison baselines (``bench/baselines/``) drive this
same loop with hand-ons of their own. A hand-on without a network takes the inputs as validated media:
their pixels are not decoded nor their utterances joined (whoever the hand-on gives them to does that).

In an image loop the face stage (gateway/faces.py) comes between decode and preprocess: each frame becomes
one input per face, acknowledged once its last face is handed on; a frame without a face sends nothing.

Every rejected input is reported (errors topic, counters by reason and by device) and acknowledged; the
loop goes on. Whatever exception one input's decode, preprocessing or model run raises, of any type,
rejects that input alone: an unexpected type is logged with its traceback (it is a bug to fix), but one
hostile input must not end the loop, and an input left unacknowledged would come back after a restart
and end it again. Inputs are acknowledged only after the whole batch is handed on.

Per-kind drop policy (gateway/intake.py explains why nothing else is dropped): a camera frame older than
``image_max_age_s`` on its camera's corrected clock (gateway/staleness.py) is dropped, acknowledged and
counted per device (``dropped``) without being decoded further; audio chunks are never dropped.

A refused payload is never parsed again for the error report: its ``seq`` is reported when the bounded
decode got as far as a map (a field failed validation), else null. Stage timers: ``decode`` (msgpack,
validation, pixels/PCM), ``detect`` (the face stage), ``preprocess`` (resize / pitch shift + log-mel),
``extract`` (the network),
``publish`` (the pipelined XADD, in upstream).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from common.warm_up import warm_up
from gateway.audio import Rejected, Utterance, UtteranceAssembler
from gateway.config import GatewaySettings
from gateway.faces import FaceStage
from gateway.intake import DeviceQueues, Inbound, Intake
from gateway.metrics import Metrics
from gateway.staleness import DeviceClocks
from schemas import Names, SchemaError
from schemas.codec import unpack_map
from schemas.limits import DEFAULT_LIMITS
from schemas.media import AudioChunk, ImageFrame, decode_image

log = logging.getLogger(__name__)


class DeviceMismatch(SchemaError):
    """The payload names another device than its topic (a device may speak only for itself)."""

    reason = "device mismatch"


@dataclass
class Ready:
    """One decoded input, ready for the model."""

    device: str
    seq: int
    ts: float                       # capture time, Unix seconds
    items: list[Inbound]            # MQTT messages to acknowledge once handed on
    media: ImageFrame | Utterance   # the validated frame, or the assembled utterance
    raw: Any = None                 # image: uint8 HxW[xC]; speech: (wave float32, rate Hz)
    x: np.ndarray | None = None     # preprocessed network input
    face: Any = None                # gateway.faces.Face: this input is one face of the frame (raw: its crop)
    frame: Any = None               # gateway.faces.FrameAck shared by the faces of one frame

    @property
    def face_index(self) -> int | None:
        """The face's index in its frame (in its id after ``#``), None for a whole input."""
        return None if self.face is None else self.face.index

    def to_ack(self) -> list[Inbound]:
        """What to acknowledge now that this input is handed on or rejected: its MQTT messages, or for a
        face, its frame's once the frame's last face is done."""
        return self.items if self.frame is None else self.frame.done()


class HandOn(Protocol):
    """The last step of an extraction loop: what becomes of one micro-batch of decoded inputs.

    ``network`` preprocesses raw media (``network.preprocess(raw) -> x``) and :meth:`run` runs it on a
    batch; with ``network`` None the inputs are handed on as validated media, undecoded. :meth:`hand_on`
    gets the inputs that made it through (with the network's output row of each, or None), and for each
    either acknowledges it (:meth:`ExtractionLoop.acknowledge`), rejects it (:meth:`ExtractionLoop.reject`),
    or leaves it unacknowledged for redelivery (:meth:`ExtractionLoop.leave_for_redelivery`)."""

    network: Any | None

    def run(self, inputs: list[np.ndarray]) -> np.ndarray:
        """The network on B preprocessed inputs: (B, ...) outputs."""

    def hand_on(self, loop: "ExtractionLoop", ready: list[Ready], outputs: Any) -> None:
        """Hand on ``ready`` (outputs: (B, ...) rows of :meth:`run`, or B Nones without a network)."""


class ExtractionLoop:
    """Serves one topic kind ("image" or "audio") of one bundle (``manifest``) through ``hand_on``."""

    def __init__(self, kind: str, manifest: dict, settings: GatewaySettings, names: Names, intake: Intake,
                 metrics: Metrics, report: Callable[[str, int | None, str, str, str], None],
                 hand_on: HandOn, faces: FaceStage | None = None) -> None:
        self.kind = kind
        self.hand_on = hand_on
        self.faces = faces                # the face stage of an image loop (gateway/faces.py), or None
        self.manifest = manifest
        self.task = manifest["task"]
        self.model_id = manifest["model"]
        self.labels = list(manifest["labels"])
        self.s = settings
        self.names = names
        self.intake = intake
        self.queue: DeviceQueues = intake.queues[kind]
        self.metrics = metrics
        self._report = report
        self.reply = names.results(settings.id)
        self.assembler = UtteranceAssembler(
            settings.audio_max_seconds, settings.audio_max_open, settings.audio_timeout_s,
            max_chunks=settings.audio_max_chunks, max_bytes=settings.audio_max_bytes,
            # half the in-flight window: the rest keeps the queues moving while utterances are assembled
            hold_items=max(1, settings.receive_maximum // 2)) if kind == "audio" else None
        self.clocks = DeviceClocks()
        self._epoch = 0
        self.draining = False
        self.drain_deadline = float("inf")
        self.thread = threading.Thread(target=self._run, name=f"gateway-{kind}", daemon=True)
        self.error: BaseException | None = None

    @property
    def model(self) -> Any | None:
        """The network the hand-on runs (e.g. the bundle's Extractor), or None."""
        return self.hand_on.network

    def warm_up(self) -> None:
        """One dummy inference (common.warm_up), so that the first real input does not wait for it."""
        if self.model is not None:
            warm_up(self.model.preprocess, self.hand_on.run, "image" if self.kind == "image" else "speech")

    # loop -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def drain(self, deadline: float) -> None:
        """Finish what the queue holds (the intake has stopped), giving up on upstream at ``deadline``."""
        self.draining = True
        self.drain_deadline = deadline
        self.queue.close()

    def _run(self) -> None:
        try:
            while True:
                items = self.queue.take(self.s.batch, self.s.wait_ms / 1000.0, timeout_s=0.2)
                if self.assembler is not None:
                    if not self.intake.connected.is_set() or self.intake.epoch != self._epoch:
                        # the missing chunks wait at the broker meanwhile: their timeout starts again
                        self._epoch = self.intake.epoch
                        self.assembler.touch_all()
                    for r in self.assembler.expire():
                        self._reject_many(r)
                    self.metrics.set_gauge("open_utterances", len(self.assembler), kind=self.kind)
                    self.metrics.set_gauge("held_chunks", self.assembler.held(), kind=self.kind)
                self.metrics.set_gauge("queue", self.queue.depth(), kind=self.kind)
                if items:
                    self.process(items)
                elif self.draining:
                    # Utterances still open at shutdown stay unacknowledged: the broker resends them.
                    return
        except BaseException as e:  # a bug, not bad input: make it visible to the service and stop
            self.error = e
            log.exception("%s extraction loop failed", self.kind)
            raise

    # one batch -------------------------------------------------------------------------------------
    def process(self, items: list[Inbound]) -> None:
        """Decode, run and hand on one micro-batch of MQTT inputs; then acknowledge the duplicate chunks
        it held (see _decode)."""
        self._duplicates: list[Inbound] = []
        self._process(items)
        if self._duplicates:
            self.intake.ack(self._duplicates)

    def _process(self, items: list[Inbound]) -> None:
        t0 = time.perf_counter()
        ready: list[Ready] = []
        searching = 0.0
        for item in items:
            got = self._decode(item)
            if got and self.faces is not None and self.model is not None:
                # One input per face (gateway/faces.py), frame by frame: a scene's pixels are let go for
                # its crops before the next frame is decoded, so a batch holds one decoded scene at most.
                t1 = time.perf_counter()
                got = self.faces.split(got, self.reject, self.intake.ack)
                searching += time.perf_counter() - t1
            ready += got
        self.metrics.observe("decode", time.perf_counter() - t0 - searching, len(items))
        if not ready:
            return
        outputs: Any = [None] * len(ready)
        if self.model is not None:
            ready = self._preprocess(ready)
            if not ready:
                return
            outputs, ready = self._run_model(ready)
        if self.faces is not None and ready:  # the boxes stay at home, for the results relay
            self.faces.remember(ready)
        self.hand_on.hand_on(self, ready, outputs)

    def _decode(self, item: Inbound) -> list[Ready]:
        """The inputs this MQTT message completes: a frame, an utterance's last chunk, or nothing."""
        obj = None
        try:
            cls = ImageFrame if self.kind == "image" else AudioChunk
            obj = unpack_map(item.payload, getattr(DEFAULT_LIMITS, cls.PAYLOAD_LIMIT), DEFAULT_LIMITS)
            msg = cls.from_wire(obj)
            self._check_device(msg, item)
            if self.kind == "image":
                if self._stale(msg, item):
                    return []
                raw = None if self.model is None else decode_image(msg)
                return [Ready(msg.device, msg.seq, msg.ts, [item], msg, raw)]
        except SchemaError as e:
            self._reject(item, _seq_of(obj), e.reason, str(e))
            return []
        except Exception as e:  # noqa: BLE001 (any failure of one input rejects that input only)
            log.exception("%s input from %s: unexpected failure while decoding", self.kind, item.device)
            self._reject(item, _seq_of(obj), "undecodable media", f"decoding failed: {describe(e)}")
            return []
        # Assembly: from here on the chunk belongs to its utterance, acknowledged with it.
        done, rejected, duplicates = self.assembler.add(msg, item)
        if duplicates:
            # Acknowledged with the batch, after it is handed on: a duplicate of an utterance completed in
            # this very batch (its copy from before a reconnect) must not be acknowledged before that.
            self.metrics.inc("duplicate_chunks", len(duplicates))
            self._duplicates += duplicates
        for r in rejected:
            self._reject_many(r)
        if done is None:
            return []
        ready = Ready(done.device, done.seq, done.first.ts, done.inputs, done)
        if self.model is not None:
            try:
                ready.raw = done.wave()
            except Exception as e:  # noqa: BLE001 (this utterance only)
                log.exception("%s/%s: unexpected failure joining the utterance", done.device, done.seq)
                self.reject(ready, "undecodable media", f"joining failed: {describe(e)}")
                return []
        return [ready]

    def _stale(self, frame: ImageFrame, item: Inbound) -> bool:
        """Drop (acknowledge, count per device) a frame older than image_max_age_s on its camera's clock."""
        now = time.time()
        arrived = now - (time.monotonic() - item.received)
        age = self.clocks.age(frame.device, frame.ts, arrived, now)
        if age <= self.s.image_max_age_s:
            return False
        self.metrics.inc_label("dropped", frame.device)
        log.info("dropped stale frame %s/%s: %.1f s old > %.1f s", frame.device, frame.seq, age,
                 self.s.image_max_age_s)
        self.intake.ack([item])
        return True

    def _check_device(self, msg: ImageFrame | AudioChunk, item: Inbound) -> None:
        if msg.device != item.device:
            raise DeviceMismatch(f"payload device {msg.device!r} published on {item.topic!r}", field="device")

    def _preprocess(self, ready: list[Ready]) -> list[Ready]:
        t0 = time.perf_counter()
        out = []
        for r in ready:
            try:
                r.x = self.model.preprocess(r.raw)
                out.append(r)
            except Exception as e:  # noqa: BLE001 (any failure of one input rejects that input only)
                if not isinstance(e, (ValueError, TypeError, RuntimeError)):
                    log.exception("%s/%s: unexpected failure in preprocessing", r.device, r.seq)
                self.reject(r, "undecodable media", f"preprocessing failed: {describe(e)}")
        self.metrics.observe("preprocess", time.perf_counter() - t0, len(ready))
        return out

    def _run_model(self, ready: list[Ready]) -> tuple[np.ndarray, list[Ready]]:
        """(B, ...) outputs for the inputs that ran; a failing batch is retried item by item to find
        the input that breaks it (reason ``model failed``)."""
        run = self.hand_on.run
        t0 = time.perf_counter()
        try:
            outputs = run([r.x for r in ready])  # (B, *feature_shape) or (B, C)
            kept = ready
        except Exception as e:  # noqa: BLE001 (find the input that breaks the batch, below)
            log.warning("%s batch of %d failed (%s); retrying one by one", self.kind, len(ready), describe(e))
            outs, kept = [], []
            for r in ready:
                try:
                    outs.append(run([r.x])[0])
                    kept.append(r)
                except Exception as e1:  # noqa: BLE001 (any failure of one input rejects that input only)
                    if not isinstance(e1, (ValueError, TypeError, RuntimeError)):
                        log.exception("%s/%s: unexpected failure in the model", r.device, r.seq)
                    self.reject(r, "model failed", describe(e1))
            outputs = np.stack(outs) if outs else np.zeros((0,))
        self.metrics.observe("extract", time.perf_counter() - t0, len(ready))
        self.metrics.inc("extracted", len(kept))
        return outputs, kept

    # what a hand-on may do with its inputs -----------------------------------------------------------
    def acknowledge(self, ready: list[Ready]) -> None:
        """Acknowledge handed-on inputs at the broker (once nothing of them can be lost any more)."""
        for r in ready:
            log.debug("handed on %s/%s/%s (mids %s)", self.s.id, r.device, r.seq, [i.mid for i in r.items])
            self.intake.ack(r.to_ack())

    def leave_for_redelivery(self, ready: list[Ready], why: str) -> None:
        """Leave ``ready`` (and the duplicates this batch held) unacknowledged: the broker resends them."""
        log.error("%s: %d %s inputs left unacknowledged for redelivery", why, len(ready), self.kind)
        self._duplicates = []  # redelivered too, with the rest

    def giving_up(self) -> bool:
        """Whether a hand-on waiting for upstream should give up (stopping, past the drain deadline)."""
        return self.draining and time.monotonic() > self.drain_deadline

    # rejections -------------------------------------------------------------------------------------
    def _reject(self, item: Inbound, seq: int | None, reason: str, detail: str) -> None:
        self._report(item.device, seq, item.topic, reason, detail)
        self.intake.ack([item])

    def reject(self, r: Ready, reason: str, detail: str) -> None:
        """Reject one input: report it with ``reason`` and acknowledge it."""
        self._report(r.device, r.seq, r.items[0].topic, reason, detail)
        self.intake.ack(r.to_ack())

    def _reject_many(self, r: Rejected) -> None:
        self._report(r.device, r.seq, r.items[0].topic if r.items else "", r.reason, r.detail)
        self.intake.ack(r.items)


def _seq_of(obj: object) -> int | None:
    """The ``seq`` of a refused input for the error report: from the map the bounded decode produced, if
    it got that far and the field is a valid seq, else None. The payload itself is never parsed again."""
    seq = obj.get("seq") if isinstance(obj, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63 else None


def describe(e: BaseException) -> str:
    """``Type: message`` of an exception, for an error report."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
