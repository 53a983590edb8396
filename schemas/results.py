"""What comes back: the analyzer's Result, and the ErrorReport for rejected inputs.

A camera frame is answered per face (gateway/faces.py): each face has its own id (the frame's id, then
``#{face}``) and its own Result, to which the gateway adds the face's ``box`` in frame pixels and the
frame's ``faces_found`` / ``faces_answered`` before publishing it; these stay at home, the workers never
see them. A frame in which no face is answered gets one Result from the gateway itself, labelled
:data:`NO_FACE`, under the frame's id. Results without these optional fields decode as before.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from schemas.codec import Message, spec
from schemas.errors import WrongType
from schemas.features import face_of, split_id
from schemas.limits import Limits

NO_FACE = "no_face"
"""Label of the Result the gateway publishes for a camera frame in which it answered no face."""


@dataclass(frozen=True, kw_only=True)
class Result(Message):
    """One inference's outcome, written by a worker to ``{p}:results:{gateway}`` (field ``m``)."""

    PAYLOAD_LIMIT = "max_result_payload"
    id: str = spec("inference id (schemas.features.make_id), copied from the FeatureMessage")
    task: str = spec("task name")
    model: str = spec("bundle id of the analyzer")
    label: str = spec("top-1 label")
    score: float = spec("probability of the top-1 label, 0..1", lo=0.0, hi=1.0)
    scores: dict[str, float] | None = spec("top-k label -> probability", default=None)
    ts: float = spec("capture time of the input, Unix seconds (copied)", lo=0)
    ts_done: float = spec("time the worker finished, Unix seconds", lo=0)
    worker: str = spec("consumer name of the worker")
    box: tuple[int, ...] | None = spec("the face's box in frame pixels: x, y (top-left corner), w, h; face "
                                       "results only, added at the gateway", default=None, max_len=4)
    faces_found: int | None = spec("faces the gateway found in the frame (face and no-face results)",
                                   default=None, lo=0, hi=2**31 - 1)
    faces_answered: int | None = spec("faces of the frame sent for analysis, one Result each", default=None,
                                      lo=0, hi=2**31 - 1)

    def _check_invariants(self, limits: Limits) -> None:
        if self.box is not None and len(self.box) != 4:
            raise WrongType(f"box must be [x, y, w, h], got {list(self.box)}", field="box")
        if (self.faces_found is None) != (self.faces_answered is None):
            raise WrongType("faces_found and faces_answered go together", field="faces_found")
        if self.faces_found is not None and self.faces_answered > self.faces_found:
            raise WrongType(f"faces_answered {self.faces_answered} > faces_found {self.faces_found}",
                            field="faces_answered")

    @property
    def face(self) -> int | None:
        """Index of the face this result answers (largest first), from ``id``; None for a whole input."""
        return face_of(self.id)

    @property
    def gateway(self) -> str:
        """Gateway id taken from ``id``."""
        return split_id(self.id)[0]

    @property
    def device(self) -> str:
        """Device id taken from ``id``."""
        return split_id(self.id)[1]

    @property
    def seq(self) -> int:
        """Sensor sequence number taken from ``id``."""
        return split_id(self.id).seq

    @property
    def boot(self) -> int | None:
        """Sensor boot id taken from ``id`` (None when the sensor sent none)."""
        return split_id(self.id).boot

    def to_json(self, now: float | None = None) -> bytes:
        """The MQTT result for home apps (UTF-8 JSON).

        ``latency_ms`` is capture-to-``now`` in milliseconds (``now`` defaults to the current time:
        the gateway calls this just before publishing, so it is the end-to-end latency). A face's result
        adds ``face`` (its index), ``box`` ``[x, y, w, h]`` and ``faces`` ``{"found", "answered"}`` (the
        frame's summary); a no-face result adds ``faces`` alone.
        """
        gateway, device, seq, boot = split_id(self.id)
        now = time.time() if now is None else now
        body = {"id": self.id, "gateway": gateway, "device": device, "seq": seq, "boot": boot,
                "task": self.task, "model": self.model, "label": self.label, "score": self.score,
                "scores": self.scores or {}, "ts": self.ts, "ts_done": self.ts_done,
                "latency_ms": round((now - self.ts) * 1000.0, 3), "worker": self.worker}
        if self.face is not None:
            body["face"] = self.face
        if self.box is not None:
            body["box"] = list(self.box)
        if self.faces_found is not None:
            body["faces"] = {"found": self.faces_found, "answered": self.faces_answered}
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, kw_only=True)
class ErrorReport(Message):
    """A rejected input: published as JSON on ``{p}/gateway/{gw}/errors``, msgpack in dead-letter streams."""

    PAYLOAD_LIMIT = "max_result_payload"
    source: str = spec("who rejected it: gateway or worker id")
    device: str = spec("device id as received (may be invalid, hence free text)")
    seq: int | None = spec("sequence number if it could be read", default=None, lo=0, hi=2**63 - 1)
    topic: str = spec("MQTT topic or Redis stream the input came from", default="", max_len=512)
    reason: str = spec("short reason code, e.g. 'too large' (SchemaError.reason)")
    detail: str = spec("human-readable explanation, truncated to the string limit", default="")
    ts: float = spec("time of rejection, Unix seconds", lo=0)

    def to_json(self) -> bytes:
        """UTF-8 JSON with every field (and ``v``)."""
        return json.dumps(self.to_wire(), separators=(",", ":")).encode()
