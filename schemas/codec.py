"""One field declaration per message, from which encode, decode and validation all come.

A message is a frozen dataclass deriving from :class:`Message` whose fields are declared with
:func:`spec`::

    @dataclass(frozen=True)
    class Ping(Message):
        PAYLOAD_LIMIT = "max_result_payload"
        device: str = spec("device id")
        ts: float = spec("send time, Unix seconds")

The annotation gives the wire type, ``spec`` the unit doc, whether the field is required (no default),
its range or allowed values and its size bound. The wire form is a msgpack map ``{"v": 1, name: value...}``
in declaration order, so the encoding is byte-stable.

Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``bytes``, ``tuple[int, ...]`` (shapes),
``dict[str, float]`` (scores), each optionally ``| None`` (then absent or nil both mean None).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import msgpack

from schemas.errors import Malformed, MissingField, SchemaError, TooLarge, UnknownVersion, WrongType
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.structure import check_structure

WIRE_VERSION = 1
"""The version of every message map built here (``{"v": 1, ...}``); :meth:`Message.decode` refuses any
other. Version 2 is not a map but the compact feature envelope (schemas.compact), which the gateway
writes to the features streams; a worker reads both there."""

_REQUIRED = dataclasses.MISSING


@dataclass(frozen=True)
class FieldSpec:
    """What one declared field allows; built by :func:`spec`, completed from the annotation."""

    doc: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    max_len: int | str | None = None
    """Items / characters / bytes bound: an int, or the name of a :class:`Limits` attribute."""


def spec(doc: str, *, default: Any = _REQUIRED, lo: float | None = None, hi: float | None = None,
         choices: tuple[Any, ...] | None = None, max_len: int | str | None = None) -> Any:
    """Declare a message field: ``doc`` says what it is and in which unit; no ``default`` = required."""
    meta = {"spec": FieldSpec(doc, lo, hi, tuple(choices) if choices else None, max_len)}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str            # int | float | bool | str | bytes | shape | scores
    optional: bool
    required: bool
    spec: FieldSpec


_KINDS: dict[Any, str] = {int: "int", float: "float", bool: "bool", str: "str", bytes: "bytes",
                          tuple[int, ...]: "shape", dict[str, float]: "scores"}


def _kind_of(name: str, annotation: Any) -> tuple[str, bool]:
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"field {name}: only `X | None` unions are supported")
        annotation, optional = args[0], True
    if annotation not in _KINDS:
        raise TypeError(f"field {name}: unsupported wire type {annotation!r}")
    return _KINDS[annotation], optional


def _bound(value: int | str | None, limits: Limits, default: int) -> int:
    if value is None:
        return default
    return getattr(limits, value) if isinstance(value, str) else value


def _check(f: _Field, value: Any, limits: Limits) -> Any:
    """Validate one field value; return it in its Python form (lists -> tuples, ints -> floats)."""
    s, k, name = f.spec, f.kind, f.name
    if value is None:
        if f.optional:
            return None
        raise WrongType(f"{name} must not be nil", field=name)
    if k == "int" or k == "float":
        ok = isinstance(value, int) and not isinstance(value, bool)
        if k == "float":
            ok = ok or isinstance(value, float)
        if not ok:
            raise WrongType(f"{name} must be {k}, got {type(value).__name__}", field=name)
        if k == "float":
            value = float(value)
            if not math.isfinite(value):
                raise WrongType(f"{name} must be finite, got {value}", field=name)
        if (s.lo is not None and value < s.lo) or (s.hi is not None and value > s.hi):
            raise WrongType(f"{name}={value} outside [{s.lo}, {s.hi}]", field=name)
    elif k == "bool":
        if not isinstance(value, bool):
            raise WrongType(f"{name} must be bool, got {type(value).__name__}", field=name)
    elif k in ("str", "bytes"):
        want = str if k == "str" else bytes
        if k == "bytes" and isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        if not isinstance(value, want):
            raise WrongType(f"{name} must be {k}, got {type(value).__name__}", field=name)
        bound = _bound(s.max_len, limits, limits.max_str)
        if len(value) > bound:
            raise TooLarge(f"{name} has {len(value)} {'chars' if k == 'str' else 'bytes'} > {bound}",
                           field=name)
    elif k == "shape":
        if not isinstance(value, (list, tuple)):
            raise WrongType(f"{name} must be an array of ints, got {type(value).__name__}", field=name)
        if len(value) > _bound(s.max_len, limits, limits.max_tensor_dims):
            raise TooLarge(f"{name} has {len(value)} dimensions", field=name)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
            raise WrongType(f"{name} must hold non-negative ints, got {value!r}", field=name)
        value = tuple(value)
    elif k == "scores":
        if not isinstance(value, dict):
            raise WrongType(f"{name} must be a map str -> float, got {type(value).__name__}", field=name)
        if len(value) > _bound(s.max_len, limits, limits.max_array):
            raise TooLarge(f"{name} has {len(value)} entries", field=name)
        out = {}
        for key, score in value.items():
            if not isinstance(key, str) or len(key) > limits.max_str:
                raise WrongType(f"{name} keys must be short strings", field=name)
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise WrongType(f"{name}[{key!r}] must be a finite float", field=name)
            out[key] = float(score)
        value = out
    if s.choices is not None and value not in s.choices:
        raise WrongType(f"{name}={value!r} not one of {s.choices}", field=name)
    return value


def unpack(data: bytes, payload_limit: int, limits: Limits) -> Any:
    """Bytes -> one msgpack object (any type); only SchemaErrors escape.

    Oversize input is refused before any parsing, and input nested deeper than ``limits.max_depth`` or
    holding more than ``limits.max_objects`` objects before msgpack allocates anything
    (:func:`schemas.structure.check_structure`); msgpack's own per-container limits apply after that.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WrongType(f"payload must be bytes, got {type(data).__name__}")
    if len(data) > payload_limit:
        raise TooLarge(f"payload of {len(data)} bytes > {payload_limit}")
    check_structure(data, limits.max_depth, limits.max_objects)
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_bin_len=payload_limit, max_str_len=4 * limits.max_str, max_array_len=limits.max_array,
            max_map_len=limits.max_map, max_ext_len=0,
        )
    except ValueError as e:  # FormatError, StackError, ExtraData, UnicodeDecodeError, limit hits
        if "max_ext_len" in str(e):
            raise WrongType(f"msgpack extension types are not allowed: {e}") from e
        if "exceeds max" in str(e):
            raise TooLarge(f"payload item over limit: {e}") from e
        raise Malformed(f"not msgpack: {e}") from e
    except (msgpack.UnpackException, TypeError, RecursionError) as e:
        raise Malformed(f"not msgpack: {e}") from e


