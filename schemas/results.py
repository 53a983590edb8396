"""What comes back: the analyzer's Result, and the ErrorReport for rejected inputs."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from schemas.codec import Message, spec
from schemas.features import split_id


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
        the gateway calls this just before publishing, so it is the end-to-end latency).
        """
        gateway, device, seq, boot = split_id(self.id)
        now = time.time() if now is None else now
        body = {"id": self.id, "gateway": gateway, "device": device, "seq": seq, "boot": boot,
                "task": self.task, "model": self.model, "label": self.label, "score": self.score,
                "scores": self.scores or {}, "ts": self.ts, "ts_done": self.ts_done,
                "latency_ms": round((now - self.ts) * 1000.0, 3), "worker": self.worker}
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
