"""The compact feature envelope, wire version 2: an inference of a default bundle in at most 64 bytes.

A version 1 FeatureMessage is a msgpack map of 14 named fields (about 250 bytes for the 1 to 9 bytes of
features the default bundles release). Most of it is known to the reader already: the stream an entry
sits in names its home and task (``{p}:features:{task}:{gateway}``, schemas.names), the home's results
stream follows from the home (``{p}:results:{gateway}``), the id follows from its parts, and the
bundle named by the model fixes the tensor's dtype and shape. Version 2 sends only the rest, as a
msgpack array in the stream entry's field ``m``, positional (no keys at all)::

    [2, device, boot, seq, ts_ms, age_ms, model_ref, data]          a whole input
    [2, device, boot, seq, ts_ms, age_ms, model_ref, data, face]    one face of a camera frame

==========  =========================================================================================
``2``       the wire version (a version 1 message is a map, so the first byte tells them apart)
device      str: the sensor's device id; or bin, 13 bytes: a pseudonym (``d`` + 20 base32 characters,
            gateway/pseudonyms.py) as the 100 bits its characters spell, big-endian
boot        int 0..2^63-1, or nil for a sensor that sends no boot id
seq         int 0..2^63-1
ts_ms       int >= 0: capture time, Unix milliseconds
age_ms      int: send time minus capture time, milliseconds (negative when the sensor's clock is ahead)
model_ref   int 0..2^32-1: the first 4 bytes, big-endian, of SHA-256 of the bundle's model id
            (:func:`model_ref`; the id is itself a content hash of the bundle, models.manifest)
data        bin: the feature tensor, little-endian, C order, of the dtype and shape in the bundle's
            manifest (``feature``); exactly prod(shape) x itemsize bytes
face        int 0..9999, only for one face of a frame (the ``#face`` of the id, schemas.features)
==========  =========================================================================================

:func:`decode` turns either version into the same :class:`~schemas.features.FeatureMessage`, given the
entry's :class:`Origin` (from its stream) and the :class:`Catalog` of the models the reader serves:
``id = make_id(gateway, device, seq, boot, face)``, ``gateway``/``task``/``reply`` from the stream,
``model``/``dtype``/``shape`` from the catalog, ``ts = ts_ms / 1000`` and ``ts_sent = (ts_ms + age_ms) /
1000``. Times go as whole milliseconds, so a version 2 message carries its times rounded to the
millisecond; everything else decodes exactly as its version 1 twin would. A model reference the catalog
does not hold raises :class:`UnknownModel`; every other fault a SchemaError, as for
version 1. What an entry cannot claim any more, it cannot get wrong: no field of a version 2 entry names
a home, so one home's entry can only speak for the home whose stream (ACL-guarded) it is in.

Sizes, field name and value as Redis stores them (tests/test_compact.py): the default bundles' 1 (faces)
and 9 (digits) int8 numbers take 33-55 and 41-62 bytes with device ids of up to 16 characters (each more
character is a byte more), seqs below 2^32 and inputs under a minute old; 54-57 and 62-64 bytes with
pseudonyms, whose device ids pack to 13 bytes and whose boot ids and seqs are 49- to 53-bit numbers.
Version 1 takes 212-216 bytes for the same inferences.

msgpack does the packing; the pseudonym's 100 bits are packed by hand (a few lines) because the standard
library's base32 decodes only whole 8-character groups, and 20 characters are not.

Upgrade: workers read both versions; gateways write version 2 unless ``wire_version: 1`` is set, for a
cloud whose workers are older. Results (down) stay version 1 maps.
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Iterable, NamedTuple

import msgpack

from schemas.codec import unpack
from schemas.errors import Malformed, SchemaError, UnknownVersion, WrongType
from schemas.features import MAX_FACE, FeatureMessage, face_of, make_id
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.names import Names

VERSION = 2
"""The compact envelope's wire version, the first item of its array."""