def unpack_map(data: bytes, payload_limit: int, limits: Limits) -> dict:
    """Bytes -> msgpack map (:func:`unpack`, then the top level must be a map); only SchemaErrors escape."""
    obj = unpack(data, payload_limit, limits)
    if not isinstance(obj, dict):
        raise Malformed(f"payload must be a msgpack map, got {type(obj).__name__}")
    return obj


class Message:
    """Base of every wire message: subclasses are frozen dataclasses whose fields use :func:`spec`."""

    VERSION: ClassVar[int] = WIRE_VERSION
    PAYLOAD_LIMIT: ClassVar[str] = "max_result_payload"
    """Name of the :class:`Limits` attribute bounding the encoded message, checked before decoding."""
    _fields_cache: ClassVar[dict[type, tuple[_Field, ...]]] = {}

    @classmethod
    def wire_fields(cls) -> tuple[_Field, ...]:
        """The declared fields in wire order (computed once per class from the dataclass declaration)."""
        cached = Message._fields_cache.get(cls)
        if cached is None:
            hints = typing.get_type_hints(cls)
            out = []
            for f in dataclasses.fields(cls):
                kind, optional = _kind_of(f.name, hints[f.name])
                required = f.default is _REQUIRED and f.default_factory is _REQUIRED
                out.append(_Field(f.name, kind, optional, required, f.metadata["spec"]))
            cached = Message._fields_cache[cls] = tuple(out)
        return cached

    def validate(self, limits: Limits = DEFAULT_LIMITS) -> None:
        """Check every field and the cross-field rules; raises a SchemaError subclass."""
        for f in self.wire_fields():
            _check(f, getattr(self, f.name), limits)
        self._check_invariants(limits)

    def _check_invariants(self, limits: Limits) -> None:
        """Cross-field rules (tensor shape vs data, raw image size...); overridden where needed."""

    def to_wire(self) -> dict[str, Any]:
        """The msgpack map: ``v`` first, then the fields in declaration order; None values omitted."""
        out: dict[str, Any] = {"v": self.VERSION}
        for f in self.wire_fields():
            value = getattr(self, f.name)
            if value is not None:
                if f.kind == "shape":
                    value = list(value)
                elif f.kind == "float":  # an int given for a float field still goes out as a float
                    value = float(value)
                out[f.name] = value
        return out

    def encode(self, limits: Limits = DEFAULT_LIMITS) -> bytes:
        """Validate, then pack as msgpack (bin for bytes, str for text); raises TooLarge over the bound."""
        self.validate(limits)
        data = msgpack.packb(self.to_wire(), use_bin_type=True)
        bound = getattr(limits, self.PAYLOAD_LIMIT)
        if len(data) > bound:
            raise TooLarge(f"{type(self).__name__} encodes to {len(data)} bytes > {bound}")
        return data

    @classmethod
    def from_wire(cls, obj: dict, limits: Limits = DEFAULT_LIMITS) -> Self:
        """Build from an unpacked map: checks ``v``, required and typed fields; ignores unknown keys."""
        if "v" not in obj:
            raise MissingField("missing field v", field="v")
        v = obj["v"]
        if not isinstance(v, int) or isinstance(v, bool):
            raise WrongType(f"v must be int, got {type(v).__name__}", field="v")
        if v != cls.VERSION:
            raise UnknownVersion(f"{cls.__name__} version {v} is not supported (want {cls.VERSION})",
                                 field="v")
        kwargs = {}
        for f in cls.wire_fields():
            if f.name in obj:
                kwargs[f.name] = _check(f, obj[f.name], limits)
            elif f.required:
                raise MissingField(f"missing field {f.name}", field=f.name)
        msg = cls(**kwargs)
        msg._check_invariants(limits)
        return msg

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> Self:
        """msgpack bytes -> message; every failure is a :class:`SchemaError` subclass."""
        return cls.from_wire(unpack_map(data, getattr(limits, cls.PAYLOAD_LIMIT), limits), limits)

    @classmethod
    def describe(cls) -> list[tuple[str, str, bool, str]]:
        """(name, wire type, required, unit doc) per field, for documentation and error messages."""
        return [(f.name, f.kind + ("?" if f.optional else ""), f.required, f.spec.doc)
                for f in cls.wire_fields()]


__all__ = ["FieldSpec", "Message", "SchemaError", "WIRE_VERSION", "spec", "unpack", "unpack_map"]
