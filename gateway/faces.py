"""The face stage of the image loop: the faces of a camera frame, each cropped and sent on its own.

A home camera sends a whole scene; the image networks were trained on face crops. Between decoding a frame
and preprocessing it for the extractor, the stage (settings ``face_detector``, ``max_faces``,
``min_face_px``, ``face_crop_max_px``):

- takes a frame no larger than ``face_crop_max_px`` on both sides whole: it is a face crop already, one
  input under the frame's own id, as before the stage;
- otherwise runs the detector (:mod:`models.faces`; by default short-range BlazeFace on ONNX Runtime, the
  copy the image bundle carries, never torch) and keeps the faces at least ``min_face_px`` on each side,
  at most ``max_faces`` of them, largest first (counted: ``faces_found``, ``faces_skipped_small``,
  ``faces_over_max``);
- cuts each with :func:`models.faces.crop_square`, the framing the networks were trained on (the loop's
  ``preprocess`` then makes it the 64x64 input, as :func:`models.faces.crop_face` does for training and
  the audit), into one input per face whose id is the frame's followed by ``#{index}``
  (:func:`schemas.features.make_id`), so retries and the dedup windows treat each face exactly once;
- answers a frame with no face to send by itself: nothing goes up, and a ``no_face`` Result under the
  frame's id is published on the device's result topic (counted in ``frames_without_faces``).

The frame's MQTT message is acknowledged once every one of its faces is handed on or rejected
(:class:`FrameAck`): a crash before that brings the whole frame back, and the ids of its faces make the
copies of those already sent duplicates.

The boxes never leave the home (the cloud needs the features only). :class:`FaceLedger` keeps each face's
box and its frame's summary from the moment its features are handed on until its Result comes back, when
the results relay adds them. It is bounded (:data:`LEDGER_SIZE` faces) and held in memory: a result that
comes back once its entry is gone (after a gateway restart, or behind a backlog of more faces than that)
still carries its face index, which is in its id, but no box or summary.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gateway.metrics import Metrics
from models.faces import FaceBox, FaceDetector, crop_square, make_detector
from schemas import Result, make_id
from schemas.results import NO_FACE

log = logging.getLogger(__name__)

LEDGER_SIZE = 32_768
"""Faces whose box the ledger holds while their results are out (a few MB at most; the oldest go first)."""


class FaceStageError(RuntimeError):
    """The configured face detector cannot be made (its package is missing, its weights unreadable)."""


@dataclass(frozen=True)
class Face:
    """One face sent for analysis: its index in its frame (largest first), its box in frame pixels
    ``(x, y, w, h)`` clipped to the frame, and how many faces the detector found in that frame."""

    index: int
    box: tuple[int, int, int, int]
    found: int


@dataclass(frozen=True)
class FrameFaces:
    """What the detector made of one frame: faces found, and the (face, crop pixels) of those sent."""

    found: int
    faces: list[tuple[Face, np.ndarray]]


class FrameAck:
    """The MQTT inputs of one camera frame, to acknowledge once the last of its ``faces`` is done with
    (handed on or rejected). Used by the image loop's thread only."""

    def __init__(self, items: list, faces: int) -> None:
        self.items = items
        self.pending = faces

    def done(self) -> list:
        """One face is done: the frame's inputs when it was the last, else nothing yet."""
        self.pending -= 1
        return self.items if self.pending == 0 else []


class FaceLedger:
    """face id -> (box, faces found, faces answered) of the faces whose results are out; thread-safe (the
    image loop writes, the results relay reads)."""

    def __init__(self, size: int = LEDGER_SIZE) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[tuple[int, int, int, int], int, int]] = OrderedDict()

    def remember(self, face_id: str, box: tuple[int, int, int, int], found: int, answered: int) -> None:
        with self._lock:
            self._entries[face_id] = (box, found, answered)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def annotate(self, result: Result) -> Result:
        """``result`` (from a worker) with its face's box and frame summary when the ledger holds them
        (taken out: a face is answered once, the relay drops later copies by id), else without any: those
        fields come from the home alone, never from the cloud."""
        with self._lock:
            entry = self._entries.pop(result.id, None)
        if entry is None:
            if result.box is None and result.faces_found is None and result.faces_answered is None:
                return result
            return dataclasses.replace(result, box=None, faces_found=None, faces_answered=None)
        box, found, answered = entry
        return dataclasses.replace(result, box=box, faces_found=found, faces_answered=answered)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def frame_box(box: FaceBox, width: int, height: int) -> tuple[int, int, int, int]:
    """A detector's box as whole frame pixels ``(x, y, w, h)``, clipped to a ``width`` x ``height`` frame."""
    x0, y0 = round(min(max(box.x, 0.0), width)), round(min(max(box.y, 0.0), height))
    x1, y1 = round(min(max(box.x + box.w, 0.0), width)), round(min(max(box.y + box.h, 0.0), height))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


