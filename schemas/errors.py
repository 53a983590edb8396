"""Typed errors for every kind of bad input a decoder can meet.

Every error carries a short machine-readable ``reason`` (what the gateway puts on its errors topic and
what a worker writes to the dead-letter stream) and, where it applies, the offending ``field``.
"""
from __future__ import annotations


class SchemaError(ValueError):
    """Base class: the bytes or values do not form a valid privedge message."""

    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Malformed(SchemaError):
    """The payload is not a msgpack map (truncated, trailing bytes, wrong top-level type...)."""

    reason = "malformed"


class UnknownVersion(SchemaError):
    """The ``v`` field names a wire version this code does not speak."""

    reason = "unknown version"


class MissingField(SchemaError):
    """A required field is absent."""

    reason = "missing field"


class WrongType(SchemaError):
    """A field has the wrong type or a value outside its allowed set or range."""

    reason = "wrong type"


class TooLarge(SchemaError):
    """The payload, a field or a decoded media item is over its configured limit."""

    reason = "too large"


class BadTensor(SchemaError):
    """A tensor's dtype is not allowed or its shape does not match its data."""

    reason = "bad tensor"


class UndecodableMedia(SchemaError):
    """Image or audio bytes that cannot be decoded, or that contradict their declared size."""

    reason = "undecodable media"


class BadName(SchemaError):
    """A topic, device id, gateway id or task name that is malformed."""

    reason = "bad name"
