"""The envelope of every message a gateway sends upstream: which input it is, where it came from, when,
and for which task and model; and the inference id built from it.

:class:`FeatureMessage` (split mode) and :class:`~schemas.upload.MediaMessage` (cloud_only) both derive
from :class:`Envelope`, so the nine fields are declared once. Its fields come first in each message's
wire order (dataclass fields of a base precede the subclass's), the order both declared them in before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from schemas.codec import Message, spec
from schemas.errors import BadName
from schemas.names import check_device, check_name

BOOT_DOC = "boot id of the sensor, chosen afresh at each sensor start (its seqs may restart at 0)"
"""Field doc shared by every message that carries ``boot``."""


class InferenceId(NamedTuple):
    """The parts of an inference id; ``boot`` is None for a sensor that sends none."""

    gateway: str
    device: str
    seq: int
    boot: int | None = None


def make_id(gateway: str, device: str, seq: int, boot: int | None = None) -> str:
    """The inference id: ``{gateway}/{device}/{boot}-{seq}``, or ``{gateway}/{device}/{seq}`` without a
    boot id. Stable across retries (duplicates are dropped by it); the boot id keeps the ids of a sensor
    whose seqs restart after a reboot apart from those it sent before. Only this function and
    :func:`split_id` know the format."""
    head = f"{check_name(gateway, 'gateway id')}/{check_device(device)}/"
    return head + (f"{int(seq)}" if boot is None else f"{int(boot)}-{int(seq)}")


def split_id(inference_id: str) -> InferenceId:
    """An id made by :func:`make_id` -> ``InferenceId(gateway, device, seq, boot)``; raises BadName otherwise."""
    parts = inference_id.split("/") if isinstance(inference_id, str) else []
    if len(parts) == 3:
        boot, dash, seq = parts[2].rpartition("-")
        if seq.isascii() and seq.isdigit() and (not dash or (boot.isascii() and boot.isdigit())):
            return InferenceId(check_name(parts[0], "gateway id"), check_device(parts[1]), int(seq),
                               int(boot) if dash else None)
    raise BadName(f"bad inference id {inference_id!r}: want GATEWAY/DEVICE/SEQ or GATEWAY/DEVICE/BOOT-SEQ")


@dataclass(frozen=True, kw_only=True)
class Envelope(Message):
    """The fields every gateway-to-cloud message starts with; not sent on its own."""

    id: str = spec("inference id {gateway}/{device}/{boot}-{seq} (or .../{seq} without boot; make_id), "
                   "stable across retries")
    gateway: str = spec("gateway id")
    device: str = spec("sensor device id")
    seq: int = spec("sequence number of the input's sensor message (audio: the utterance's first chunk)",
                    lo=0, hi=2**63 - 1)
    boot: int | None = spec(BOOT_DOC, default=None, lo=0, hi=2**63 - 1)
    ts: float = spec("capture time of the input, Unix seconds", lo=0)
    ts_sent: float = spec("time the gateway sent the message, Unix seconds", lo=0)
    task: str = spec("task name, e.g. glasses or digit")
    model: str = spec("bundle id of the model the gateway serves the input's modality with")
