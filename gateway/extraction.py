"""One extraction loop per modality: micro-batch, decode, run the model, hand on, then acknowledge.

Per mode (the same loop, a different last step):

- ``split``: extractor -> FeatureMessage -> ``{p}:features:{task}`` (privedge);
- ``cloud_only``: the validated media -> MediaMessage -> ``{p}:media:{task}`` (comparison baseline; the
  frame is validated but its pixels are not decoded: that work belongs to the worker in this mode);
- ``local_only``: whole network -> Result JSON straight to ``{p}/{device}/result``; nothing goes up.

Every rejected input is reported (errors topic + per-reason counter) and acknowledged; the loop goes on.
Inputs are acknowledged only after the whole batch is handed on. Stage timers: ``decode`` (msgpack,
validation, pixels/PCM), ``preprocess`` (resize / pitch shift + log-mel), ``extract`` (the network),
``publish`` (the pipelined XADD, in upstream).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gateway.audio import Rejected, Utterance, UtteranceAssembler
from gateway.config import GatewaySettings
from gateway.intake import DeviceQueues, Inbound, Intake
from gateway.metrics import Metrics
from gateway.upstream import Upstream
from schemas import FeatureMessage, Names, Result, SchemaError, make_id
from schemas.media import AudioChunk, ImageFrame, decode_image
from schemas.upload import MediaMessage

log = logging.getLogger(__name__)

TOP_K = 5
"""Scores kept in a local_only Result (top-k labels)."""
MAX_PEEK = 8 * 1024 * 1024
"""Largest rejected payload whose ``seq`` the error report tries to read (bytes)."""


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


class ExtractionLoop:
    """Serves one topic kind ("image" or "audio") with one model (Extractor, FullModel, or a manifest)."""

    def __init__(self, kind: str, model: Any, manifest: dict, settings: GatewaySettings, names: Names,
                 intake: Intake, upstream: Upstream | None, metrics: Metrics,
                 report: Callable[[str, int | None, str, str, str], None]) -> None:
        self.kind = kind
        self.model = model                # Extractor (split), FullModel (local_only), None (cloud_only)
        self.manifest = manifest
        self.task = manifest["task"]
        self.model_id = manifest["model"]
        self.labels = list(manifest["labels"])
        self.s = settings
        self.names = names
        self.intake = intake
        self.queue: DeviceQueues = intake.queues[kind]
        self.upstream = upstream
        self.metrics = metrics
        self._report = report
        self.reply = names.results(settings.id)
        self.stream = names.media(self.task) if settings.mode == "cloud_only" else names.features(self.task)
        self.assembler = UtteranceAssembler(settings.audio_max_seconds, settings.audio_max_open,
                                            settings.audio_timeout_s) if kind == "audio" else None
        self.draining = False
        self.drain_deadline = float("inf")
        self.thread = threading.Thread(target=self._run, name=f"gateway-{kind}", daemon=True)
        self.error: BaseException | None = None

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
                    for r in self.assembler.expire():
                        self._reject_many(r)
                    self.metrics.set_gauge(f"{self.kind}_open_utterances", len(self.assembler))
                self.metrics.set_gauge(f"{self.kind}_queue", self.queue.depth())
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
        """Decode, run and hand on one micro-batch of MQTT inputs."""
        t0 = time.perf_counter()
        ready = [r for item in items for r in self._decode(item)]
        self.metrics.observe("decode", time.perf_counter() - t0, len(items))
        if not ready:
            return
        if self.s.mode == "cloud_only":
            self._hand_on(ready, [self._media_message(r) for r in ready])
            return
        ready = self._preprocess(ready)
        if not ready:
            return
        outputs, ready = self._run_model(ready)
        if self.s.mode == "local_only":
            self._publish_results(ready, outputs)
        else:
            now = time.time()
            msgs = [FeatureMessage.from_array(z, gateway=self.s.id, device=r.device, seq=r.seq, ts=r.ts,
                                              boot=r.media.boot, ts_sent=now, task=self.task, model=self.model_id,
                                              reply=self.reply).encode() for r, z in zip(ready, outputs)]
            self._hand_on(ready, msgs)

    def _decode(self, item: Inbound) -> list[Ready]:
        """The inputs this MQTT message completes: a frame, an utterance's last chunk, or nothing."""
        try:
            if self.kind == "image":
                frame = ImageFrame.decode(item.payload)
                self._check_device(frame, item)
                raw = None if self.s.mode == "cloud_only" else decode_image(frame)
                return [Ready(frame.device, frame.seq, frame.ts, [item], frame, raw)]
            chunk = AudioChunk.decode(item.payload)
            self._check_device(chunk, item)
        except SchemaError as e:
            self._reject(item, _seq_of(item.payload), e.reason, str(e))
            return []
        done, rejected = self.assembler.add(chunk, item)
        for r in rejected:
            self._reject_many(r)
        if done is None:
            return []
        return [Ready(done.device, done.seq, done.first.ts, done.items, done,
                      None if self.s.mode == "cloud_only" else done.wave())]

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
            except (ValueError, TypeError, RuntimeError) as e:
                self._reject_ready(r, "undecodable media", f"preprocessing failed: {e}")
        self.metrics.observe("preprocess", time.perf_counter() - t0, len(ready))
        return out

    def _run_model(self, ready: list[Ready]) -> tuple[np.ndarray, list[Ready]]:
        """(B, ...) outputs for the inputs that ran; a failing batch is retried item by item to find
        the input that breaks it (reason ``model failed``)."""
        run = self.model.extract_batch if self.s.mode == "split" else self.model.predict_batch
        t0 = time.perf_counter()
        try:
            outputs = run([r.x for r in ready])  # (B, *feature_shape) or (B, C)
            kept = ready
        except (ValueError, TypeError, RuntimeError) as e:
            log.warning("%s batch of %d failed (%s); retrying one by one", self.kind, len(ready), e)
            outs, kept = [], []
            for r in ready:
                try:
                    outs.append(run([r.x])[0])
                    kept.append(r)
                except (ValueError, TypeError, RuntimeError) as e1:
                    self._reject_ready(r, "model failed", str(e1))
            outputs = np.stack(outs) if outs else np.zeros((0,))
        self.metrics.observe("extract", time.perf_counter() - t0, len(ready))
        self.metrics.inc("extracted", len(kept))
        return outputs, kept

    def _media_message(self, r: Ready) -> bytes:
        if self.kind == "image":
            media, payload = r.media, r.items[0].payload  # the camera's bytes, unchanged
        else:
            media, payload = r.media.joined(), None  # one final chunk holding the whole utterance
        return MediaMessage.wrap(media, gateway=self.s.id, ts_sent=time.time(), task=self.task,
                                 model=self.model_id, reply=self.reply, seq=r.seq, payload=payload).encode()

    def _hand_on(self, ready: list[Ready], messages: list[bytes]) -> None:
        ok = self.upstream.send([(self.stream, m) for m in messages],
                                give_up=lambda: self.draining and time.monotonic() > self.drain_deadline)
        if not ok:
            log.error("gave up handing on %d %s inputs at shutdown; left unacknowledged for redelivery",
                      len(ready), self.kind)
            return
        for r in ready:
            log.debug("handed on %s/%s/%s (mids %s)", self.s.id, r.device, r.seq, [i.mid for i in r.items])
            self.intake.ack(r.items)

    def _publish_results(self, ready: list[Ready], probs: np.ndarray) -> None:
        t0 = time.perf_counter()
        for r, p in zip(ready, probs):  # p: (C,) probabilities
            order = np.argsort(p)[::-1][:TOP_K]
            result = Result(id=make_id(self.s.id, r.device, r.seq, r.media.boot), task=self.task, model=self.model_id,
                            label=self.labels[order[0]], score=float(p[order[0]]),
                            scores={self.labels[i]: float(p[i]) for i in order}, ts=r.ts,
                            ts_done=time.time(), worker=self.s.id)
            self.intake.publish(self.names.result(r.device), result.to_json(), qos=1)
            self.intake.ack(r.items)
        self.metrics.inc("results_relayed", len(ready))
        self.metrics.observe("relay", time.perf_counter() - t0, len(ready))

    # rejections -------------------------------------------------------------------------------------
    def _reject(self, item: Inbound, seq: int | None, reason: str, detail: str) -> None:
        self._report(item.device, seq, item.topic, reason, detail)
        self.intake.ack([item])

    def _reject_ready(self, r: Ready, reason: str, detail: str) -> None:
        self._report(r.device, r.seq, r.items[0].topic, reason, detail)
        self.intake.ack(r.items)

    def _reject_many(self, r: Rejected) -> None:
        self._report(r.device, r.seq, r.items[0].topic if r.items else "", r.reason, r.detail)
        self.intake.ack(r.items)


def _seq_of(payload: bytes) -> int | None:
    """The ``seq`` of a rejected payload when it can be read cheaply (for the error report), else None."""
    import msgpack

    if len(payload) > MAX_PEEK:
        return None
    try:
        obj = msgpack.unpackb(payload, raw=False, max_bin_len=len(payload), max_map_len=64, max_array_len=256)
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError):
        return None
    seq = obj.get("seq") if isinstance(obj, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63 else None