class FaceStage:
    """Finds, bounds and crops the faces of the frames of one image loop, and answers the empty ones."""

    def __init__(self, detector: FaceDetector, *, gateway: str, task: str, model: str, max_faces: int,
                 min_face_px: int, crop_max_px: int, metrics: Metrics, ledger: FaceLedger,
                 publish: Callable[[str, bytes], Any], result_topic: Callable[[str], str],
                 on_result: Callable[[Result], Any] | None = None) -> None:
        self.detector = detector
        self.gateway, self.task, self.model = gateway, task, model
        self.max_faces, self.min_face_px, self.crop_max_px = max_faces, min_face_px, crop_max_px
        self.metrics = metrics
        self.ledger = ledger
        self._publish = publish
        self._result_topic = result_topic
        self._on_result = on_result  # where a no-face result goes instead (gateway/home_results.py)

    @classmethod
    def from_settings(cls, settings, manifest: dict, *, metrics: Metrics, ledger: FaceLedger, intake,
                      names, on_result: Callable[[Result], Any] | None = None,
                      detector_path=None) -> "FaceStage | None":
        """The stage the settings ask for (None for ``face_detector: none``), its detector made and run
        once on a blank frame, so that a missing package or weight file stops the start, not a frame.
        ``detector_path``: the bundle's BlazeFace on ONNX (models/face_onnx.py), served on ONNX Runtime;
        without it BlazeFace needs LiteRT (the ``train`` extra)."""
        if settings.face_detector == "none":
            return None
        t0 = time.perf_counter()
        params = {}
        if settings.face_detector == "blazeface" and detector_path is not None:
            params["onnx"] = str(detector_path)
        try:
            detector = make_detector(settings.face_detector, **params)
            detector.detect(np.zeros((240, 320, 3), np.uint8))
        except (ImportError, OSError, ValueError, RuntimeError) as e:
            raise FaceStageError(f"face detector {settings.face_detector!r} cannot run: {e}") from e
        log.info("face stage: %s detector on %s ready in %.2f s (at most %d faces of %d px and more per frame; "
                 "frames up to %d px taken whole)", settings.face_detector,
                 getattr(detector, "runtime", "its own library"), time.perf_counter() - t0,
                 settings.max_faces, settings.min_face_px, settings.face_crop_max_px)
        return cls(detector, gateway=settings.id, task=manifest["task"], model=manifest["model"],
                   max_faces=settings.max_faces, min_face_px=settings.min_face_px,
                   crop_max_px=settings.face_crop_max_px, metrics=metrics, ledger=ledger,
                   publish=lambda topic, body: intake.publish(topic, body, qos=1), result_topic=names.result,
                   on_result=on_result)

    # one frame ---------------------------------------------------------------------------------------
    def find(self, pixels: np.ndarray) -> FrameFaces | None:
        """The faces to send of one decoded frame (uint8 HxW[xC]); None for a crop-sized frame, which is
        taken whole. Raises :class:`models.faces.FrameError` for pixels that are not an image."""
        height, width = pixels.shape[:2]
        if max(height, width) <= self.crop_max_px:
            return None
        with self.metrics.timed("detect"):
            boxes = self.detector.detect(pixels)  # largest first
        large = [b for b in boxes if min(b.w, b.h) >= self.min_face_px]
        kept = large[:self.max_faces]
        faces = [(Face(i, frame_box(b, width, height), len(boxes)), crop_square(pixels, b))
                 for i, b in enumerate(kept)]
        self.metrics.inc("faces_found", len(boxes))
        self.metrics.inc("faces_skipped_small", len(boxes) - len(large))
        self.metrics.inc("faces_over_max", len(large) - len(kept))
        return FrameFaces(len(boxes), faces)

    def split(self, ready: list, reject: Callable[[Any, str, str], None], ack: Callable[[list], None]) -> list:
        """The image loop's decoded frames (``gateway.extraction.Ready``) -> one input per face to send,
        crop-sized frames unchanged. A frame without a face to send is answered with a ``no_face`` result
        and acknowledged (``ack``); one the detector fails on is rejected (``reject(ready, reason, detail)``)."""
        out = []
        for r in ready:
            try:
                found = self.find(r.raw)
            except Exception as e:  # noqa: BLE001 (any failure of one frame rejects that frame only)
                if not isinstance(e, (ValueError, TypeError, RuntimeError)):
                    log.exception("%s/%s: unexpected failure in the face detector", r.device, r.seq)
                reject(r, "undecodable media", f"face detection failed: {type(e).__name__}: {e}")
                continue
            if found is None:
                out.append(r)
            elif not found.faces:
                self.metrics.inc("frames_without_faces")
                answer = self.no_face(r.media, found.found)
                if self._on_result is not None:
                    self._on_result(answer)
                else:
                    self._publish(self._result_topic(r.device), answer.to_json())
                ack(r.items)
            else:
                frame = FrameAck(r.items, len(found.faces))
                out += [dataclasses.replace(r, raw=crop, face=face, frame=frame) for face, crop in found.faces]
        return out

    def no_face(self, frame, found: int) -> Result:
        """The Result of a frame (ImageFrame) with no face to answer: label ``no_face``, score 0 (nothing
        was analysed), and the frame's summary (``found`` faces, all too small or none)."""
        return Result(id=make_id(self.gateway, frame.device, frame.seq, frame.boot), task=self.task,
                      model=self.model, label=NO_FACE, score=0.0, scores={}, ts=frame.ts, ts_done=time.time(),
                      worker=self.gateway, faces_found=found, faces_answered=0)

    def remember(self, ready: list) -> None:
        """Record the box and frame summary of each face among inputs about to be handed on (all the faces
        of a frame go in one batch: those of its faces in ``ready`` are the ones it answers)."""
        answered = Counter(id(r.frame) for r in ready if r.face is not None)
        for r in ready:
            if r.face is not None:
                face_id = make_id(self.gateway, r.device, r.seq, r.media.boot, r.face.index)
                self.ledger.remember(face_id, r.face.box, r.face.found, answered[id(r.frame)])