REF_BYTES = 4
"""Bytes of SHA-256 of the model id that make a model reference."""

PSEUDONYM = re.compile(r"d[a-z2-7]{20}")
"""A device id sent as 13 bytes instead of 21 characters: ``d`` + 20 base32 characters (100 bits)."""
_PSEUDONYM_BYTES = 13
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_VALUE = {c: i for i, c in enumerate(_B32)}

_ITEMS = (8, 9)
"""Items of a version 2 array: without and with the face index."""


class UnknownModel(SchemaError):
    """A version 2 entry's model reference names no model the reader serves (a worker's fault to report,
    not a sensor's: defined here rather than in schemas.errors, whose reasons the firmware guide lists)."""

    reason = "unknown model"


class Origin(NamedTuple):
    """What a features stream says about each of its entries: the home, the task and the home's results
    stream (the ``gateway``, ``task`` and ``reply`` a version 2 entry does not carry)."""

    gateway: str
    task: str
    reply: str

    @classmethod
    def of_stream(cls, names: Names, stream: str | bytes) -> "Origin":
        """The origin of the entries of features stream ``stream`` (BadName if it is not one)."""
        key = names.split_stream(stream)
        return cls(key.gateway, key.task, names.results(key.gateway))


class Model(NamedTuple):
    """One model a reader knows: its id and the dtype and shape of the features it takes."""

    model_id: str
    dtype: str
    shape: tuple[int, ...]


def model_ref(model_id: str) -> int:
    """The 4-byte reference a version 2 entry names its model by (see the module docstring)."""
    return int.from_bytes(hashlib.sha256(model_id.encode()).digest()[:REF_BYTES], "big")


class Catalog:
    """The models a reader serves, by :func:`model_ref`; two models of one reference are refused."""

    def __init__(self, models: Iterable[Model] = ()) -> None:
        self.by_ref: dict[int, Model] = {}
        for m in models:
            m = Model(m[0], m[1], tuple(int(d) for d in m[2]))
            other = self.by_ref.setdefault(model_ref(m.model_id), m)
            if other.model_id != m.model_id:
                raise ValueError(f"models {other.model_id} and {m.model_id} share the wire reference "
                                 f"{model_ref(m.model_id):08x}: serve them from different workers")

    @classmethod
    def of_manifests(cls, manifests: Iterable[dict]) -> "Catalog":
        """The catalog of bundles given by their manifests (``model`` and ``feature``: dtype, shape)."""
        return cls(Model(m["model"], m["feature"]["dtype"], tuple(m["feature"]["shape"])) for m in manifests)

    def get(self, ref: int) -> Model:
        """The model of reference ``ref``; UnknownModel when none is served here."""
        model = self.by_ref.get(ref)
        if model is None:
            raise UnknownModel(f"no model of reference {ref:08x} is served here", field="model_ref")
        return model


def _pack_device(device: str) -> str | bytes:
    if not PSEUDONYM.fullmatch(device):
        return device
    value = 0
    for c in device[1:]:
        value = value << 5 | _B32_VALUE[c]
    return value.to_bytes(_PSEUDONYM_BYTES, "big")


