"""The feature message: what a gateway sends to the cloud instead of raw media.

Tensors travel as raw little-endian bytes with ``dtype`` and ``shape``, never as lists (a msgpack
list of floats is two orders of magnitude slower to pack than the bytes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from schemas.codec import spec
from schemas.envelope import Envelope
from schemas.errors import BadName, BadTensor, TooLarge
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.names import check_device, check_name

TENSOR_DTYPES = ("float32", "float16", "int8", "uint8")
"""Feature dtypes a decoder accepts."""


class InferenceId(NamedTuple):
    """The parts of an inference id; ``boot`` is None for a sensor that sends none."""

    gateway: str
    device: str
    seq: int
    boot: int | None = None


FACE_SEP = "#"
"""Separates a frame's id from the index of one of its faces (``{frame id}#{face}``)."""

MAX_FACE = 9999
"""Largest face index an id may carry (the gateway sends at most ``max_faces`` per frame)."""


def make_id(gateway: str, device: str, seq: int, boot: int | None = None, face: int | None = None) -> str:
    """The inference id: ``{gateway}/{device}/{boot}-{seq}``, or ``{gateway}/{device}/{seq}`` without a
    boot id; with ``face`` (the index of one face the gateway found in a camera frame, largest first)
    ``#{face}`` follows. Stable across retries (duplicates are dropped by it); the boot id keeps the ids
    of a sensor whose seqs restart after a reboot apart from those it sent before, and the face index
    keeps the faces of one frame apart. Only this function, :func:`split_id` and :func:`face_of` know the
    format."""
    head = f"{check_name(gateway, 'gateway id')}/{check_device(device)}/"
    frame = head + (f"{int(seq)}" if boot is None else f"{int(boot)}-{int(seq)}")
    if face is None:
        return frame
    if isinstance(face, bool) or not isinstance(face, int) or not 0 <= face <= MAX_FACE:
        raise BadName(f"bad face index {face!r}: want an int 0..{MAX_FACE}")
    return f"{frame}{FACE_SEP}{face}"


def _split_face(inference_id: str) -> tuple[str, int | None]:
    """``(frame id, face index or None)``; raises BadName for a malformed ``#`` suffix."""
    frame, sep, face = inference_id.partition(FACE_SEP)
    if not sep:
        return inference_id, None
    canonical = face == "0" or face[:1] != "0"  # one spelling per face: the dedup window compares ids
    if face.isascii() and face.isdigit() and canonical and int(face) <= MAX_FACE:
        return frame, int(face)
    raise BadName(f"bad inference id {inference_id!r}: the face index after {FACE_SEP!r} must be 0..{MAX_FACE}")


def split_id(inference_id: str) -> InferenceId:
    """An id made by :func:`make_id` -> ``InferenceId(gateway, device, seq, boot)`` of its input (a face's id
    gives its frame's parts; :func:`face_of` gives the face); raises BadName otherwise."""
    frame = _split_face(inference_id)[0] if isinstance(inference_id, str) else None
    parts = frame.split("/") if isinstance(frame, str) else []
    if len(parts) == 3:
        boot, dash, seq = parts[2].rpartition("-")
        if seq.isascii() and seq.isdigit() and (not dash or (boot.isascii() and boot.isdigit())):
            return InferenceId(check_name(parts[0], "gateway id"), check_device(parts[1]), int(seq),
                               int(boot) if dash else None)
    raise BadName(f"bad inference id {inference_id!r}: want GATEWAY/DEVICE/SEQ or GATEWAY/DEVICE/BOOT-SEQ, "
                  f"then #FACE for one face of a frame")


def face_of(inference_id: str) -> int | None:
    """The face index of a face's id (``...#2`` -> 2), None for the id of a whole input; BadName when
    the id does not parse (see :func:`split_id`)."""
    split_id(inference_id)
    return _split_face(inference_id)[1]


def check_tensor(dtype: str, shape: tuple[int, ...], data: bytes, limits: Limits,
                 field: str = "data") -> None:
    """Raise BadTensor/TooLarge unless ``data`` holds exactly ``prod(shape)`` items of ``dtype``."""
    if dtype not in TENSOR_DTYPES:
        raise BadTensor(f"dtype {dtype!r} not one of {TENSOR_DTYPES}", field="dtype")
    if len(shape) > limits.max_tensor_dims:
        raise TooLarge(f"shape has {len(shape)} dims > {limits.max_tensor_dims}", field="shape")
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise TooLarge(f"tensor of {count} elements > {limits.max_tensor_elements}", field="shape")
    want = count * np.dtype(dtype).itemsize
    if len(data) != want:
        raise BadTensor(f"{dtype}{list(shape)} needs {want} bytes, got {len(data)}", field=field)


def tensor_bytes(arr: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    """array -> ``(dtype, shape, little-endian bytes)``; the dtype must be one of TENSOR_DTYPES."""
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name not in TENSOR_DTYPES:
        raise BadTensor(f"dtype {name!r} not one of {TENSOR_DTYPES}", field="dtype")
    le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return name, tuple(int(d) for d in arr.shape), le.tobytes()


def tensor_array(dtype: str, shape: tuple[int, ...], data: bytes) -> np.ndarray:
    """Little-endian bytes -> read-only array of ``shape`` (native byte order view where possible)."""
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


@dataclass(frozen=True, kw_only=True)
class FeatureMessage(Envelope):
    """One inference's private features, sent by a gateway to ``{p}:features:{task}:{gateway}`` (field
    ``m``): the envelope's fields (schemas.envelope) first, then the tensor. :meth:`encode` gives wire
    version 1, a self-describing map; gateways send wire version 2 by default, the compact array of
    schemas.compact (at most 64 bytes for the default bundles), which decodes to the same message."""

    PAYLOAD_LIMIT = "max_feature_payload"
    dtype: str = spec("element type of data", choices=TENSOR_DTYPES)
    shape: tuple[int, ...] = spec("tensor shape, elements per axis")
    data: bytes = spec("tensor elements, little-endian, C order", max_len="max_feature_payload")
    reply: str = spec("Redis stream the Result goes to", max_len=512)

    def _check_invariants(self, limits: Limits) -> None:
        check_tensor(self.dtype, self.shape, self.data, limits)

    @classmethod
    def from_array(cls, features: np.ndarray, *, gateway: str, device: str, seq: int, ts: float,
                   ts_sent: float, task: str, model: str, reply: str,
                   boot: int | None = None, face: int | None = None) -> "FeatureMessage":
        """Build from a feature array (one input, e.g. shape (8,)); ``id`` is derived (with ``face``, the
        index of the face of the frame these features describe)."""
        dtype, shape, data = tensor_bytes(features)
        return cls(id=make_id(gateway, device, seq, boot, face), gateway=gateway, device=device, seq=seq,
                   boot=boot, ts=ts, ts_sent=ts_sent, task=task, model=model, dtype=dtype, shape=shape, data=data,
                   reply=reply)

    def array(self, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
        """The features as a read-only array of ``shape`` and ``dtype``."""
        check_tensor(self.dtype, self.shape, self.data, limits)
        return tensor_array(self.dtype, self.shape, self.data)
