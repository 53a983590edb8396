"""The envelope of every message a gateway sends upstream: which input it is, where it came from, when,
and for which task and model.

:class:`FeatureMessage` (split mode) and :class:`~schemas.upload.MediaMessage` (cloud_only) both derive
from :class:`Envelope`, so the nine fields are declared once. Its fields come first in each message's
wire order (dataclass fields of a base precede the subclass's), the order both declared them in before.

On the features streams, wire version 2 (schemas.compact) sends only ``device``, ``boot``, ``seq``, the
two times (as milliseconds) and a 4-byte reference of ``model``: the reader rebuilds ``id`` and takes
``gateway`` and ``task`` from the stream's key.
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas.codec import Message, spec

BOOT_DOC = "boot id of the sensor, chosen afresh at each sensor start (its seqs may restart at 0)"
"""Field doc shared by every message that carries ``boot``."""


@dataclass(frozen=True, kw_only=True)
class Envelope(Message):
    """The fields every gateway-to-cloud message starts with; not sent on its own."""

    id: str = spec("inference id {gateway}/{device}/{boot}-{seq} (or .../{seq} without boot), then "
                   "#{face} for one face of a camera frame (schemas.features.make_id); stable across retries")
    gateway: str = spec("gateway id")
    device: str = spec("sensor device id")
    seq: int = spec("sequence number of the input's sensor message (audio: the utterance's first chunk)",
                    lo=0, hi=2**63 - 1)
    boot: int | None = spec(BOOT_DOC, default=None, lo=0, hi=2**63 - 1)
    ts: float = spec("capture time of the input, Unix seconds", lo=0)
    ts_sent: float = spec("time the gateway sent the message, Unix seconds", lo=0)
    task: str = spec("task name, e.g. glasses or digit")
    model: str = spec("bundle id of the model the gateway serves the input's modality with")