def _unpack_device(device: Any) -> str:
    if isinstance(device, str):
        return device
    if isinstance(device, bytes) and len(device) == _PSEUDONYM_BYTES:
        value = int.from_bytes(device, "big")
        if value < 1 << 100:
            return "d" + "".join(_B32[value >> 5 * (19 - i) & 31] for i in range(20))
    raise WrongType(f"device must be a str or a {_PSEUDONYM_BYTES}-byte pseudonym of 100 bits", field="device")


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def encode(msg: FeatureMessage, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """``msg`` as a version 2 entry (validated first, as :meth:`FeatureMessage.encode` does). Its reader
    takes gateway, task and reply from the stream and dtype and shape from the model's bundle, so the
    message must be one whose id is the one its parts make (every message of
    :meth:`FeatureMessage.from_array` is)."""
    msg.validate(limits)
    face = face_of(msg.id)
    if msg.id != make_id(msg.gateway, msg.device, msg.seq, msg.boot, face):
        raise WrongType(f"id {msg.id!r} is not the id of its parts", field="id")
    ts = _ms(msg.ts)
    items = [VERSION, _pack_device(msg.device), msg.boot, msg.seq, ts, _ms(msg.ts_sent) - ts,
             model_ref(msg.model), msg.data]
    if face is not None:
        items.append(face)
    return msgpack.packb(items, use_bin_type=True)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongType(f"{name} must be int, got {type(value).__name__}", field=name)
    if not lo <= value <= hi:
        raise WrongType(f"{name}={value} outside [{lo}, {hi}]", field=name)
    return value


def from_items(items: list, origin: Origin, catalog: Catalog, limits: Limits = DEFAULT_LIMITS) -> FeatureMessage:
    """An unpacked version 2 array -> FeatureMessage; raises a SchemaError subclass."""
    if not items or isinstance(items[0], bool) or items[0] != VERSION:
        raise UnknownVersion(f"compact envelope version {items[0] if items else None!r} is not supported "
                             f"(want {VERSION})", field="v")
    if len(items) not in _ITEMS:
        raise Malformed(f"a version {VERSION} entry has {' or '.join(map(str, _ITEMS))} items, got {len(items)}")
    _, device, boot, seq, ts_ms, age_ms, ref, data, *face = items
    device = _unpack_device(device)
    if boot is not None:
        boot = _int(boot, "boot", 0, 2**63 - 1)
    seq = _int(seq, "seq", 0, 2**63 - 1)
    ts_ms = _int(ts_ms, "ts_ms", 0, 2**63 - 1)
    age_ms = _int(age_ms, "age_ms", -ts_ms, 2**63 - 1 - ts_ms)
    model = catalog.get(_int(ref, "model_ref", 0, 2**32 - 1))
    if not isinstance(data, bytes):
        raise WrongType(f"data must be bin, got {type(data).__name__}", field="data")
    face_index = _int(face[0], "face", 0, MAX_FACE) if face else None
    msg = FeatureMessage(id=make_id(origin.gateway, device, seq, boot, face_index), gateway=origin.gateway,
                         device=device, seq=seq, boot=boot, ts=ts_ms / 1000, ts_sent=(ts_ms + age_ms) / 1000,
                         task=origin.task, model=model.model_id, dtype=model.dtype, shape=model.shape,
                         data=data, reply=origin.reply)
    if not (math.isfinite(msg.ts) and math.isfinite(msg.ts_sent)):
        raise WrongType("times out of range", field="ts_ms")
    msg.validate(limits)
    return msg


def decode(data: bytes, origin: Origin, catalog: Catalog, limits: Limits = DEFAULT_LIMITS) -> FeatureMessage:
    """A features stream entry's ``m`` field, version 1 (a map) or 2 (an array), as a FeatureMessage;
    every failure is a SchemaError subclass (UnknownModel for a version 2 reference not in ``catalog``)."""
    obj = unpack(data, getattr(limits, FeatureMessage.PAYLOAD_LIMIT), limits)
    if isinstance(obj, dict):
        return FeatureMessage.from_wire(obj, limits)
    if isinstance(obj, list):
        return from_items(obj, origin, catalog, limits)
    raise Malformed(f"payload must be a msgpack map (version 1) or array (version {VERSION}), "
                    f"got {type(obj).__name__}")


def entry_bytes(fields: dict) -> int:
    """Bytes a stream entry's fields take as Redis stores them: every field name and value."""
    return sum(len(k) + len(v) for k, v in fields.items())


__all__ = ["VERSION", "Catalog", "Model", "Origin", "UnknownModel", "decode", "encode", "entry_bytes", "from_items",
           "model_ref"]
